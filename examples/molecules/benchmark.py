"""
Molecule design under an oracle budget: every method, every task, every seed, one budget of oracle calls.

Each (task, method, seed) result is appended to a JSONL file as soon as it is done, so an interrupted run resumes where
it stopped; `summarize.py` turns the file into the results table, the plot and the drawings of the best hits.

    python examples/molecules/prior.py                                                   # the prior, once (cached)
    python examples/molecules/benchmark.py --results docs/results/raw/molecules.jsonl    # 2 tasks x 7 methods x 3 seeds
    python examples/molecules/benchmark.py --quick --results /tmp/quick.jsonl            # 1 seed, small budget
"""

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time

import torch
import transformers


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from methods import run_banel, run_grpo, run_mol_ga, run_prior  # noqa: E402
from prior import DEFAULT_PRIOR_PATH, load_moses_train  # noqa: E402
from tasks import TASKS  # noqa: E402


METHODS = ["prior", "banel", "grpo", "reinvent", "rnd", "pseudo_count", "mol_ga"]


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--results", required=True, help="JSONL file the results are appended to")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=3000, help="oracle calls per method, task and seed")
    parser.add_argument("--eval_samples", type=int, default=10_000, help="fresh samples of each final generator")
    parser.add_argument(
        "--eval_max_proposals",
        type=int,
        default=30_000,
        help="BaNEL: stop drawing candidates for the posterior's fresh samples after this many",
    )
    parser.add_argument("--prior", default=DEFAULT_PRIOR_PATH, help="the prior's folder (built by prior.py)")
    parser.add_argument(
        "--train_smiles",
        help="text file of training SMILES, one a line, for novelty and mol-ga's start (default: MOSES train)",
    )
    parser.add_argument(
        "--grpo_learning_rates",
        nargs=4,
        type=float,
        default=[1e-3, 1e-4, 1e-4, 1e-3],
        metavar=("GRPO", "REINVENT", "RND", "PSEUDO_COUNT"),
        help="learning rates of the GRPOTrainer methods (the addition-attack harness's; REINVENT's usual 1e-4)",
    )
    parser.add_argument("--mol_ga_population", type=int, default=1000, help="mol-ga's starting and kept population")
    parser.add_argument("--mol_ga_offspring", type=int, default=200, help="mol-ga's offspring per generation")
    parser.add_argument(
        "--banel", nargs="*", default=[], metavar="KEY=VALUE", help="BanelConfig overrides on top of the defaults"
    )
    parser.add_argument("--tag", default="", help="label stored with each result (ablations)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a pipeline check: seed 0, budget 256, 500 evaluation samples, mol-ga population 64, offspring 32",
    )
    parser.add_argument("--threads", type=int, default=1)
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(
            seeds=[0],
            budget=256,
            eval_samples=500,
            eval_max_proposals=20_000,
            mol_ga_population=64,
            mol_ga_offspring=32,
        )
    return parser.parse_args(argv)


def done_runs(path: str) -> set:
    if not os.path.exists(path):
        return set()
    with open(path) as file:
        return {(r["task"], r["method"], r["seed"], r["tag"], r["budget"]) for r in map(json.loads, file)}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    if args.train_smiles:
        with open(args.train_smiles) as file:
            train_smiles = [line.strip() for line in file if line.strip()]
    else:
        train_smiles = load_moses_train()
    train = set(train_smiles)
    overrides = {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.banel)}
    learning_rates = dict(zip(["grpo", "reinvent", "rnd", "pseudo_count"], args.grpo_learning_rates, strict=True))
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    for seed in args.seeds:
        for task in args.tasks:
            reward = TASKS[task]
            for method in args.methods:
                # Checked before every run: several processes may share one results file.
                if (task, method, seed, args.tag, args.budget) in done_runs(args.results):
                    print(f"{task} {method} seed {seed}: already in {args.results}")
                    continue
                print(f"{task} {method} seed {seed} (budget {args.budget}) ...", flush=True)
                start, cpu_start = time.time(), time.process_time()
                if method == "prior":
                    result = run_prior(seed, reward, args.prior, args.budget, args.eval_samples, train)
                elif method == "banel":
                    with tempfile.TemporaryDirectory() as output_dir:
                        result = run_banel(
                            seed,
                            reward,
                            args.prior,
                            output_dir,
                            args.budget,
                            args.eval_samples,
                            args.eval_max_proposals,
                            train,
                            overrides,
                        )
                elif method == "mol_ga":
                    result = run_mol_ga(
                        seed, reward, args.budget, train_smiles, train, args.mol_ga_population, args.mol_ga_offspring
                    )
                else:
                    with tempfile.TemporaryDirectory() as output_dir:
                        result = run_grpo(
                            seed,
                            reward,
                            args.prior,
                            output_dir,
                            args.budget,
                            args.eval_samples,
                            train,
                            method,
                            learning_rates[method],
                        )
                result.update(
                    task=task,
                    method=method,
                    seed=seed,
                    tag=args.tag,
                    budget=args.budget,
                    seconds=time.time() - start,
                    cpu_seconds=time.process_time() - cpu_start,  # the wall time on a machine shared with no one
                    threads=args.threads,
                )
                print(
                    f"{task} {method} seed {seed}: {len(result['hits'])} distinct hits in {result['nre']} calls; "
                    f"final generator {result['success_rate']:.3g} ({result['successes']}/{result['samples']}, "
                    f"{len(result['eval_hits'])} distinct), {result['seconds']:.0f} s",
                    flush=True,
                )
                with open(args.results, "a") as file:
                    fcntl.flock(file, fcntl.LOCK_EX)  # one whole line per result, whoever else appends
                    file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
