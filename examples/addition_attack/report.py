"""
Summarise `run.py` results: a markdown table per (variant, tag) and a plot of success rate against NREs spent, and
BaNEL's compute scaling (improvement against the epochs of each negative fit, one tag per epoch count) beside the
paper's Figure 10.

    python examples/addition_attack/report.py results/addition_attack.jsonl --plot docs/results/addition_attack.png
    python examples/addition_attack/report.py results/no_lz.jsonl --variant no_leading_zeros \
        --scaling_plot docs/results/compute_scaling.png --scaling_tags lora:5=relaxed95_resumed \
        --scaling_probe docs/results/raw/addition_attack_negative_models.jsonl
"""

import argparse
import json
import math
import statistics
from collections import defaultdict

from banel_trl.tasks.addition_attack import has_leading_zero, parse_query


def load(path: str) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def carry_chain(query: str) -> int:
    """Length of the longest run of consecutive carries when adding the query's operands."""
    a, b = (int(operand) for operand in parse_query(query))
    longest = run = carry = 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        run = run + 1 if carry else 0
        longest = max(longest, run)
        a, b = a // 10, b // 10
    return longest


def failure_modes(queries: list[str]) -> dict:
    valid = [q for q in queries if parse_query(q)]
    if not valid:
        return {"leading_zero": float("nan"), "carry_chain_2plus": float("nan")}
    return {
        "leading_zero": statistics.mean(any(map(has_leading_zero, parse_query(q))) for q in valid),
        "carry_chain_2plus": statistics.mean(carry_chain(q) >= 2 for q in valid),
    }


def base_rate(results: list[dict], variant: str, tag: str, pretrained_mean: float | None = None) -> float:
    """
    Mean success rate of the pretrained runs of `variant` and `tag` (else of the untagged ones), or `pretrained_mean`
    for a file that has no pretrained run.
    """
    for wanted in (tag, ""):
        rates = [
            r["success_rate"]
            for r in results
            if (r["method"], r["variant"], r["tag"]) == ("pretrained", variant, wanted)
        ]
        if rates:
            return statistics.mean(rates)
    return pretrained_mean or float("nan")


