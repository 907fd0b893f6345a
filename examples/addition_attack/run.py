"""
The addition-attack experiment of BaNEL (arXiv 2510.09596) at CPU scale: every method, every seed, one budget.

Each (method, seed) result is appended to a JSONL file as soon as it is done, so an interrupted run resumes where it
stopped; `report.py` turns the file into the results table and plot.

    python examples/addition_attack/run.py --results results/addition_attack.jsonl            # 7 methods x 5 seeds
    python examples/addition_attack/run.py --quick --results /tmp/quick.jsonl                  # 1 seed, small budget
    python examples/addition_attack/run.py --no_leading_zeros --methods banel --tag epochs=20 \
        --banel num_train_epochs=20                                                            # an ablation
"""

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time

import torch
import transformers

from banel_trl.tasks import addition_attack as task


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from banel import run_banel  # noqa: E402
from baselines import run_grpo, run_pretrained, run_rule_based, run_temperature  # noqa: E402
from evaluation import reference_pool  # noqa: E402


METHODS = ["pretrained", "banel", "grpo", "rnd", "pseudo_count", "temperature", "rule_based"]
CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--results", required=True, help="JSONL file the results are appended to")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=7500, help="reward evaluations per method and seed")
    parser.add_argument("--eval_samples", type=int, default=60_000, help="fresh samples to measure a success rate")
    parser.add_argument(
        "--eval_max_proposals",
        type=int,
        default=1_000_000,
        help="BaNEL: stop drawing posterior samples for evaluation after this many proposals",
    )
    parser.add_argument(
        "--pool_samples",
        type=int,
        default=200_000,
        help="pretrained samples in the reference pool that measures each region's AUC",
    )
    parser.add_argument("--pool_failures", type=int, default=20_000, help="failures of the pool kept for the AUC")
    parser.add_argument(
        "--proposal_pool_samples",
        type=int,
        default=0,
        help="BaNEL: fresh samples of each distilled proposal, labelled outside the budget, that measure the AUC of "
        "the region fit against it (0: not measured)",
    )
    parser.add_argument("--no_leading_zeros", action="store_true", help="the harder variant: leading zeros earn 0")
    parser.add_argument(
        "--grpo_learning_rates",
        nargs=3,
        type=float,
        default=[1e-3, 1e-4, 1e-3],
        metavar=("GRPO", "RND", "PSEUDO_COUNT"),
        help="learning rates of the GRPOTrainer methods: the better of 1e-4 and 1e-3 on seed 0",
    )
    parser.add_argument(
        "--banel",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="BanelConfig overrides on top of the shipped defaults",
    )
    parser.add_argument("--tag", default="", help="label stored with each result (ablations)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="defaults for a pipeline check: seed 0, budget 1500, 10k evaluation samples, 50k pool, "
        "and BaNEL's first region at 0.9",
    )
    parser.add_argument("--cache_dir", default=CACHE_DIR, help="where the reference pool is cached")
    parser.add_argument(
        "--keep_runs",
        metavar="DIR",
        help="keep each BaNEL run's output_dir (ledger, regions) under DIR instead of discarding it",
    )
    parser.add_argument("--threads", type=int, default=1)
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(
            seeds=[0], budget=1500, eval_samples=10_000, eval_max_proposals=100_000, pool_samples=50_000
        )
    return parser.parse_args(argv)


def done_runs(path: str) -> set:
    if not os.path.exists(path):
        return set()
    with open(path) as file:
        return {(r["method"], r["seed"], r["variant"], r["tag"], r["budget"]) for r in map(json.loads, file)}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    variant = "no_leading_zeros" if args.no_leading_zeros else "leading_zeros"
    tokenizer = task.load_tokenizer()
    reward = task.AdditionAttackReward(task.load_target(), tokenizer, allow_leading_zeros=not args.no_leading_zeros)
    # The shipped schedule at any budget: ten rounds (two with `--banel distill_posterior=false`).
    overrides = {"max_reward_evaluations": args.budget}
    if args.quick:  # a pipeline check: a first region at 0.9, so that its posterior is sampled within the time
        overrides["first_region_rejection_rate"] = 0.9
    overrides.update({key: parse_value(value) for key, value in (item.split("=", 1) for item in args.banel)})
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    pool = None
    for seed in args.seeds:
        for method in args.methods:
            # Checked before every run: several processes may share one results file (e.g. seeds in opposite orders).
            if (method, seed, variant, args.tag, args.budget) in done_runs(args.results):
                print(f"{method} seed {seed}: already in {args.results}")
                continue
            print(f"{method} seed {seed} ({variant}, budget {args.budget}) ...", flush=True)
            start = time.time()
            if method == "banel":
                pool = pool or reference_pool(
                    tokenizer, task.load_attacker(), reward, args.pool_samples, args.pool_failures, args.cache_dir
                )
                name = f"banel_{variant}_{args.tag}_seed{seed}".replace("__", "_")
                kept = contextlib.nullcontext(os.path.join(args.keep_runs, name)) if args.keep_runs else None
                with kept or tempfile.TemporaryDirectory() as output_dir:
                    result = run_banel(
                        seed,
                        reward,
                        tokenizer,
                        pool,
                        output_dir,
                        args.eval_samples,
                        args.eval_max_proposals,
                        overrides,
                        args.proposal_pool_samples,
                    )
                result["overrides"] = overrides
            elif method in ("grpo", "rnd", "pseudo_count"):
                with tempfile.TemporaryDirectory() as output_dir:
                    result = run_grpo(
                        seed,
                        reward,
                        tokenizer,
                        output_dir,
                        args.budget,
                        args.eval_samples,
                        bonus=None if method == "grpo" else method,
                        learning_rate=dict(
                            zip(["grpo", "rnd", "pseudo_count"], args.grpo_learning_rates, strict=True)
                        )[method],
                    )
            elif method == "temperature":
                result = run_temperature(seed, reward, tokenizer, args.budget, args.eval_samples)
            elif method == "pretrained":
                result = run_pretrained(seed, reward, tokenizer, args.eval_samples)
            else:
                result = run_rule_based(seed, reward, tokenizer, args.eval_samples)
            result.update(
                variant=variant, tag=args.tag, budget=args.budget, seconds=time.time() - start, threads=args.threads
            )
            print(
                f"{method} seed {seed}: success rate {result['success_rate']:.3g} "
                f"({result['successes']}/{result['samples']}), {result['nre']} NREs, {result['seconds']:.0f} s",
                flush=True,
            )
            with open(args.results, "a") as file:
                fcntl.flock(file, fcntl.LOCK_EX)  # one whole line per result, whoever else appends
                file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
