"""Measuring a posterior: the success rate of its samples, with reward calls outside the training budget."""

from datasets import Dataset

from .rewards import RewardEvaluator
from .sampling import CandidateSampler


def count_successes(
    sampler: CandidateSampler, rewards: RewardEvaluator, dataset: Dataset, trainer_state=None
) -> tuple[int, int]:
    """
    Draw `sampler.num_generations` accepted samples of the posterior for every prompt of `dataset`, call the reward
    functions on them, and count the successes. Returns `(successes, samples)`. These reward calls measure the
    result: the caller keeps them out of the budget and the ledger.
    """
    prompts_per_batch = sampler.generation_batch_size // sampler.num_generations
    num_successes = 0
    for start in range(0, len(dataset), prompts_per_batch):
        rows = dataset.select(range(start, min(start + prompts_per_batch, len(dataset))))
        examples = [example for example in rows for _ in range(sampler.num_generations)]
        completion_ids = sampler.generate(examples)
        rows = rewards(examples, completion_ids, trainer_state=trainer_state)
        num_successes += sum(rewards.is_success(rewards.reward(row)) for row in rows)
    return num_successes, len(dataset) * sampler.num_generations
