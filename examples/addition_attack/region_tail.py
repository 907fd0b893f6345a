"""
How much one region gains at each rejection rate: fit BaNEL's first region on `--num_failures` samples of the
pretrained attacker (one round), score the reference pool, and print, for each rate, the share of the pool's
successes the region keeps when its threshold rejects that share of the pool's failures, the gain this gives
(kept / (1 - rate)) and how many of the kept successes have a leading-zero operand. `--kappas` scores the region as
`kappa * log p_phi - log p_theta` too (the reviewed paper's `p_theta / p_phi^kappa`; 1 is BaNEL's log-ratio), one
result per exponent, from the same fit. `--negative_model` is `BanelConfig.negative_model`: `lora` (BaNEL's adapter
beside the frozen attacker), or as the paper has it, a separate model: `copy` fine-tunes every weight of a copy of the
attacker, `scratch` trains the attacker's architecture from random weights.

    python examples/addition_attack/region_tail.py --num_failures 3750 --seed 0 --results tail.jsonl
    python examples/addition_attack/region_tail.py --negative_model scratch --epochs 20 --seed 0 --results tail.jsonl
    python examples/addition_attack/region_tail.py --summarize tail.jsonl    # a table per variant, model, epochs, kappa
"""

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
from collections import defaultdict

import torch
from datasets import Dataset
from peft import LoraConfig

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.scoring import completion_log_probs
from banel_trl.tasks import addition_attack as task


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluation import auc, encode_queries, reference_pool  # noqa: E402
from run import CACHE_DIR  # noqa: E402


MODEL_NAMES = {"copy": "a full fine-tune of a copy", "scratch": "a model trained from scratch"}


def summarize(path: str) -> str:
    """
    Per variant, negative model (LoRA rank), epoch count and exponent: kept share of successes (and gain) per seed at
    each rejection rate, and the AUC.
    """
    groups = defaultdict(list)
    with open(path) as file:
        for result in map(json.loads, file):
            model = result.get("negative_model", "lora")
            model = f"LoRA rank {result.get('lora_rank', 16)}" if model == "lora" else MODEL_NAMES[model]
            model += f" {result['negative_model_config']}" if result.get("negative_model_config") else ""
            model += ", per token" if result.get("length_normalize") else ""
            groups[result["variant"], model, result["epochs"], result.get("kappa", 1.0)].append(result)
    tables = []
    for (variant, model, epochs, kappa), results in sorted(groups.items()):
        results.sort(key=lambda result: result["seed"])
        cost = ""
        if "fit_seconds" in results[0]:
            seconds = statistics.mean(r["fit_seconds"] for r in results)
            cost = f", {results[0]['trainable_parameters']:,} trained parameters, {seconds:.0f} s per fit"
        lines = [
            f"{variant}, {model}, {epochs:g} epochs, kappa {kappa:g}, {results[0]['num_failures']} failures fit{cost}",
            "",
            "| failures rejected | " + " | ".join(f"seed {r['seed']}" for r in results) + " | mean gain |",
            "|---|" + "---|" * (len(results) + 1),
        ]
        for i, rate in enumerate(results[0]["rates"]):
            cells = [f"{r['rates'][i]['keeps_successes']:.2f} ({r['rates'][i]['gain']:.1f}x)" for r in results]
            mean_gain = statistics.mean(r["rates"][i]["gain"] for r in results)
            lines.append(f"| {rate['rejects_failures']:.1%} | " + " | ".join(cells) + f" | {mean_gain:.1f}x |")
        lines.append("| AUC | " + " | ".join(f"{r['auc']:.2f}" for r in results) + " | |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_failures", type=int, default=1500, help="NREs of the single round")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.9, 0.99, 0.995, 0.998, 0.999])
    parser.add_argument(
        "--lora_rank",
        type=int,
        default=16,
        help="rank of the negative model's LoRA on every linear layer (16: BaNEL's default; 64, the attacker's width: "
        "every update of its linear layers, a full fine-tune of them)",
    )
    parser.add_argument(
        "--negative_model",
        choices=["lora", "copy", "scratch"],
        default="lora",
        help="BanelConfig.negative_model: lora, BaNEL's adapter beside the frozen attacker; copy, every weight of a "
        "copy of the attacker; scratch, the attacker's architecture from random weights (separate models, as in the paper)",
    )
    parser.add_argument(
        "--negative_model_config",
        type=json.loads,
        help="BanelConfig.negative_model_config (JSON), with --negative_model scratch: a smaller model, e.g. "
        "'{\"num_hidden_layers\": 1}'",
    )
    parser.add_argument("--kappas", type=float, nargs="+", default=[1.0], help="exponents of p_phi in the score")
    parser.add_argument(
        "--length_normalize",
        action="store_true",
        help="also score per token (each log-likelihood over the completion's length)",
    )
    parser.add_argument("--pool_samples", type=int, default=200_000)
    parser.add_argument("--pool_failures", type=int, default=20_000)
    parser.add_argument("--no_leading_zeros", action="store_true", help="the harder variant: leading zeros earn 0")
    parser.add_argument("--cache_dir", default=CACHE_DIR)
    parser.add_argument("--results", help="JSONL file the result is appended to")
    parser.add_argument("--summarize", metavar="RESULTS", help="print the tables of a results file and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return
    torch.set_num_threads(1)

    tokenizer = task.load_tokenizer()
    reward = task.AdditionAttackReward(task.load_target(), tokenizer, allow_leading_zeros=not args.no_leading_zeros)
    pool = reference_pool(
        tokenizer, task.load_attacker(), reward, args.pool_samples, args.pool_failures, args.cache_dir
    )
    config = BanelConfig(
        output_dir=tempfile.mkdtemp(),
        seed=args.seed,
        max_completion_length=2 * task.MAX_DIGITS + 4,
        max_reward_evaluations=args.num_failures,
        samples_per_round=args.num_failures,
        num_train_epochs=args.epochs,
        negative_model=args.negative_model,
        negative_model_config=args.negative_model_config,
        generation_batch_size=4096,
        per_device_eval_batch_size=4096,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = BanelTrainer(
        task.DEFAULT_ATTACKER_PATH,
        reward,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}),
        peft_config=LoraConfig(
            r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM"
        ),
    )
    trainer.train()
    batches = {kind: encode_queries(tokenizer, pool[kind]) for kind in ("successes", "failures")}
    with trainer.model.disable_adapter():
        base = {kind: log_likelihoods(trainer.model, batch) for kind, batch in batches.items()}
    cost = {"fit_seconds": sum(entry.get("train_runtime", 0.0) for entry in trainer.state.log_history)}
    models = trainer.posterior.negative_models
    parameters = (
        models["negative_model_0"].num_parameters() if models else trainer.model.get_nb_trainable_parameters()[0]
    )
    cost["trainable_parameters"] = parameters
    # log p_phi = log-ratio + log p_theta
    negative = {
        kind: trainer.posterior.log_ratios(**batch)[:, 0].float() + base[kind] for kind, batch in batches.items()
    }
    lengths = {kind: batch["completion_mask"].sum(dim=1).float() for kind, batch in batches.items()}
    for kappa, per_token in itertools.product(args.kappas, [False, True] if args.length_normalize else [False]):
        scores = {
            kind: (kappa * negative[kind] - base[kind]) / (lengths[kind] if per_token else 1.0) for kind in batches
        }
        result = tail_result(args, kappa, scores, pool) | cost | {"length_normalize": per_token}
        print(json.dumps(result))
        if args.results:
            with open(args.results, "a") as file:
                file.write(json.dumps(result) + "\n")


