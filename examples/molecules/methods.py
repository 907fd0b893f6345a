"""
The methods of the molecule comparison, each spending one budget of oracle calls (reward evaluations, NREs) on one
task: the prior sampled as is, BaNEL at the shipped defaults, TRL's GRPOTrainer (plain, REINVENT-style with a KL
penalty to the prior, and with the RND and pseudo-count novelty bonuses of the addition-attack harness), and the
genetic algorithm `mol-ga` started from a MOSES sample.

Every method returns one dict: the distinct hits it paid for within the budget and when (`curve`: oracle calls so far,
distinct hits so far), and its final generator measured on fresh samples outside the budget.
"""

import heapq
import os
import random
import sys
import time

import torch
from datasets import Dataset
from prior import MAX_COMPLETION_LENGTH, canonical, load_prior, sample_smiles
from rdkit.Chem import rdFingerprintGenerator
from tasks import parse
from trl import GRPOConfig, GRPOTrainer

from banel_trl import BanelConfig, BanelTrainer


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "addition_attack"))
from baselines import GENERATIONS_PER_STEP, NUM_GENERATIONS, MeteredReward, PseudoCountBonus, RNDBonus  # noqa: E402


# Candidates per `generate` call of BaNEL's sampler and of the evaluation: large batches keep a small model's sampling
# cheap on a CPU (the default, 64, pays the per-call overhead of `generate` 30 times more often).
GENERATION_BATCH_SIZE = 2048
# REINVENT's KL penalty to the prior, as GRPOTrainer's `beta`.
REINVENT_BETA = 0.04
_MORGAN = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)


def hit_curve(evaluated: list[tuple[str, float]]) -> tuple[list[str], list[list[int]]]:
    """
    The distinct hits (canonical SMILES, in the order found) among oracle calls `evaluated` (completion, reward) and
    the curve of distinct hits against calls: one point per new hit, and the last call.
    """
    hits, curve = [], []
    for calls, (completion, reward) in enumerate(evaluated, start=1):
        if reward >= 1.0:
            smiles = canonical(completion.strip())
            if smiles not in hits:
                hits.append(smiles)
                curve.append([calls, len(hits)])
    if evaluated:
        curve.append([len(evaluated), len(hits)])
    return hits, curve


def measure_samples(samples: list[str], reward, train: set[str]) -> dict:
    """
    A generator's figures on fresh `samples`, outside the budget: success rate, the distinct hits among them,
    validity, and novelty (MOSES's definition: distinct valid molecules absent from `train`).
    """
    rewards = reward(completions=samples)
    valid = [c for c in map(canonical, (s.strip() for s in samples)) if c is not None]
    unique = set(valid)
    hits = sorted({canonical(s.strip()) for s, r in zip(samples, rewards, strict=True) if r})
    return {
        "samples": len(samples),
        "successes": int(sum(rewards)),
        "success_rate": sum(rewards) / max(len(samples), 1),
        "eval_hits": hits,
        "validity": len(valid) / max(len(samples), 1),
        "novelty": len(unique - train) / max(len(unique), 1),
        "hit_novelty": len(set(hits) - train) / max(len(hits), 1),
    }


class OracleLog:
    """The task reward, recording every call in order: (completion, reward) per evaluated completion."""

    def __init__(self, reward):
        self.reward = reward
        self.__name__ = reward.__name__
        self.evaluated = []

    def __call__(self, completions: list[str], **kwargs) -> list[float]:
        rewards = self.reward(completions=completions)
        self.evaluated += list(zip(completions, rewards, strict=True))
        return rewards


def run_prior(seed: int, reward, prior_path: str, budget: int, eval_samples: int, train: set[str]) -> dict:
    """The prior spending the budget on its own samples, then measured on `eval_samples` fresh ones."""
    model, tokenizer = load_prior(prior_path)
    oracle = OracleLog(reward)
    oracle(sample_smiles(model, tokenizer, budget, seed=seed, batch_size=GENERATION_BATCH_SIZE))
    hits, curve = hit_curve(oracle.evaluated)
    samples = sample_smiles(model, tokenizer, eval_samples, seed=seed + 1000, batch_size=GENERATION_BATCH_SIZE)
    return {"nre": len(oracle.evaluated), "hits": hits, "curve": curve, **measure_samples(samples, reward, train)}


