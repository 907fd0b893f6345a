"""
How much of the relaxed first cut's gain the distilled generator keeps (harder variant), and whether an
importance-weighted refit recovers the rest. The probe runs the distilled loop's first two rounds of 750 NREs (round 1
relaxes the first cut on every seed measured, and the generator distilled from the relaxed cut is the final one of the
ten-round runs, whose later regions are all retracted), then measures on fresh samples, labelled outside the budget:

- `generator`: the distilled generator `q` (its success rate, and the share of its samples inside the cut);
- `exact`: the exact relaxed posterior, `p_theta`'s samples that the cut accepts (`base`: all of them);
- `refit`: `q` fit again from itself on `q`'s own samples inside the cut, resampled with weights `p_theta(x) / q(x)`
  (self-normalised), which makes them samples of the exact posterior in expectation; its effective sample size is
  printed.

    python examples/addition_attack/distillation_probe.py --seed 0 --results P.jsonl
"""

import argparse
import json
import math
import tempfile

import torch
import transformers
from datasets import Dataset
from evaluation import seeded_proposals

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.regions import BASE_ADAPTER
from banel_trl.scoring import sequence_log_probs
from banel_trl.tasks import addition_attack as task


BATCH = 4096


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", required=True, help="JSONL file the probe's figures are appended to")
    parser.add_argument("--generator_samples", type=int, default=98_304)
    parser.add_argument("--exact_proposals", type=int, default=327_680, help="p_theta's candidates for `exact`")
    parser.add_argument("--refit_proposals", type=int, default=16_384, help="q's candidates the refit draws from")
    return parser.parse_args(argv)


def draw(trainer, adapter: str, region, num_proposals: int, seed: int) -> list:
    """Batches of candidates of `adapter`, each with the cut's verdict (`Proposal.accepted`)."""
    batches = seeded_proposals(
        trainer.posterior, trainer.processing_class, trainer.generation_config, seed, BATCH, adapter, [region]
    )
    return [next(batches) for _ in range(math.ceil(num_proposals / BATCH))]


def label(trainer, proposals: list) -> torch.Tensor:
    """Whether each candidate succeeds, by the task's reward (outside the run's budget)."""
    tokenizer, reward = trainer.processing_class, trainer.reward_funcs[0]
    texts = [
        text
        for proposal in proposals
        for text in tokenizer.batch_decode(proposal.completion_ids, skip_special_tokens=True)
    ]
    return torch.tensor([value > 0 for value in reward(prompts=[tokenizer.bos_token] * len(texts), completions=texts)])


def rates(proposals: list, success: torch.Tensor, inside_only: bool) -> dict:
    """Success rate of the candidates (or of those inside the cut), with the counts it rests on."""
    accepted = torch.cat([proposal.accepted for proposal in proposals])
    kept = accepted if inside_only else torch.ones_like(accepted)
    return {
        "samples": int(kept.sum()),
        "successes": int((success & kept).sum()),
        "success_rate": float((success & kept).sum() / kept.sum().clamp(min=1)),
        "inside": float(accepted.float().mean()),
    }


def measured(trainer, adapter: str, region, num_proposals: int, seed: int) -> dict:
    """`rates` of every candidate of a fresh draw of `adapter`."""
    proposals = draw(trainer, adapter, region, num_proposals, seed)
    return rates(proposals, label(trainer, proposals), inside_only=False)


def refit(trainer, generator: str, region, num_proposals: int, seed: int) -> tuple[str, float]:
    """`generator` fit again on its own samples inside the cut, resampled by `p_theta / q`; returns it and the ESS."""
    posterior, examples, log_weights = trainer.posterior, [], []
    prompt_ids = trainer.sampler.prompt_ids(trainer.processing_class.bos_token)
    for proposal in draw(trainer, generator, region, num_proposals, seed):
        inside = proposal.accepted.nonzero().flatten()
        scores = sequence_log_probs(
            posterior.model, posterior.negative_models, [BASE_ADAPTER, generator], inside, proposal.prompt_ids,
            proposal.prompt_mask, proposal.completion_ids, proposal.completion_mask, posterior.temperature,
            posterior.scoring_batch_size,
        )  # fmt: skip
        log_weights.append(scores[0] - scores[1])
        lengths = proposal.completion_mask.sum(dim=1)
        examples += [
            {"prompt_ids": prompt_ids, "completion_ids": proposal.completion_ids[i, : lengths[i]].tolist()}
            for i in inside.tolist()
        ]
    weights = torch.cat(log_weights).softmax(dim=0)
    effective = float(1.0 / (weights**2).sum())
    rng = torch.Generator().manual_seed(seed)
    picked = torch.multinomial(weights, trainer.args.distillation_samples, replacement=True, generator=rng)
    name = f"{generator}_refit"
    trainer.fitter.fit_adapter(name, [examples[i] for i in picked], seed, 1, generator)
    return name, effective


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    tokenizer = task.load_tokenizer()
    reward = task.AdditionAttackReward(task.load_target(), tokenizer, allow_leading_zeros=False)
    with tempfile.TemporaryDirectory() as output_dir:
        config = BanelConfig(
            output_dir=output_dir, seed=args.seed, max_completion_length=2 * task.MAX_DIGITS + 4, report_to="none",
            disable_tqdm=True, logging_strategy="no", use_cpu=True, distill_posterior=True,
            max_reward_evaluations=1500, samples_per_round=750,
        )  # fmt: skip
        trainer = BanelTrainer(
            task.DEFAULT_ATTACKER_PATH, reward, args=config, processing_class=tokenizer,
            train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}),
        )  # fmt: skip
        trainer.train()
        region, generator = trainer.posterior.regions[0], trainer.posterior.proposal_adapter
        if not region.relaxed:
            raise SystemExit(
                f"Seed {args.seed}: round 1 did not relax the first cut; the probe measures a relaxed one."
            )
        refitted, effective = refit(trainer, generator, region, args.refit_proposals, args.seed + 7)
        exact = draw(trainer, BASE_ADAPTER, region, args.exact_proposals, args.seed + 2)
        exact_success = label(trainer, exact)
        result = {
            "seed": args.seed,
            "generator": measured(trainer, generator, region, args.generator_samples, args.seed + 1),
            "exact": rates(exact, exact_success, inside_only=True),
            "refit": measured(trainer, refitted, region, args.generator_samples, args.seed + 1),
            "refit_effective_samples": effective,
            "base": rates(exact, exact_success, inside_only=False),
        }
    print(json.dumps(result), flush=True)
    with open(args.results, "a") as file:
        file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
