"""
Measuring a posterior: the success rate of its samples, with every reward call paid from an evaluation budget of its
own and recorded in an evaluation ledger, and none paid for a sample whose reward the run already knows.
"""

import logging
from dataclasses import dataclass

from accelerate import Accelerator
from datasets import Dataset

from .collect import pay_and_record
from .distributed import gather_to_all, on_main_process
from .ledger import EVAL_LEDGER_NAME, HitsFile, RewardLedger, sample_key
from .rewards import RewardEvaluator
from .sampling import CandidateSampler


logger = logging.getLogger(__name__)


@dataclass
class EvaluationCounts:
    """What an evaluation measured: samples with a known reward, their successes, and the reward calls it paid."""

    samples: int = 0
    successes: int = 0
    paid: int = 0
    known: int = 0  # samples measured without a reward call of their own (known to a ledger, or drawn twice)
    budget_spent: bool = False


class PaidEvaluation:
    """
    Counts the successes of accepted posterior samples, paying for the reward of a sample only when neither the
    training ledger nor the evaluation ledger knows it, and only within `budget` reward evaluations in all (over every
    `evaluate()` of the run). Each paid evaluation is written to `eval_ledger` before it counts (crash-safe, as the
    training ledger); samples beyond the budget are left unmeasured.
    """

    def __init__(
        self,
        rewards: RewardEvaluator,
        tokenizer,
        training_ledger: RewardLedger,
        eval_ledger: RewardLedger,
        budget: int,
        round_index: int,
        trainer_state=None,
    ):
        self.rewards = rewards
        self.tokenizer = tokenizer
        self.ledgers = (training_ledger, eval_ledger)
        self.eval_ledger = eval_ledger
        self.budget = budget
        self.round_index = round_index  # the last training round whose posterior is measured
        self.trainer_state = trainer_state
        self.counts = EvaluationCounts()

    def _known(self, prompt, completion: str) -> dict | None:
        return next((r for ledger in self.ledgers if (r := ledger.lookup(prompt, completion)) is not None), None)

    def measure(self, samples: list[tuple[dict, list[int]]]) -> EvaluationCounts:
        """
        Measure a batch of samples `(example, completion_ids)`: a sample whose reward a ledger knows is counted as it
        is, the others are paid once each within the budget (a second draw of one counts once it is paid), and those
        beyond the budget are left unmeasured. Returns the counts so far.
        """
        counts, to_pay, waiting = self.counts, {}, []
        for example, completion_ids in samples:
            completion = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
            if self._known(example["prompt"], completion) is not None:
                waiting.append((example["prompt"], completion))
            elif (key := sample_key(example["prompt"], completion)) in to_pay:
                waiting.append((example["prompt"], completion))  # drawn twice in the batch: paid once, counted twice
            elif len(self.eval_ledger) + len(to_pay) < self.budget:
                to_pay[key] = (example, completion_ids)
                waiting.append((example["prompt"], completion))
            else:
                counts.budget_spent = True
        num_records = len(self.eval_ledger)
        if to_pay:
            rewards, tokenizer, k = self.rewards, self.tokenizer, self.round_index
            pay_and_record(self.eval_ledger, rewards, tokenizer, k, list(to_pay.values()), self.trainer_state)
        counts.paid += len(self.eval_ledger) - num_records
        for prompt, completion in waiting:
            record = self._known(prompt, completion)
            if record is not None:  # None: its batch's reward call raised before it was recorded
                counts.samples, counts.successes = counts.samples + 1, counts.successes + record["success"]
        counts.known = counts.samples - counts.paid
        return counts