@torch.no_grad()
def posterior_samples(trainer, num_samples: int, max_proposals: int, seed: int) -> tuple[list[str], dict, list[str]]:
    """
    Fresh samples of BaNEL's posterior (candidates of the prior that every region accepts), until `num_samples` are
    accepted or `max_proposals` were drawn; the sampling figures; and up to `num_samples` candidates the regions
    rejected.
    """
    tokenizer = trainer.processing_class
    torch.manual_seed(seed)
    bos = torch.full((GENERATION_BATCH_SIZE, 1), tokenizer.bos_token_id)
    accepted, rejected, proposed = [], [], 0
    while len(accepted) < num_samples and proposed < max_proposals:
        proposal = trainer.posterior.propose(bos, torch.ones_like(bos), trainer.generation_config)
        texts = tokenizer.batch_decode(proposal.completion_ids, skip_special_tokens=True)
        accepted += [t for t, keep in zip(texts, proposal.accepted.tolist(), strict=True) if keep]
        rejected += [t for t, keep in zip(texts, proposal.accepted.tolist(), strict=True) if not keep][
            : num_samples - len(rejected)
        ]
        proposed += GENERATION_BATCH_SIZE
    return accepted[:num_samples], {"proposed": proposed, "acceptance_rate": len(accepted) / proposed}, rejected


def run_banel(
    seed: int,
    reward,
    prior_path: str,
    output_dir: str,
    budget: int,
    eval_samples: int,
    eval_max_proposals: int,
    train: set[str],
    config_overrides: dict,
) -> dict:
    """
    BanelTrainer from the prior's path with the shipped defaults: only the budget, the schedule (two rounds, the
    shipped default, at this budget), what the task needs (completion length) and the generation batch size set.
    """
    _, tokenizer = load_prior(prior_path)
    config = BanelConfig(
        output_dir=output_dir,
        seed=seed,
        max_reward_evaluations=budget,
        samples_per_round=-(-budget // 2),
        max_completion_length=MAX_COMPLETION_LENGTH,
        generation_batch_size=GENERATION_BATCH_SIZE,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
        **config_overrides,
    )
    trainer = BanelTrainer(
        prior_path,  # a path, as a user passes a Hub id
        reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}),
        processing_class=tokenizer,
    )
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    evaluated = [(record["completion"], float(record["success"])) for record in trainer.ledger.records]
    hits, curve = hit_curve(evaluated)
    samples, sampling, rejected = posterior_samples(trainer, eval_samples, eval_max_proposals, seed + 1000)
    # What the regions reject, measured outside the budget: the task's success rate among rejected candidates.
    rejected_rewards = reward(completions=rejected)
    regions = [
        {"round": r.round, "threshold": r.threshold, "retracted": r.retracted} for r in trainer.posterior.regions
    ]
    # Each round's paid samples: how often they succeeded and what share of the proposals the posterior accepted.
    keys = ("round", "nre/used", "successes/round", "success_rate", "acceptance_rate", "regions")
    rounds = [{key: log[key] for key in keys} for log in trainer.state.log_history if "acceptance_rate" in log]
    return {
        "nre": len(evaluated),
        "hits": hits,
        "curve": curve,
        **measure_samples(samples, reward, train),
        **sampling,
        "rejected_samples": len(rejected_rewards),
        "rejected_success_rate": sum(rejected_rewards) / max(len(rejected_rewards), 1),
        "regions": regions,
        "rounds": rounds,
        "train_seconds": train_seconds,
        "overrides": config_overrides,
    }


def fingerprint_features(completions: list[str]) -> torch.Tensor:
    """(N, 2048) Morgan fingerprint bits (radius 2) of each completion; zeros for an invalid SMILES."""
    features = torch.zeros(len(completions), 2048)
    for n, completion in enumerate(completions):
        molecule = parse(completion)
        if molecule is not None:
            features[n, list(_MORGAN.GetFingerprint(molecule).GetOnBits())] = 1.0
    return features