def log_likelihoods(model, batch: dict, chunk: int = 4096) -> torch.Tensor:
    """`log` of `model`'s likelihood of each encoded pool sample (its completion given the prompt), in chunks of rows."""
    model.eval()
    values = []
    with torch.no_grad():
        for start in range(0, len(batch["prompt_ids"]), chunk):
            rows = {key: tensor[start : start + chunk] for key, tensor in batch.items()}
            values.append(completion_log_probs(model, **rows).sum(dim=1))
    return torch.cat(values).float()


def tail_result(args, kappa: float, scores: dict, pool: dict) -> dict:
    """The AUC of `scores`, and what a threshold rejecting each rate of the pool's failures keeps of its successes."""
    result = {
        "num_failures": args.num_failures,
        "epochs": args.epochs,
        "negative_model": args.negative_model,
        "lora_rank": args.lora_rank,
        "negative_model_config": args.negative_model_config,
        "kappa": kappa,
        "seed": args.seed,
        "variant": "no_leading_zeros" if args.no_leading_zeros else "leading_zeros",
        "auc": auc(scores["failures"], scores["successes"]),
        "rates": [],
    }
    for rate in args.rates:
        threshold = torch.quantile(scores["failures"], 1.0 - rate)
        kept = [
            query for query, score in zip(pool["successes"], scores["successes"], strict=True) if score <= threshold
        ]
        result["rates"].append(
            {
                "rejects_failures": rate,
                "keeps_successes": len(kept) / len(pool["successes"]),
                "gain": len(kept) / len(pool["successes"]) / (1.0 - rate),
                "kept_with_leading_zero": sum(any(map(task.has_leading_zero, task.parse_query(q))) for q in kept),
                "kept": len(kept),
            }
        )
    return result


if __name__ == "__main__":
    main()
