"""Measuring attackers: success rates on fresh samples, and how well a region separates successes from failures."""

import json
import os
import time

import torch

from banel_trl.data import NegativesCollator
from banel_trl.regions import BASE_ADAPTER
from banel_trl.report import clopper_pearson
from banel_trl.tasks import addition_attack as task


def auc(failure_scores: torch.Tensor, success_scores: torch.Tensor) -> float:
    """P(a failure scores above a success), ties counted half (Mann-Whitney U / (n_f n_s))."""
    if len(failure_scores) == 0 or len(success_scores) == 0:
        return float("nan")
    above = (failure_scores[:, None] > success_scores[None, :]).float().mean()
    ties = (failure_scores[:, None] == success_scores[None, :]).float().mean()
    return (above + 0.5 * ties).item()


def rate_summary(successes: int, samples: int) -> dict:
    low, high = clopper_pearson(successes, samples) if samples else (0.0, 1.0)
    return {
        "successes": successes,
        "samples": samples,
        "success_rate": successes / max(samples, 1),
        "ci95": [low, high],
    }


def model_success_rate(model, tokenizer, reward, num_samples: int, seed: int, temperature: float = 1.0) -> dict:
    """Success rate of plain ancestral samples from `model` (the pretrained attacker or a fine-tuned one)."""
    queries = task.sample_queries(model, tokenizer, num_samples, batch_size=4000, temperature=temperature, seed=seed)
    rewards = reward(completions=queries)
    return {
        **rate_summary(int(sum(rewards)), num_samples),
        "queries": [q for q, r in zip(queries, rewards, strict=True) if r],
    }


def by_outcome(queries: list[str], rewards: list[float]) -> dict:
    """The queries the target rewarded (`successes`) and the others (`failures`), in order."""
    return {
        "successes": [q for q, r in zip(queries, rewards, strict=True) if r],
        "failures": [q for q, r in zip(queries, rewards, strict=True) if not r],
    }


def seeded_proposals(
    posterior, tokenizer, generation_config, seed: int, batch_size: int, adapter: str | None = None, regions=None
):
    """
    Endless batches of `batch_size` unconditional candidates of `posterior` (a `Proposal` each), seeded by `seed`;
    `adapter` and `regions` propose from another adapter and decide by other regions (see `BanelPosterior.propose`).
    """
    torch.manual_seed(seed)
    bos = torch.full((batch_size, 1), tokenizer.bos_token_id)
    while True:
        yield posterior.propose(bos, torch.ones_like(bos), generation_config, adapter=adapter, regions=regions)


@torch.no_grad()
def posterior_success_rate(
    posterior,
    tokenizer,
    reward,
    generation_config,
    num_samples: int,
    max_proposals: int,
    seed: int,
    batch_size: int = 8192,
) -> dict:
    """
    Success rate of the BaNEL posterior on fresh samples: candidates from p_theta, filtered by every region, until
    `num_samples` are accepted or `max_proposals` were drawn. Only accepted samples are scored by the target.
    """
    batches = seeded_proposals(posterior, tokenizer, generation_config, seed, batch_size)
    proposed, accepted_texts = 0, []
    while len(accepted_texts) < num_samples and proposed < max_proposals:
        proposal = next(batches)
        keep = proposal.completion_ids[proposal.accepted]
        accepted_texts += tokenizer.batch_decode(keep, skip_special_tokens=True)
        proposed += batch_size
    acceptance_rate = len(accepted_texts) / proposed  # before the last batch's surplus is dropped
    accepted_texts = accepted_texts[:num_samples]
    rewards = reward(completions=accepted_texts)
    summary = rate_summary(int(sum(rewards)), len(accepted_texts))
    return {
        **summary,
        "proposed": proposed,
        "acceptance_rate": acceptance_rate,
        "queries": [q for q, r in zip(accepted_texts, rewards, strict=True) if r],
    }


def reference_pool(tokenizer, attacker, reward, num_samples: int, num_failures: int, cache_dir: str) -> dict:
    """
    A fixed sample of the pretrained attacker with known outcomes: all its successes and `num_failures` failures.
    Regions are scored on it after every round to measure discrimination. Cached: it costs `num_samples` target calls.
    """
    path = os.path.join(cache_dir, f"reference_pool_{reward.__name__}_{num_samples}_{num_failures}.json")
    if os.path.exists(path):
        with open(path) as file:
            return json.load(file)
    start = time.time()
    queries = task.sample_queries(attacker, tokenizer, num_samples, batch_size=4000, seed=12345)
    rewards = reward(completions=queries)
    pool = by_outcome(queries, rewards)
    pool.update(failures=pool["failures"][:num_failures], num_samples=num_samples, seconds=time.time() - start)
    os.makedirs(cache_dir, exist_ok=True)
    with open(path, "w") as file:
        json.dump(pool, file)
    return pool


@torch.no_grad()
def proposal_pool(
    posterior,
    proposal: str,
    tokenizer,
    reward,
    generation_config,
    num_samples: int,
    seed: int,
    batch_size: int = 8192,
) -> dict:
    """
    A fresh labelled pool of the distilled proposal `proposal` alone (every candidate, whatever the regions decide),
    held as `reference_pool` holds `p_theta`'s: a region fit against that proposal acts on its samples, so it is
    measured on them. Its target calls are a measurement, outside the run's budget.
    """
    current, posterior.proposal_adapter = posterior.proposal_adapter, proposal
    try:
        batches = seeded_proposals(posterior, tokenizer, generation_config, seed, batch_size)
        queries = []
        while len(queries) < num_samples:
            queries += tokenizer.batch_decode(next(batches).completion_ids, skip_special_tokens=True)
    finally:
        posterior.proposal_adapter = current
    queries = queries[:num_samples]
    return by_outcome(queries, reward(completions=queries))


def encode_queries(tokenizer, queries: list[str]) -> dict:
    """Prompt (BOS) and completion (query + EOS) tensors, laid out as the negative fit and the posterior score them."""
    return NegativesCollator(tokenizer.pad_token_id)(
        [
            {
                "prompt_ids": [tokenizer.bos_token_id],
                "completion_ids": tokenizer.convert_tokens_to_ids(list(query)) + [tokenizer.eos_token_id],
            }
            for query in queries
        ]
    )


def region_discrimination(posterior, pool_batches: dict) -> dict:
    """
    How the newest region acts on the posterior before it: on the pool's samples that every earlier region accepts,
    the AUC of its log-ratio between failures and successes, and the share of each it rejects. A region fit on a
    distilled proposal acts on that proposal alone (the earlier regions are distilled into it): give it a pool of
    that proposal's samples (`proposal_pool`), which it measures whole.
    """
    region = posterior.regions[-1]
    earlier = [] if region.proposal != BASE_ADAPTER else [r for r in posterior.regions[:-1] if not r.retracted]
    scores, survivors = {}, {}
    for kind, batch in pool_batches.items():
        ratios = posterior.log_ratios(**batch, regions=[*earlier, region])
        thresholds = torch.tensor([r.threshold for r in earlier], device=ratios.device)
        survivors[kind] = ~(ratios[:, :-1] > thresholds).any(dim=1)
        scores[kind] = ratios[survivors[kind], -1]
    return {
        "pool_successes_left": int(survivors["successes"].sum()),
        "pool_failures_left": int(survivors["failures"].sum()),
        "auc": auc(scores["failures"], scores["successes"]),
        "rejects_successes": (scores["successes"] > region.threshold).float().mean().item(),
        "rejects_failures": (scores["failures"] > region.threshold).float().mean().item(),
    }
