"""Steps 1-2 of a BaNEL round: sample the posterior and pay for accepted, never-seen candidates within the budget."""

import copy
import logging
import math
import statistics
from collections.abc import Callable

from accelerate import Accelerator
from scipy.stats import fisher_exact, mannwhitneyu
from transformers.utils import is_rich_available
from transformers.utils.logging import tqdm
from trl.trainer.utils import print_prompt_completions_sample

from .config import BanelConfig
from .distributed import gather_to_all, on_main_process
from .ledger import RewardLedger, RoundReplay, sample_key
from .posterior import acceptance_too_low
from .regions import RejectionRegion
from .rewards import RewardEvaluator, RewardFunctionError
from .sampling import CandidateSampler


logger = logging.getLogger(__name__)


class RoundCollector:
    """
    Samples the posterior for a round and pays one reward evaluation (NRE) per accepted, never-seen candidate, until
    the round's share of the hard budget is spent: accepted candidates already paid for are recorded as free repeats,
    rejected ones cost nothing. Every evaluation is written to the ledger before it counts.

    With several processes, every process proposes and scores its own batches, from its own stream; the main process
    gathers them in rank order and alone pays, writes the ledger and decides when the round ends.

    Args:
        sampler ([`CandidateSampler`]):
            Draws the posterior's candidates; restarted from the round's seed (and rank) before
            [`~RoundCollector.collect`].
        ledger ([`RewardLedger`]):
            The run's ledger, written to by the main process.
        rewards ([`RewardEvaluator`]):
            The run's reward functions.
        args ([`BanelConfig`]):
            The run's `samples_per_round` (NREs of a round), `max_reward_evaluations` (the hard budget: no round pays
            beyond it) and `max_sampling_attempts` (proposals per evaluation after which a round ends early).
        accelerator ([`~accelerate.Accelerator`], *optional*):
            The processes that propose; one when `None`.
    """

    def __init__(
        self,
        sampler: CandidateSampler,
        ledger: RewardLedger,
        rewards: RewardEvaluator,
        args: BanelConfig,
        accelerator: Accelerator | None = None,
    ):
        self.sampler = sampler
        self.ledger = ledger
        self.rewards = rewards
        self.samples_per_round = args.samples_per_round
        self.max_reward_evaluations = args.max_reward_evaluations
        self.max_sampling_attempts = args.max_sampling_attempts
        self.disable_tqdm = args.disable_tqdm
        self.accelerator = accelerator

    def collect(self, k: int, trainer_state=None) -> dict:
        """
        Sample and pay round `k`; returns its figures (`budget`, `proposed`, `accepted`, `repeats`, `evaluated`) on
        every process.

        The sampler starts from the round's seed, so a round interrupted by a crash draws the same candidates again
        when the run resumes: the evaluations and repeats it had recorded are met again, in order, and reused instead
        of being paid or recorded twice (see [`RoundReplay`]). A round whose end is in the ledger is not sampled again.
        `trainer_state` is handed to the reward functions. What they log (`log_extra`, `log_metric`) from the round's
        first evaluation on stays in `rewards.logs` for [`round_metrics`] and [`log_round_completions`], until the
        next round is sampled: logs left from before (the previous round's, a batch that raised) are dropped.
        """
        if k in self.ledger.round_ends:
            return self.ledger.round_ends[k]
        on_main_process(self.accelerator, self._start, k)
        while on_main_process(self.accelerator, self._goes_on):
            examples, proposal = self.sampler.propose_batch()  # on every process, from its own stream
            batch = [(len(examples), int(proposal.accepted.sum()), self.sampler.accepted(examples, proposal))]
            on_main_process(self.accelerator, self._pay, k, gather_to_all(self.accelerator, batch), trainer_state)
        return on_main_process(self.accelerator, self._end, k)

    def _start(self, k: int) -> None:
        """The round's budget, what it recorded before an interruption, and its figures (on the main process)."""
        self.rewards.pop_logs()
        paid_before = sum(1 for r in self.ledger.records if r["round"] < k)
        self.budget = min(self.samples_per_round, self.max_reward_evaluations - paid_before)
        self.replay = self.ledger.replay(k)  # written before an interruption: met again, not paid again
        self.stats = {"budget": self.budget, "proposed": 0, "accepted": 0, "repeats": 0, "evaluated": 0}
        self.progress = tqdm(total=self.budget, desc=f"Round {k} evaluations", leave=False, disable=self.disable_tqdm)

    def _goes_on(self) -> bool:
        """Whether the round samples another batch: its budget is not spent, and the posterior still accepts enough."""
        stats = self.stats
        if stats["evaluated"] >= self.budget or stats["proposed"] >= self.max_sampling_attempts * max(self.budget, 1):
            return False
        # New candidates come at under 1 in max_sampling_attempts proposals: give up early.
        return not acceptance_too_low(stats["evaluated"], stats["proposed"], self.max_sampling_attempts)

    def _pay(self, k: int, batches: list[tuple[int, int, list]], trainer_state) -> None:
        """Pay for the never-seen candidates the processes accepted (`batches`, in rank order), within the budget."""
        stats = self.stats
        stats["proposed"] += sum(num_proposed for num_proposed, _, _ in batches)
        stats["accepted"] += sum(num_accepted for _, num_accepted, _ in batches)
        accepted = [
            (*candidate, self.ledger.lookup(candidate[0]["prompt"], candidate[2]))
            for _, _, candidates in batches
            for candidate in candidates
        ]
        counted, to_pay, abandoned = self._select_to_pay(k, accepted, self.replay, self.budget - stats["evaluated"])
        if to_pay:
            self._evaluate_and_record(k, to_pay, trainer_state)
        stats["evaluated"] += abandoned + len(counted)
        stats["repeats"] += self._record_repeats(k, accepted, counted, self.replay)
        self.progress.update(min(stats["evaluated"], self.budget) - self.progress.n)
        self.progress.set_postfix(acceptance=f"{stats['accepted'] / stats['proposed']:.2e}", refresh=False)

    def _end(self, k: int) -> dict:
        """Close the round in the ledger with its figures, warning when it could not spend its budget."""
        stats, budget = self.stats, self.budget
        self.progress.close()
        stats["evaluated"] += self.replay.abandon()  # recorded before the interruption, not met again: still its own
        if stats["evaluated"] < budget:
            logger.warning(
                f"Round {k}: the posterior accepted {stats['accepted']} of {stats['proposed']} candidates "
                f"(acceptance rate {stats['accepted'] / max(stats['proposed'], 1):.2e}), {stats['repeats']} of them "
                f"already evaluated, so only {stats['evaluated']} of the round's {budget} evaluations were spent "
                f"within {self.max_sampling_attempts} proposals per evaluation. Ending the round early. If acceptance "
                "is low, lower `target_rejection_rate` or raise `max_sampling_attempts`."
            )
        self.ledger.end_round(k, stats)
        check_reward_scale(self.ledger, k, self.rewards)
        return stats

    def _select_to_pay(
        self, k: int, accepted: list[tuple], replay: RoundReplay, budget_left: int
    ) -> tuple[set[str], list[tuple[dict, list[int]]], int]:
        """
        Sort a batch's accepted candidates `(example, completion_ids, completion, ledger record or None)`: an
        evaluation paid before an interruption and met again counts and is not paid; a candidate never paid is paid
        while the round's budget allows; anything else is a free repeat. Returns the keys of the candidates that count
        as this batch's evaluations, the candidates to pay, and the number of evaluations recorded before an
        interruption that the round stops waiting for (they still count as its own).
        """
        counted, to_pay, unseen = set(), [], False
        for example, completion_ids, completion, record in accepted:
            key = sample_key(example["prompt"], completion)
            if key in counted:
                continue  # drawn twice in this batch: a free repeat
            if replay.meets(record):
                counted.add(key)
            elif record is None:
                unseen = True
                # The hard cap: never beyond the round's share, counting what it has yet to meet again.
                if len(counted) + len(replay.pending) < budget_left:
                    counted.add(key)
                    to_pay.append((example, completion_ids))
        if not (unseen and replay.pending):
            return counted, to_pay, 0
        logger.warning(
            f"Round {k} resumed, but its sampling did not draw again the {len(replay.pending)} evaluations it had "
            "paid for before the interruption (non-deterministic sampling, or a changed configuration?). They stay "
            "part of the round, which goes on with new candidates."
        )
        return counted, to_pay, replay.abandon()

    def _record_repeats(self, k: int, accepted: list[tuple], counted: set[str], replay: RoundReplay) -> int:
        """
        Record as free repeats the accepted candidates whose reward is known now, except the first occurrence of each
        candidate counted as an evaluation of this batch. Returns how many the batch had.
        """
        repeats, first_occurrences = [], set(counted)
        for example, _, completion, _ in accepted:
            key = sample_key(example["prompt"], completion)
            record = self.ledger.lookup(example["prompt"], completion)
            if key in first_occurrences:
                first_occurrences.remove(key)  # the evaluation itself
            elif record is not None and record["index"] not in replay.pending:
                repeats.append(record["index"])
        self.ledger.append_repeats(k, replay.unwritten_repeats(repeats))
        return len(repeats)

    def _evaluate_and_record(self, k: int, candidates: list[tuple[dict, list[int]]], trainer_state) -> None:
        """
        Call the reward functions once on the batch and write every result to the ledger before it counts. The
        records are built before the call, from copies of the candidates as sampled, so that they hold what was paid
        for whatever the functions do with their inputs (they get copies too: see [`call_reward_funcs`]).
        """
        records = [self._record(k, example, completion_ids) for example, completion_ids in candidates]
        examples = [example for example, _ in candidates]
        completion_ids = [ids for _, ids in candidates]
        try:
            rows = dict(enumerate(self.rewards(examples, completion_ids, trainer_state)))
        except RewardFunctionError as error:
            # The samples whose rewards are all usable were paid for: record them before stopping the run.
            self.ledger.append([self._paid(records[i], row) for i, row in error.rows.items()])
            raise
        self.ledger.append([self._paid(records[i], row) for i, row in rows.items()])

    def _record(self, k: int, example: dict, completion_ids: list[int]) -> dict:
        """The ledger record of an evaluation about to be paid, without its rewards."""
        return {
            "round": k,
            "prompt": copy.deepcopy(example["prompt"]),
            "completion": self.sampler.tokenizer.decode(completion_ids, skip_special_tokens=True),
            "completion_ids": list(completion_ids),
        }

    def _paid(self, record: dict, rewards: list[float | None]) -> dict:
        """`record` with the rewards it was paid for: one per function, their weighted sum and whether it succeeds."""
        reward = self.rewards.reward(rewards)
        return {**record, "rewards": rewards, "reward": reward, "success": self.rewards.is_success(reward)}


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


