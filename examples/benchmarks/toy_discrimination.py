"""
Benchmark: does each negative model discriminate successes from failures? (toy task, CPU, offline)

BaNEL only helps when a region gives fresh successes a LOWER log-ratio log p_phi_k - log p_ref_k than fresh failures.
After every round this script draws a fresh sample of the posterior the new region acts on (p_theta filtered by the
earlier regions) and prints the AUC of that region's log-ratio between failures and successes (1.0: every failure
scores above every success; 0.5: no discrimination; below 0.5: the region rejects successes preferentially), the
share of successes and of failures the region rejects, and the posterior's acceptance and success rates.

The toy: 6-letter strings over "abcd" from a small Qwen2 that starts a string with "b" ~2% of the time; a success is
a string starting with "b".

    python examples/benchmarks/toy_discrimination.py --seeds 0 1 2
"""

import argparse
import statistics
import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig

from banel_trl import BanelCallback, BanelConfig, BanelTrainer
from banel_trl.testing import rare_b_proposal, starts_with_b


LENGTH = 6


def auc(failure_scores: list[float], success_scores: list[float]) -> float:
    """P(a failure scores above a success), ties counted half (Mann-Whitney)."""
    pairs = [(f > s) + 0.5 * (f == s) for f in failure_scores for s in success_scores]
    return sum(pairs) / len(pairs) if pairs else float("nan")


class DiscriminationProbe(BanelCallback):
    """Trainer callback: after each round, measure the new region on a fresh sample of the posterior before it."""

    def __init__(self, tokenizer, num_samples: int):
        self.tokenizer = tokenizer
        self.num_samples = num_samples
        self.rounds = []

    def on_round_end(self, args, state, control, trainer, metrics):
        posterior = trainer.posterior
        if posterior.regions[-1].round != metrics["round"]:
            return  # the round added no region (`RegionPolicy.min_successes`): nothing new to measure
        input_ids = torch.full((self.num_samples, 1), self.tokenizer.bos_token_id)
        proposal = posterior.propose(input_ids, torch.ones_like(input_ids), trainer.generation_config)
        earlier, new = proposal.log_ratios[:, :-1], proposal.log_ratios[:, -1]
        before = ~(earlier > posterior.thresholds[:-1]).any(dim=1)  # the posterior the new region acts on
        texts = self.tokenizer.batch_decode(proposal.completion_ids, skip_special_tokens=True)
        success = torch.tensor(starts_with_b(texts)).bool()
        inside = new > posterior.regions[-1].threshold
        fail_scores = new[before & ~success].tolist()
        success_scores = new[before & success].tolist()
        after = before & ~inside
        row = {
            "round": metrics["round"],
            "auc": auc(fail_scores, success_scores),
            "rejects_successes": (inside & before & success).sum().item() / max((before & success).sum().item(), 1),
            "rejects_failures": (inside & before & ~success).sum().item() / max((before & ~success).sum().item(), 1),
            "acceptance": after.float().mean().item(),
            "success_rate": (after & success).sum().item() / max(after.sum().item(), 1),
        }
        self.rounds.append(row)
        print("  " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def run(seed: int, options) -> dict:
    torch.manual_seed(seed)
    tokenizer, model = rare_b_proposal(seed=seed, length=LENGTH)
    probe = DiscriminationProbe(tokenizer, options.probe_samples)
    with tempfile.TemporaryDirectory() as output_dir:
        args = BanelConfig(
            output_dir=output_dir,
            max_reward_evaluations=options.budget,
            samples_per_round=options.samples_per_round,
            max_completion_length=LENGTH + 1,
            num_generations=32,
            generation_batch_size=64,
            num_train_epochs=options.epochs,
            learning_rate=options.lr,
            target_rejection_rate=options.target_rejection_rate,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            logging_strategy="no",
            seed=seed,
        )
        peft_config = LoraConfig(
            r=options.rank, lora_alpha=2 * options.rank, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        trainer = BanelTrainer(
            model,
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [""]}),
            processing_class=tokenizer,
            callbacks=[probe],
            peft_config=peft_config,
        )
        with torch.no_grad(), trainer.model.disable_adapter():
            base = trainer.model.generate(
                torch.full((options.probe_samples, 1), tokenizer.bos_token_id),
                generation_config=trainer.generation_config,
            )
        base_rate = statistics.mean(starts_with_b(tokenizer.batch_decode(base[:, 1:], skip_special_tokens=True)))
        print(f"seed {seed}: base success rate {base_rate:.4f}")
        trainer.train()
    final = probe.rounds[-1]
    return {
        "base": base_rate,
        "final": final["success_rate"],
        "mean_auc": statistics.mean(r["auc"] for r in probe.rounds),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--samples_per_round", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--target_rejection_rate", type=float, default=0.5)
    parser.add_argument("--probe_samples", type=int, default=4000)
    options = parser.parse_args()
    torch.set_num_threads(1)
    print(f"settings: {vars(options)}")
    results = [run(seed, options) for seed in options.seeds]
    gains = [r["final"] / r["base"] for r in results]
    print(f"mean AUC over rounds and seeds: {statistics.mean(r['mean_auc'] for r in results):.3f}")
    print(
        f"final posterior success rate: {statistics.mean(r['final'] for r in results):.4f} "
        f"(base {statistics.mean(r['base'] for r in results):.4f}); improvement per seed: "
        + ", ".join(f"{g:.1f}x" for g in gains)
    )


if __name__ == "__main__":
    main()
