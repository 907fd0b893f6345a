"""The figures a BaNEL run logs per round: budget, successes, acceptance, and GRPO's reward figures."""

import logging
import math
import statistics

from transformers.utils import is_rich_available
from trl.trainer.utils import print_prompt_completions_sample

from .ledger import RewardLedger
from .rewards import RewardEvaluator


logger = logging.getLogger(__name__)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """
    Mean and (sample) standard deviation of `values`, None left out as GRPO's nanmean/nanstd; None where undefined (no
    value, or one for the deviation) or beyond a float. Computed on the values scaled by a power of two (exactly),
    so that rewards near the largest float do not overflow the sums.
    """
    values = [value for value in values if value is not None]
    if not values:
        return None, None
    exponent = math.frexp(max(abs(value) for value in values))[1]
    scaled = [math.ldexp(value, -exponent) for value in values]
    mean = math.ldexp(math.fsum(scaled) / len(scaled), exponent)
    try:
        std = math.ldexp(statistics.stdev(scaled), exponent) if len(scaled) > 1 else None
    except OverflowError:  # a spread beyond the largest float
        std = None
    return mean, std


def reward_metrics(records: list[dict], reward_names: list[str]) -> dict[str, float | None]:
    """
    GRPO's reward figures over the paid samples `records`: `rewards/{name}/mean` and `rewards/{name}/std` for each
    reward function (in the order of `reward_names`), and `reward` and `reward_std` of the weighted reward. Rewards
    that are None are left out; a figure with nothing left is None (a standard deviation needs two rewards).
    """
    metrics = {}
    for i, name in enumerate(reward_names):
        metrics[f"rewards/{name}/mean"], metrics[f"rewards/{name}/std"] = _mean_std([r["rewards"][i] for r in records])
    metrics["reward"], metrics["reward_std"] = _mean_std([r["reward"] for r in records])
    return metrics


def round_metrics(
    ledger: RewardLedger,
    k: int,
    stats: dict,
    max_reward_evaluations: int,
    num_regions: int,
    rewards: RewardEvaluator | None = None,
) -> dict:
    """
    The figures logged for round `k`: NREs, successes, the success rate of its paid samples, its acceptance. With
    `rewards`, once the round is collected: GRPO's reward figures of its paid samples (see [`reward_metrics`]) and the
    metrics the reward functions logged with `log_metric` during the round (`rewards.logs`), averaged (the built-in
    figures win a name they share).
    """
    this_round = ledger.paid_in_round(k)
    successes = sum(r["success"] for r in this_round)
    return {
        **(rewards.logs.metrics if rewards is not None else {}),
        **(reward_metrics(this_round, rewards.names) if rewards is not None else {}),
        "round": k,
        "nre/used": len(ledger),
        "nre/left": max_reward_evaluations - len(ledger),
        "successes/total": sum(r["success"] for r in ledger.records),
        "successes/round": successes,
        "success_rate": successes / max(len(this_round), 1),
        "acceptance_rate": stats["accepted"] / max(stats["proposed"], 1),
        "repeats": stats["repeats"],
        "regions": num_regions,
    }


def log_round_completions(
    ledger: RewardLedger, k: int, rewards: RewardEvaluator, step: int, num_completions: int | None
) -> None:
    """
    GRPO's `log_completions` for round `k`, once collected: TRL's table (`print_prompt_completions_sample`, titled
    with `step`) of its first `num_completions` paid samples (all when None): prompt, completion, each function's
    reward (nan for None) and the columns the functions logged with `log_extra` (`rewards.logs`). Those cover the
    evaluations the round paid in this process, its last ones: evaluations paid before an interruption show None.
    Without `rich`, one log line per completion.
    """
    logs = rewards.logs
    records = ledger.paid_in_round(k)
    shown = records if num_completions is None else records[: max(num_completions, 0)]
    if not shown:
        return
    if not is_rich_available():
        for r in shown:
            logger.info(f"round {k} | reward {r['reward']} | prompt {r['prompt']!r} | completion {r['completion']!r}")
        return
    offset = len(records) - logs.num_samples  # the record of the first evaluation the logs cover
    extra = {}
    if offset >= 0:  # otherwise the logs are not this round's alone: leave them out rather than misalign them
        extra = {
            column: [values[i - offset] if i >= offset else None for i in range(len(shown))]
            for column, values in logs.extra.items()
        }
    columns = {}
    for i, name in enumerate(rewards.names):
        name = name if name not in columns else f"{name} ({i + 1})"  # two functions of one name: both columns
        columns[name] = [math.nan if r["rewards"][i] is None else r["rewards"][i] for r in shown]
    prompts, completions = [r["prompt"] for r in shown], [r["completion"] for r in shown]
    print_prompt_completions_sample(prompts, completions, columns, None, step, extra=extra)