def check_reward_scale(ledger: RewardLedger, k: int, rewards: RewardEvaluator) -> None:
    """
    Warn when round `k`'s paid samples suggest that `success_threshold` does not fit the reward: all of them succeed
    (nothing to learn from), or, before any success of the run, a graded reward (more than two distinct values)
    stays below the threshold throughout; and, as GRPO does, when every reward function returned None for a sample
    (these two once per run, as `rewards.warned` records).
    """
    records = ledger.paid_in_round(k)
    values = [r["reward"] for r in records if r["reward"] is not None]
    threshold = rewards.success_threshold
    unrewarded = [r for r in records if r["reward"] is None]
    if unrewarded and "no_reward" not in rewards.warned:
        rewards.warned.add("no_reward")
        logger.warning(
            f"Round {k}: {len(unrewarded)} of {len(records)} paid samples have no reward: every reward function "
            f"returned None (or NaN) for them, e.g. prompt {unrewarded[0]['prompt']!r}, completion "
            f"{unrewarded[0]['completion']!r}. They count as failures. Please ensure that at least one reward "
            "function returns a valid reward."
        )
    if records and all(r["success"] for r in records):
        logger.warning(
            f"Round {k}: all {len(records)} paid samples are successes (rewards from {min(values)} to "
            f"{max(values)}, `success_threshold`={threshold}): nothing to learn from, since failures are what BaNEL "
            "trains on. Is `success_threshold` too low for this reward?"
        )
    graded = len(set(values)) > 2 and not any(r["success"] for r in ledger.records)
    if graded and "graded_reward" not in rewards.warned:
        rewards.warned.add("graded_reward")
        logger.warning(
            f"Round {k}: no success yet, and the reward is graded ({len(set(values))} distinct values) with every "
            f"value below `success_threshold`={threshold}: the highest seen is {max(values)}. A graded reward needs "
            "`success_threshold` set to the score that counts as a success; if that is the current one, ignore this."
        )