def table(results: list[dict], pretrained_mean: float | None = None) -> str:
    """
    One markdown table per (variant, tag). Improvements are over the mean of the pretrained runs of the same variant
    and tag (else of the untagged ones), or over `pretrained_mean` for a file that has no pretrained run.
    """
    groups = defaultdict(list)
    for result in results:
        groups[(result["variant"], result["tag"], result["method"])].append(result)
    lines = []
    for variant, tag in sorted({key[:2] for key in groups}):
        base_mean = base_rate(results, variant, tag, pretrained_mean)
        lines += [
            f"\n{variant}{' / ' + tag if tag else ''} (pretrained mean {base_mean:.3g})\n",
            "| method | seeds | mean | median | std | improvement (mean / pretrained mean) "
            "| min seed improvement | distinct successful queries (per seed) | NREs | eval samples "
            "| successes with leading zero | with carry chain >= 2 | minutes/seed |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for (v, t, method), runs in sorted(groups.items(), key=lambda item: item[0]):
            if (v, t) != (variant, tag):
                continue
            rates = [r["success_rate"] for r in runs]
            # No pretrained success in a small evaluation leaves the improvement undefined, not infinite.
            improvement = (
                (lambda rate, base=base_mean: f"{rate / base:.1f}x") if base_mean > 0 else (lambda rate: "n/a")
            )
            modes = failure_modes([q for r in runs for q in r.get("queries", [])])
            lines.append(
                f"| {method} | {len(runs)} | {statistics.mean(rates):.3g} | {statistics.median(rates):.3g} | "
                f"{statistics.pstdev(rates):.3g} | {improvement(statistics.mean(rates))} | "
                f"{improvement(min(rates))} | {statistics.mean(len(set(r.get('queries', []))) for r in runs):.0f} | "
                f"{statistics.mean(r['nre'] for r in runs):.0f} | "
                f"{statistics.mean(r['samples'] for r in runs):.0f} | {modes['leading_zero']:.2f} | "
                f"{modes['carry_chain_2plus']:.2f} | {statistics.mean(r['seconds'] for r in runs) / 60:.1f} |"
            )
    return "\n".join(lines)


def discrimination_table(results: list[dict]) -> str:
    """BaNEL's regions, round by round, on the reference pool: mean over seeds of AUC and rejection shares."""
    rounds = defaultdict(list)
    for result in results:
        for row in result.get("rounds", []):
            rounds[(result["variant"], result["tag"], row["round"])].append(row)
    lines = [
        "| variant / tag | round | seeds | AUC | successes rejected | failures rejected | posterior acceptance "
        "| success rate of the round's paid samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (variant, tag, k), rows in sorted(rounds.items()):
        # A region's AUC is undefined (NaN) once no pool success is left, and a round may add no region: average
        # over the seeds where it is defined.
        mean = {
            key: statistics.mean([r[key] for r in rows if not math.isnan(r.get(key, math.nan))] or [math.nan])
            for key in ("auc", "rejects_successes", "rejects_failures", "acceptance_rate", "round_success_rate")
        }
        lines.append(
            f"| {variant}{' / ' + tag if tag else ''} | {k} | {len(rows)} | {mean['auc']:.3f} | "
            f"{mean['rejects_successes']:.3f} | {mean['rejects_failures']:.3f} | "
            f"{mean['acceptance_rate']:.2e} | {mean['round_success_rate']:.4f} |"
        )
    return "\n".join(lines)


def per_seed_table(results: list[dict], pretrained_mean: float) -> str:
    """
    BaNEL per tag and seed: each region on the reference pool, round 1's paid samples, and the final posterior with its
    improvement over `pretrained_mean`.
    """
    lines = [
        "| tag | seed | round 0 region AUC (successes / failures rejected) | round 1 paid samples: success rate "
        "(successes) | round 1 region AUC (successes / failures rejected) | final success rate (successes / "
        "eval samples) | improvement | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in sorted(results, key=lambda r: (r["tag"], r["seed"])):
        if result["method"] != "banel" or len(result.get("rounds", [])) < 2:
            continue
        cells = [
            f"{r['auc']:.2f} ({r['rejects_successes']:.2f} / {r['rejects_failures']:.3f})"
            if "auc" in r
            else "no region"
            for r in result["rounds"][:2]
        ]
        paid = result["rounds"][1]
        gain = result["success_rate"] / pretrained_mean if pretrained_mean > 0 else float("nan")
        improvement = "n/a" if gain != gain else f"{gain:.0f}x" if gain >= 10 else f"{gain:.1f}x"
        lines.append(
            f"| {result['tag'] or '-'} | {result['seed']} | {cells[0]} | {paid['round_success_rate']:.4f} "
            f"({paid['successes'] - result['rounds'][0]['successes']}) | {cells[1]} | "
            f"{result['success_rate']:.4f} ({result['successes']} / {result['samples']}) | "
            f"{improvement} | {result['seconds'] / 60:.0f} |"
        )
    return "\n".join(lines)


def cost_table(results: list[dict]) -> str:
    """
    BaNEL's generation cost per run, in candidates proposed per NRE: its rounds' (each round's paid samples and
    repeats over its acceptance), its distillations' and the final measurement's; the most any distillation proposed
    per sample it kept; and the distinct successes it paid for and found among the measurement's samples.
    """
    lines = [
        "| variant / tag | seed | proposals per NRE: rounds + distillations + measurement = total "
        "| most proposals per distillation sample | distinct successes: paid / in the measurement | minutes |",
        "|---|---|---|---|---|---|",
    ]
    for result in sorted(results, key=lambda r: (r["variant"], r["tag"], r["seed"])):
        if result["method"] != "banel" or not result.get("rounds"):
            continue
        rows, nre = result["rounds"], result["nre"]
        paid = [row["nre"] - before for row, before in zip(rows, [0] + [r["nre"] for r in rows[:-1]], strict=True)]
        rounds = sum(
            (n + row.get("repeats", 0)) / max(row["acceptance_rate"], 1e-12) for n, row in zip(paid, rows, strict=True)
        )
        distilled = sum(row.get("distillation/proposals", 0) for row in rows)
        worst = max((row.get("distillation/proposals_per_sample", 0.0) for row in rows), default=0.0)
        total = rounds + distilled + result["proposed"]
        lines.append(
            f"| {result['variant']}{' / ' + result['tag'] if result['tag'] else ''} | {result['seed']} | "
            f"{rounds / nre:.1f} + {distilled / nre:.1f} + {result['proposed'] / nre:.1f} = {total / nre:.1f} | "
            f"{worst:.1f} | {len(set(result['training_successes']))} / {len(set(result.get('queries', [])))} | "
            f"{result['seconds'] / 60:.0f} |"
        )
    return "\n".join(lines)


# The paper's Figure 10 (leading zeros disallowed, 7,500 NREs, 5 seeds), read from the published plot: BaNEL's
# improvement over the base model by epochs per negative fit, and its baselines' improvements.
PAPER_SCALING = {1: 4.4, 2: 10, 3: 12, 5: 12, 10: 84, 20: 38, 50: 6, 100: 68}
PAPER_BASELINES = {"rnd": 2.1, "pseudo_count": 1.45}
FLOOR = 1e-5  # a success rate of 0 is drawn here, at the bottom of the log axis


def plot(results: list[dict], path: str, variant: str = "leading_zeros", tag: str = "") -> None:
    """Mean success rate of each method's training-time samples against NREs spent (final evaluation dashed); zero
    rates are drawn at the bottom of the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9.5, 4.5))
    methods = defaultdict(list)
    for result in results:
        if result["variant"] == variant and result["tag"] == tag:
            methods[result["method"]].append(result)
    for index, (method, runs) in enumerate(sorted(methods.items())):
        color = f"C{index}"
        final = statistics.mean(r["success_rate"] for r in runs)
        curves = [r["curve"] for r in runs if r["curve"]]
        if curves:
            # Average the seeds' curves on NRE bins of the curve's own resolution (GRPO: 750-NRE windows).
            bins = defaultdict(list)
            for curve in curves:
                for nre, rate in curve:
                    bins[-(-nre // 750) * 750].append(rate)
            xs = sorted(bins)
            axis.plot(
                xs,
                [max(statistics.mean(bins[x]), FLOOR) for x in xs],
                color=color,
                marker="o",
                ms=3,
                label=f"{method} (samples while training)",
            )
        axis.axhline(max(final, FLOOR), color=color, ls="--", lw=1, label=f"{method} final ({final:.2g})")
    axis.set_yscale("log")
    axis.set_ylim(FLOOR / 2, 1.5)
    axis.set_xlabel("reward evaluations (NREs)")
    axis.set_ylabel("success rate")
    axis.set_title(f"Addition attack ({variant.replace('_', ' ')}), mean over seeds")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: no curve hidden
    figure.tight_layout()
    figure.savefig(path, dpi=120)


MODEL_COLORS = {"lora": "C0", "scratch": "C1", "copy": "C2"}
GAIN_FLOOR = 0.1  # a gain of 0 (no success kept) is drawn here, at the bottom of the log axis


def scaling_gains(results: list[dict], series: dict[str, dict[float, str]], variant: str, base: float) -> dict:
    """
    BaNEL's runs per seed, as `(seed, improvement over base, successes, samples)`, for each negative model and epoch
    count of `series` (their tags). With no pretrained success (`base` 0) the improvement is undefined: NaN.
    """
    return {
        (model, epochs): sorted(
            (r["seed"], r["success_rate"] / base if base else float("nan"), r["successes"], r["samples"])
            for r in results
            if (r["method"], r["variant"], r["tag"]) == ("banel", variant, tag)
        )
        for model, tags in series.items()
        for epochs, tag in sorted(tags.items())
    }


def times(gain: float) -> str:
    """An improvement as the tables print it; `n/a` where it is undefined (no pretrained success)."""
    return f"{gain:.1f}x" if math.isfinite(gain) else "n/a"


def scaling_table(gains: dict) -> str:
    """The compute-scaling table: each negative model's end-to-end improvement per epoch count, beside the paper's."""
    lines = [
        "| negative model | epochs per fit | seeds | improvement per seed (successes / samples) | mean | paper (Figure 10) |",
        "|---|---|---|---|---|---|",
    ]
    for (model, epochs), per_seed in gains.items():
        seeds = ", ".join(str(seed) for seed, *_ in per_seed)
        values = ", ".join(f"{times(gain)} ({hits} / {samples:,})" for _, gain, hits, samples in per_seed)
        mean = statistics.mean(gain for _, gain, *_ in per_seed) if per_seed else float("nan")
        paper = f"{PAPER_SCALING[epochs]:g}x" if epochs in PAPER_SCALING else ""
        lines.append(f"| {model} | {epochs:g} | {seeds} | {values} | {times(mean)} | {paper} |")
    return "\n".join(lines)


def scaling_plot(
    results: list[dict],
    path: str,
    series: dict[str, dict[float, str]],
    variant: str,
    base: float,
    probe: list[dict] | None = None,
    cut: tuple[float, float] = (0.995, 1.0),
) -> None:
    """
    BaNEL's improvement over `base` against the epochs of each negative fit, beside the paper's Figure 10: end to end
    for each negative model of `series` (its run tag per epoch count; each seed and the mean), and with `probe`
    (`region_tail.py` results) the first region's mean gain at `cut` (rate of failures rejected, kappa) for each
    negative model, dashed (a gain of 0 at the bottom of the axis). RND and pseudo-count as horizontal lines, ours solid and the paper's dotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.5, 4.5))
    means = defaultdict(list)  # per negative model: (epochs, mean gain), for the epoch counts that have runs
    for (model, epochs), per_seed in scaling_gains(results, series, variant, base).items():
        gains = [gain for _, gain, *_ in per_seed]
        if gains:
            axis.scatter([epochs] * len(gains), gains, color=MODEL_COLORS[model], s=12, alpha=0.5)
            means[model].append((epochs, statistics.mean(gains)))
    for model, points in means.items():
        axis.plot(*zip(*points, strict=True), color=MODEL_COLORS[model], marker="o", label=f"{model}, end to end")
    gains = defaultdict(list)
    for r in probe or []:
        rates = {rate["rejects_failures"]: rate["gain"] for rate in r["rates"]}
        if r["variant"] == variant and r["kappa"] == cut[1] and cut[0] in rates:
            gains[r["negative_model"], r["epochs"]].append(rates[cut[0]])
    for model in MODEL_COLORS:
        points = sorted(
            (epochs, max(statistics.mean(g), GAIN_FLOOR)) for (name, epochs), g in gains.items() if name == model
        )
        if points:
            label = f"{model}, region 0 at {cut[0]:.1%} (kappa {cut[1]:g}), probe"
            axis.plot(*zip(*points, strict=True), color=MODEL_COLORS[model], marker="^", ls="--", label=label)
    axis.plot(*zip(*PAPER_SCALING.items(), strict=True), color="C3", marker="s", ls=":", label="BaNEL, paper")
    for index, method in enumerate(PAPER_BASELINES):
        rates = [r["success_rate"] for r in results if (r["method"], r["variant"]) == (method, variant)]
        color = f"C{index + 4}"
        if rates and base:  # no pretrained success: no improvement to draw
            gain = statistics.mean(rates) / base
            axis.axhline(gain, color=color, lw=1, label=f"{method} here ({gain:.1f}x)")
        paper = PAPER_BASELINES[method]
        axis.axhline(paper, color=color, lw=1, ls=":", label=f"{method}, paper ({paper:g}x)")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_ylim(GAIN_FLOOR / 1.5, 150)
    axis.set_xlabel("epochs per negative fit")
    axis.set_ylabel("improvement over the base model")
    axis.set_title(f"Compute scaling, addition attack ({variant.replace('_', ' ')})")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("results")
    parser.add_argument("--plot", help="PNG path for the success-rate-vs-NREs plot")
    parser.add_argument("--variant", default="leading_zeros")
    parser.add_argument("--tag", default="")
    parser.add_argument(
        "--pretrained_mean",
        type=float,
        help="base success rate for the improvements when the file has no pretrained run",
    )
    parser.add_argument("--scaling_plot", help="PNG path for BaNEL's improvement against epochs per negative fit")
    parser.add_argument(
        "--scaling_tags",
        nargs="+",
        default=[],
        metavar="MODEL:EPOCHS=TAG",
        help="the tag of the end-to-end BaNEL runs of each negative model and epoch count: printed as the "
        "compute-scaling table, and drawn by --scaling_plot",
    )
    parser.add_argument("--scaling_probe", help="for --scaling_plot: region_tail.py results, drawn per negative model")
    parser.add_argument(
        "--probe_cut",
        nargs=2,
        type=float,
        default=[0.995, 1.0],
        metavar=("RATE", "KAPPA"),
        help="the probe's cut drawn: share of failures rejected and kappa (default: the shipped first cut)",
    )
    args = parser.parse_args()
    results = load(args.results)
    print(table(results, args.pretrained_mean))
    print("\nBaNEL regions per round (reference pool: pretrained samples the earlier regions accept)\n")
    print(discrimination_table(results))
    print(
        "\nBaNEL per seed (regions on the reference pool; the pool's successes left after the first region are few)\n"
    )
    print(per_seed_table(results, base_rate(results, args.variant, "", args.pretrained_mean)))
    print("\nBaNEL's generation cost and distinct successes per run\n")
    print(cost_table(results))
    if args.plot:
        plot(results, args.plot, args.variant, args.tag)
        print(f"\nplot: {args.plot}")
    series = defaultdict(dict)
    for item in args.scaling_tags:
        model, rest = item.split(":", 1)
        epochs, tag = rest.split("=", 1)
        series[model][float(epochs)] = tag
    base = base_rate(results, args.variant, "", args.pretrained_mean)
    if series:
        print("\nCompute scaling, end to end (improvement over the pretrained attacker)\n")
        print(scaling_table(scaling_gains(results, series, args.variant, base)))
    if args.scaling_plot:
        probe = load(args.scaling_probe) if args.scaling_probe else None
        scaling_plot(results, args.scaling_plot, series, args.variant, base, probe, tuple(args.probe_cut))
        print(f"\ncompute-scaling plot: {args.scaling_plot}")


if __name__ == "__main__":
    main()