def count_successes(
    sampler: CandidateSampler,
    evaluation: PaidEvaluation | None,
    dataset: Dataset,
    num_generations: int | None = None,
    accelerator: Accelerator | None = None,
) -> EvaluationCounts:
    """
    Draw `num_generations` (`BanelConfig.num_generations_eval`; by default `sampler.num_generations`) accepted samples
    of the posterior for every prompt of `dataset` and measure them with `evaluation` (which lives on the main process;
    `None` on the others). Stops once the evaluation budget is spent. With several processes, each one samples its
    share of each batch of prompts and the main process alone pays. Returns the counts on every process.
    """
    num_generations = num_generations or sampler.num_generations
    prompts_per_batch = max(1, sampler.generation_batch_size // num_generations)
    num_processes, rank = (1, 0) if accelerator is None else (accelerator.num_processes, accelerator.process_index)
    counts = EvaluationCounts()
    for start in range(0, len(dataset), prompts_per_batch * num_processes):
        start += rank * prompts_per_batch
        rows = dataset.select(range(min(start, len(dataset)), min(start + prompts_per_batch, len(dataset))))
        examples = [example for example in rows for _ in range(num_generations)]
        samples = gather_to_all(
            accelerator, list(zip(examples, sampler.generate(examples) if examples else [], strict=True))
        )
        counts = on_main_process(accelerator, evaluation.measure if evaluation is not None else None, samples)
        if counts.budget_spent:
            break
    return counts


def evaluate_posterior(
    args,
    sampler: CandidateSampler,
    rewards: RewardEvaluator,
    training_ledger: RewardLedger,
    dataset: Dataset,
    prefix: str,
    trainer_state=None,
    accelerator: Accelerator | None = None,
) -> dict:
    """
    `BanelTrainer.evaluate` on one dataset: measure the posterior with a [`PaidEvaluation`] on the run's evaluation
    ledger (opened, locked and closed by the main process) and return its metrics (see [`success_metrics`]).
    """
    budget = args.max_eval_reward_evaluations
    if budget is None:
        raise ValueError(
            "`evaluate()` calls the reward functions on the posterior's samples, and each call costs what a training "
            "evaluation costs (an assay, a simulation). Set `max_eval_reward_evaluations`, the evaluation's own budget "
            "over the run (recorded in banel_eval_ledger.jsonl, apart from the training budget; 0 measures only samples "
            "whose reward the run already knows)."
        )
    main = accelerator is None or accelerator.is_main_process
    evaluation = None
    if main:  # the training ledger as written, when this trainer has not opened it
        known = training_ledger if training_ledger.lines else RewardLedger.read(args.output_dir, missing_ok=True)
        eval_ledger = RewardLedger(args.output_dir, EVAL_LEDGER_NAME, hits=HitsFile(args.output_dir))
        last_round = max(known.round_ends, default=-1)
        evaluation = PaidEvaluation(rewards, sampler.tokenizer, known, eval_ledger, budget, last_round, trainer_state)
    try:
        with rewards.logs_apart() as logs:
            counts = count_successes(sampler, evaluation, dataset, args.num_generations_eval, accelerator)
        requested = len(dataset) * (args.num_generations_eval or sampler.num_generations)
        used = on_main_process(accelerator, lambda: len(evaluation.eval_ledger))
        return success_metrics(counts, requested, prefix, logs.metrics, budget, used)
    finally:
        if evaluation is not None:
            evaluation.eval_ledger.close()


def success_metrics(
    counts: EvaluationCounts, requested: int, prefix: str, logged: dict, budget: int, used: int
) -> dict:
    """
    What `BanelTrainer.evaluate` reports: `{prefix}_success_rate` over the `{prefix}_num_samples` measured (of
    `requested`), the reward evaluations it paid and those it reused, the evaluation budget left, and the mean of
    each metric the reward functions `logged`.
    """
    if counts.budget_spent:
        logger.warning(
            f"The evaluation budget (`max_eval_reward_evaluations`={budget}) is spent: {counts.samples} of the "
            f"{requested} samples requested were measured. Raise it to measure more."
        )
    return {
        f"{prefix}_success_rate": counts.successes / counts.samples if counts.samples else None,
        f"{prefix}_num_samples": counts.samples,
        f"{prefix}_num_successes": counts.successes,
        f"{prefix}_reward_evaluations": counts.paid,
        f"{prefix}_known_rewards": counts.known,
        f"{prefix}_reward_evaluations_left": budget - used,
        **{f"{prefix}_{name}": value for name, value in logged.items()},
    }