def round_fell_short(k: int, stats: dict, num_evaluations: int, max_reward_evaluations: int) -> bool:
    """Whether round `k` could not spend its budget (`stats` from [`RoundCollector.collect`]), warning if so."""
    if stats["evaluated"] >= stats["budget"]:
        return False
    logger.warning(
        f"Ending the run after round {k}, which could not spend its budget: a further region would only lower the "
        f"acceptance rate ({stats['accepted'] / max(stats['proposed'], 1):.2e}). {num_evaluations} of "
        f"{max_reward_evaluations} evaluations are spent; to go on, call `train()` again with a higher "
        "`max_sampling_attempts`."
    )
    return True


def region_has_evidence(ledger: RewardLedger, k: int, args: BanelConfig) -> bool:
    """
    Whether round `k` found enough successes for a region scored against a reference fit on the same posterior, the
    successes being all that tells its failures from the reference's samples (`reference_min_successes`). Regions
    scored against the model that drew their samples (`p_theta` in round 0, a distilled proposal, or
    `reference_model="proposal"`) need none.
    """
    if args.reference_model != "posterior" or k == 0 or args.distill_posterior:
        return True
    num_successes = sum(r["success"] for r in ledger.paid_in_round(k))
    if num_successes >= args.reference_min_successes:
        return True
    logger.warning(
        f"Round {k} adds no region: it found {num_successes} success(es), fewer than `reference_min_successes`="
        f"{args.reference_min_successes}, and they are all that would tell its failures from the reference's "
        "samples, so the region would be fitting noise. Its evaluations stay in the ledger; the posterior is "
        "unchanged."
    )
    return False


