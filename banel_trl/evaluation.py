"""Measuring a posterior: the success rate of its samples, with reward calls outside the training budget."""

import functools

from datasets import Dataset

from .distributed import on_main_process
from .rewards import RewardEvaluator
from .sampling import CandidateSampler


def count_successes(
    sampler: CandidateSampler,
    rewards: RewardEvaluator,
    dataset: Dataset,
    trainer_state=None,
    num_generations: int | None = None,
) -> tuple[int, int]:
    """
    Draw `num_generations` (`BanelConfig.num_generations_eval`; by default `sampler.num_generations`) accepted samples
    of the posterior for every prompt of `dataset`, call the reward functions on them, and count the successes.
    Returns `(successes, samples)`. These reward calls measure the result: the caller keeps them out of the budget and
    the ledger.
    """
    num_generations = num_generations or sampler.num_generations
    prompts_per_batch = max(1, sampler.generation_batch_size // num_generations)
    num_successes = 0
    for start in range(0, len(dataset), prompts_per_batch):
        rows = dataset.select(range(start, min(start + prompts_per_batch, len(dataset))))
        examples = [example for example in rows for _ in range(num_generations)]
        completion_ids = sampler.generate(examples)
        rows = rewards(examples, completion_ids, trainer_state=trainer_state)
        num_successes += sum(rewards.is_success(rewards.reward(row)) for row in rows)
    return num_successes, len(dataset) * num_generations


def success_metrics(
    accelerator, sampler: CandidateSampler, rewards: RewardEvaluator, dataset: Dataset, prefix: str, **kwargs
) -> dict:
    """
    What `BanelTrainer.evaluate` reports for `dataset`: `{prefix}_success_rate`, `{prefix}_num_samples`, and the mean
    of each metric the reward functions logged (kept apart from the logs of the round being fit). [`count_successes`]
    (with `kwargs`) runs on the main process.
    """
    with rewards.logs_apart() as logs:
        count = functools.partial(count_successes, sampler, rewards, dataset, **kwargs)
        num_successes, num_samples = on_main_process(accelerator, count)
    return {
        f"{prefix}_success_rate": num_successes / num_samples,
        f"{prefix}_num_samples": num_samples,
        **{f"{prefix}_{name}": value for name, value in logs.metrics.items()},
    }