def run_grpo(
    seed: int,
    reward,
    prior_path: str,
    output_dir: str,
    budget: int,
    eval_samples: int,
    train: set[str],
    method: str,
    learning_rate: float,
) -> dict:
    """
    GRPOTrainer from the prior with `budget` generations, each one oracle call. `method`: "grpo" (the task reward),
    "reinvent" (the task reward with a KL penalty to the prior, `beta` = `REINVENT_BETA`), "rnd" or "pseudo_count"
    (the addition-attack harness's novelty bonuses, on Morgan fingerprints for RND and on the SMILES characters for
    pseudo-counts; an invalid SMILES earns no bonus).
    """
    _, tokenizer = load_prior(prior_path)
    oracle = OracleLog(reward)
    bonuses = {
        "rnd": lambda: RNDBonus(seed, featurize=fingerprint_features),
        "pseudo_count": PseudoCountBonus,
    }
    bonus = bonuses[method]() if method in bonuses else None
    metered = MeteredReward(oracle, bonus, is_valid=lambda completion: parse(completion) is not None)
    config = GRPOConfig(
        output_dir=output_dir,
        seed=seed,
        max_steps=budget // GENERATIONS_PER_STEP,
        per_device_train_batch_size=GENERATIONS_PER_STEP,
        num_generations=NUM_GENERATIONS,
        max_completion_length=MAX_COMPLETION_LENGTH,
        learning_rate=learning_rate,
        beta=REINVENT_BETA if method == "reinvent" else 0.0,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="no",
        use_cpu=True,
    )
    trainer = GRPOTrainer(
        prior_path,
        metered,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token] * GENERATIONS_PER_STEP}),
    )
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    hits, curve = hit_curve(oracle.evaluated)
    model = trainer.model.eval()
    samples = sample_smiles(model, tokenizer, eval_samples, seed=seed + 1000, batch_size=GENERATION_BATCH_SIZE)
    return {
        "nre": len(oracle.evaluated),
        "hits": hits,
        "curve": curve,
        **measure_samples(samples, reward, train),
        "learning_rate": learning_rate,
        "train_seconds": train_seconds,
    }


class BudgetSpent(Exception):
    pass


def run_mol_ga(
    seed: int,
    reward,
    budget: int,
    train_smiles: list[str],
    train: set[str],
    population_size: int,
    offspring_size: int,
) -> dict:
    """
    mol-ga's graph GA (its default operators and rank-quantile sampling, Tripp and Fang 2023) started from
    `population_size` molecules drawn from `train_smiles`, until `budget` distinct molecules were scored (the starting
    population included; mol-ga never rescores a molecule). Its final population (the top `population_size` of
    everything scored, as `heapq.nlargest` selects it) is its result.
    """
    from mol_ga import default_ga
    from mol_ga.graph_ga.gen_candidates import graph_ga_blended_generation

    oracle = OracleLog(reward)

    def scoring_function(smiles: list[str]) -> list[float]:
        left = budget - len(oracle.evaluated)
        scores = oracle(smiles[:left])
        if len(smiles) > left:
            raise BudgetSpent
        return scores

    rng = random.Random(seed)
    start = rng.sample(train_smiles, population_size)
    try:
        default_ga(
            starting_population_smiles=start,
            scoring_function=scoring_function,
            max_generations=budget,  # the budget ends the run first
            offspring_size=offspring_size,
            offspring_gen_func=graph_ga_blended_generation,
            population_size=population_size,
            rng=rng,
        )
    except BudgetSpent:
        pass
    hits, curve = hit_curve(oracle.evaluated)
    population = [s for _, s in heapq.nlargest(population_size, [(r, s) for s, r in oracle.evaluated])]
    return {
        "nre": len(oracle.evaluated),
        "hits": hits,
        "curve": curve,
        **measure_samples(population, reward, train),
        "population_size": population_size,
        "offspring_size": offspring_size,
    }