def review_newest_region(
    ledger: RewardLedger, regions: list[RejectionRegion], k: int, args: BanelConfig, relax: Callable
) -> bool:
    """
    Whether round `k`'s paid samples change the newest region (see `retraction_p_value`); a round that does adds no
    region, its samples having come from the posterior it changed. Only paid evidence decides: successes are counted,
    never trained on, and a resumed run decides again the same way.

    - A region as fit in round `k - 1` stays if round `k`'s samples, drawn with it, succeed more often than round
      `k - 1`'s, drawn without it (one-sided Fisher exact test). Otherwise `relax(region)` cuts it back (see
      `relaxed_rejection_rate`) and returns the relaxed scores of round `k - 1`'s successes and of the failures
      held out of its fit; it is retracted instead if the successes score higher, so that the cut rejects them more
      than the failures (one-sided Mann-Whitney U test: the ranks of every success among the failures, which tell
      with a few successes what counting those beyond the threshold cannot), or if there is no relaxed cut.
    - A region relaxed in round `k - 1` stays unless round `k`'s samples succeed less often than those it was fit on
      (the same test the other way): a shallow cut's gains are too small for a round to show.
    """
    newest = regions[-1] if regions else None
    if args.retraction_p_value is None or args.distill_posterior or newest is None:
        return False
    if newest.reviewed_round == k:
        return True  # decided before an interruption
    as_fit = newest.reviewed_round is None
    if newest.retracted or newest.last_round != k - 1:
        return False  # not on trial: retracted, or not changed since a round before the previous one
    counts = [(sum(r["success"] for r in paid), len(paid)) for paid in map(ledger.paid_in_round, (k, newest.round))]
    table = [[successes, num_paid - successes] for successes, num_paid in counts]
    p_value = float(fisher_exact(table, alternative="greater" if as_fit else "less").pvalue)
    if (p_value < args.retraction_p_value) == as_fit:
        return False
    newest.reviewed_round = k
    (with_region, num_with), (without, num_without) = counts
    evidence = (
        f"its paid samples succeeded {with_region} times in {num_with}, against {without} in {num_without} without "
        f"the region (one-sided Fisher test p = {p_value:.3g}, `retraction_p_value`={args.retraction_p_value})"
    )
    relaxes = as_fit and args.relaxed_rejection_rate is not None and args.threshold_type == "calibrated"
    if relaxes:
        successes, failures = relax(newest)
        harm = float(mannwhitneyu(successes, failures, alternative="greater").pvalue) if successes else 1.0
        relaxes = harm >= args.retraction_p_value
        rejected = sum(score > newest.threshold for score in successes)
        evidence += (
            f"; relaxed to reject {args.relaxed_rejection_rate:g} of its held-out failures at kappa "
            f"{args.relaxed_kappa:g}, it would reject {rejected} of the {len(successes)} successes paid in round "
            f"{newest.round} (that their scores rank above those failures': one-sided Mann-Whitney U test p = "
            f"{harm:.3g})"
        )
    newest.retracted = not relaxes
    logger.warning(
        f"Round {k} {'relaxes' if relaxes else 'retracts'} the region of round {newest.round}: {evidence}. "
        + ("It stops rejecting" if newest.retracted else "It keeps the relaxed cut")
        + ", and this round adds no region: its samples came from the posterior it changed."
    )
    return True


def negative_examples(ledger: RewardLedger, sampler: CandidateSampler, k: int, negative_samples: str) -> list[dict]:
    """
    The failures the negative model of round `k` is fit on: its own (`negative_samples="round"`) or every round's so
    far (`"all"`), paid evaluations and free repeats; successes are excluded by construction.
    """
    rounds = [k] if negative_samples == "round" else range(k + 1)
    return [
        {"prompt_ids": sampler.prompt_ids(r["prompt"]), "completion_ids": r["completion_ids"], "round": round_index}
        for round_index in rounds
        for r in ledger.samples_of_round(round_index)
        if not r["success"]
    ]
