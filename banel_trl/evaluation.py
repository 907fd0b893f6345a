"""Measuring a posterior: the success rate of its samples, with reward calls outside the training budget."""

from accelerate import Accelerator
from datasets import Dataset

from .distributed import gather_to_all, on_main_process
from .rewards import RewardEvaluator
from .sampling import CandidateSampler


def count_successes(
    sampler: CandidateSampler,
    rewards: RewardEvaluator,
    dataset: Dataset,
    trainer_state=None,
    num_generations: int | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[int, int]:
    """
    Draw `num_generations` (`BanelConfig.num_generations_eval`; by default `sampler.num_generations`) accepted samples
    of the posterior for every prompt of `dataset`, call the reward functions on them, and count the successes.
    Returns `(successes, samples)` on every process. With several processes (`accelerator`), each one samples its
    share of each batch of prompts and the main process alone calls the reward functions. These reward calls measure
    the result: the caller keeps them out of the budget and the ledger.
    """
    num_generations = num_generations or sampler.num_generations
    prompts_per_batch = max(1, sampler.generation_batch_size // num_generations)
    num_processes, rank = (1, 0) if accelerator is None else (accelerator.num_processes, accelerator.process_index)
    num_successes = 0
    for start in range(0, len(dataset), prompts_per_batch * num_processes):
        start += rank * prompts_per_batch
        rows = dataset.select(range(min(start, len(dataset)), min(start + prompts_per_batch, len(dataset))))
        examples = [example for example in rows for _ in range(num_generations)]
        samples = list(zip(examples, sampler.generate(examples) if examples else [], strict=True))
        num_successes += on_main_process(
            accelerator, _successes, rewards, gather_to_all(accelerator, samples), trainer_state
        )
    return num_successes, len(dataset) * num_generations


def _successes(rewards: RewardEvaluator, samples: list[tuple[dict, list[int]]], trainer_state) -> int:
    """The reward functions on `samples` `(example, completion_ids)`: how many succeed."""
    if not samples:
        return 0
    examples, completion_ids = (list(column) for column in zip(*samples, strict=True))
    rows = rewards(examples, completion_ids, trainer_state=trainer_state)
    return sum(rewards.is_success(rewards.reward(row)) for row in rows)


def success_metrics(
    accelerator, sampler: CandidateSampler, rewards: RewardEvaluator, dataset: Dataset, prefix: str, **kwargs
) -> dict:
    """
    What `BanelTrainer.evaluate` reports for `dataset`: `{prefix}_success_rate`, `{prefix}_num_samples`, and the mean
    of each metric the reward functions logged (kept apart from the logs of the round being fit): see
    [`count_successes`], which gets `kwargs`.
    """
    with rewards.logs_apart() as logs:
        num_successes, num_samples = count_successes(sampler, rewards, dataset, accelerator=accelerator, **kwargs)
    return {
        f"{prefix}_success_rate": num_successes / num_samples,
        f"{prefix}_num_samples": num_samples,
        **{f"{prefix}_{name}": value for name, value in logs.metrics.items()},
    }
