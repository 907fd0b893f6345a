"""
What the second region should be compared with, measured on a finished two-round BaNEL run (`--run_dir`, an
`output_dir` of `run.py --keep_runs`): its first region defines the posterior, whose failures of round 1 are in the
ledger. The probe draws fresh samples of that posterior, fits LoRA models on round 1's failures, on every failure, and
on unlabeled posterior samples (the reference), then prints, on held-out labeled posterior samples, the AUC and the
share of successes each log-ratio keeps when it rejects 50/80/90% of the failures. The fits use a plain AdamW loop
with the trainer's recipe (LoRA rank 16, 5 epochs, batch 64, learning rate 1e-3 decaying linearly), the same for all.

    python examples/addition_attack/reference_probe.py --run_dir runs/banel_leading_zeros_seed1
"""

import argparse
import json
import os
import random
import sys

import torch

from banel_trl import BanelPosterior, RejectionRegion
from banel_trl.models import default_peft_config
from banel_trl.scoring import completion_log_probs
from banel_trl.tasks import addition_attack as task


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluation import auc, encode_queries  # noqa: E402


def sample_posterior(posterior, tokenizer, num_samples: int, seed: int, batch_size: int = 8192) -> list[str]:
    generation_config = posterior.generation_config
    generation_config.update(
        do_sample=True,
        max_new_tokens=2 * task.MAX_DIGITS + 4,
        top_k=0,
        top_p=1.0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    bos = torch.full((batch_size, 1), tokenizer.bos_token_id)
    texts = []
    while len(texts) < num_samples:
        proposal = posterior.propose(bos, torch.ones_like(bos), generation_config)
        texts += tokenizer.batch_decode(proposal.completion_ids[proposal.accepted], skip_special_tokens=True)
    return texts[:num_samples]


def fit_adapter(
    model,
    tokenizer,
    name: str,
    texts: list[str],
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> None:
    torch.manual_seed(seed)
    model.add_adapter(name, default_peft_config(model))
    model.set_adapter(name)
    parameters = [p for n, p in model.named_parameters() if f".{name}." in n]
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    total = epochs * -(-len(texts) // batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    model.train()
    order, rng = list(texts), random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = encode_queries(tokenizer, order[start : start + batch_size])
            loss = -completion_log_probs(model, **batch).sum() / batch["completion_mask"].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    for parameter in parameters:
        parameter.requires_grad_(False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--reference_samples", type=int, default=3500, help="unlabeled posterior samples to fit on")
    parser.add_argument("--eval_samples", type=int, default=3500, help="labeled posterior samples to score")
    parser.add_argument("--no_leading_zeros", action="store_true")
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    tokenizer = task.load_tokenizer()
    reward = task.AdditionAttackReward(task.load_target(), tokenizer, allow_leading_zeros=not args.no_leading_zeros)
    posterior = BanelPosterior.from_pretrained(args.run_dir, model=task.DEFAULT_ATTACKER_PATH, scoring_batch_size=4096)
    posterior.regions = posterior.regions[:1]  # the posterior round 1 sampled
    with open(os.path.join(args.run_dir, "banel_ledger.jsonl")) as file:
        records = [line for line in map(json.loads, file) if "reward" in line]
    failures = {k: [r["completion"] for r in records if r["round"] == k and not r["success"]] for k in (0, 1)}
    texts = sample_posterior(posterior, tokenizer, args.reference_samples + args.eval_samples, args.seed)
    reference, held_out = texts[: args.reference_samples], texts[args.reference_samples :]
    labels = torch.tensor(reward(completions=held_out)) > 0

    fits = {"round_1_failures": failures[1], "all_failures": failures[0] + failures[1], "reference": reference}
    for name, examples in fits.items():
        fit_adapter(posterior.model, tokenizer, name, examples)
    batch = encode_queries(tokenizer, held_out)
    scores = {name: posterior.log_ratios(**batch, regions=[RejectionRegion(name, 0.0, 1)])[:, 0] for name in fits}
    print(
        json.dumps(
            {
                "run_dir": args.run_dir,
                "fit_sizes": {name: len(v) for name, v in fits.items()},
                "eval_samples": len(held_out),
                "eval_successes": int(labels.sum()),
            }
        )
    )
    for label, score in [
        ("round 1 failures vs p_theta", scores["round_1_failures"]),
        ("all failures vs p_theta", scores["all_failures"]),
        ("round 1 failures vs reference", scores["round_1_failures"] - scores["reference"]),
        ("all failures vs reference", scores["all_failures"] - scores["reference"]),
    ]:
        row = {"log_ratio": label, "auc": round(auc(score[~labels], score[labels]), 3)}
        for rate in (0.5, 0.8, 0.9):
            threshold = torch.quantile(score[~labels].float(), 1 - rate)
            row[f"keeps_successes@{rate}"] = round((score[labels] <= threshold).float().mean().item(), 3)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
