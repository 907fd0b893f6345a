"""Reading a BaNEL run back from its output folder: per-round figures, a plot, successes and failure patterns."""

import csv
import json
import os
import random
from dataclasses import dataclass, field

import torch
from transformers.trainer import TRAINER_STATE_NAME

from .data import NegativesCollator, shorten, tokenize_prompts
from .ledger import EVAL_LEDGER_NAME, HITS_NAME, HitsFile, RewardLedger, read_hits
from .posterior import BanelPosterior
from .regions import POSTERIOR_CONFIG_NAME, read_posterior_config


REPORT_PLOT_NAME = "banel_report.png"
REPORT_NAME = "banel_report.md"


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided `1 - alpha` confidence interval `(lower, upper)` of a binomial rate."""
    from scipy.stats import beta

    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"Expected 0 <= successes <= trials and trials >= 1, got {successes} of {trials}.")
    lower = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lower, upper


@dataclass
class RoundSummary:
    """What one round of a run paid and found, from the ledger and the round's logged metrics."""

    round: int
    evaluations: int
    successes: int
    repeats: int
    cumulative_evaluations: int
    cumulative_successes: int
    acceptance_rate: float | None = None
    negative_loss: float | None = None
    threshold: float | None = None

    @property
    def success_rate(self) -> float | None:
        """Successes among the round's samples of the posterior (paid evaluations and free repeats)."""
        samples = self.evaluations + self.repeats
        return self.successes / samples if samples else None


@dataclass
class RunSummary:
    """A run read back from its output folder. `records` are the ledger's paid evaluations."""

    output_dir: str
    records: list[dict]
    repeats: list[dict]
    rounds: list[RoundSummary]
    posterior_config: dict | None = None
    eval_metrics: dict = field(default_factory=dict)
    eval_evaluations: int = 0  # reward evaluations `evaluate()` paid, apart from the training budget
    hits: list[dict] = field(default_factory=list)  # every distinct success, in training or evaluation

    @property
    def successes(self) -> list[dict]:
        return [r for r in self.records if r["success"]]

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.records if not r["success"]]


def read_run(output_dir: str) -> RunSummary:
    """
    Summarise the run in `output_dir` from its ledger (`banel_ledger.jsonl`), and, where present, the per-round
    metrics the trainer logged (`trainer_state.json`) and the saved posterior (`banel_posterior.json`). The folder is
    only read, so a run still in progress can be reported on.

    Args:
        output_dir (`str`):
            The `output_dir` of a [`BanelTrainer`] run.

    Returns:
        [`RunSummary`]
    """
    ledger = RewardLedger.read(output_dir)

    logged, eval_metrics = {}, {}
    state_path = os.path.join(output_dir, TRAINER_STATE_NAME)
    if os.path.isfile(state_path):
        with open(state_path) as file:
            for entry in json.load(file).get("log_history", []):
                if "acceptance_rate" in entry:
                    logged[entry["round"]] = entry
                eval_metrics.update({k: v for k, v in entry.items() if k.startswith("eval_")})

    rounds, total_evaluations, total_successes = [], 0, 0
    for k in sorted({line["round"] for line in ledger.lines}):
        paid, repeated = ledger.paid_in_round(k), ledger.repeated_in_round(k)
        total_evaluations += len(paid)
        total_successes += sum(r["success"] for r in paid)
        metrics = logged.get(k, {})
        acceptance_rate = metrics.get("acceptance_rate")
        end = ledger.round_ends.get(k, {})
        if acceptance_rate is None and end.get("proposed"):
            acceptance_rate = end["accepted"] / end["proposed"]
        rounds.append(
            RoundSummary(
                round=k,
                evaluations=len(paid),
                successes=sum(r["success"] for r in paid + repeated),
                repeats=len(repeated),
                cumulative_evaluations=total_evaluations,
                cumulative_successes=total_successes,
                acceptance_rate=acceptance_rate,
                negative_loss=metrics.get("negative_loss"),
                threshold=metrics.get("threshold"),
            )
        )
    posterior_config = None
    if os.path.isfile(os.path.join(output_dir, POSTERIOR_CONFIG_NAME)):
        posterior_config = read_posterior_config(output_dir)
    eval_evaluations = len(RewardLedger.read(output_dir, EVAL_LEDGER_NAME, missing_ok=True))
    return RunSummary(
        output_dir, ledger.records, ledger.repeats, rounds, posterior_config, eval_metrics, eval_evaluations,
        read_hits(output_dir),
    )  # fmt: skip


def export_hits_csv(output_dir: str, path: str) -> int:
    """Write the run's distinct successes to the CSV file `path` (one row each, rewards as JSON); returns how many."""
    hits = read_hits(output_dir)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=[*HitsFile.KEYS, "found_in"])
        writer.writeheader()
        for hit in hits:
            writer.writerow({key: json.dumps(v) if isinstance(v, list | dict) else v for key, v in hit.items()})
    return len(hits)


def plot_run(run: RunSummary, path: str) -> str:
    """
    Draw the run's rounds into a PNG at `path`: reward evaluations (NREs), successes, the posterior's acceptance rate
    and the negative model's fit loss, per round. Panels whose figures were not logged say so.

    Returns:
        `str`: `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in run.rounds]
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    ax = axes[0, 0]
    ax.bar(rounds, [r.evaluations for r in run.rounds], color="tab:blue", label="this round")
    ax.plot(rounds, [r.cumulative_evaluations for r in run.rounds], "o-", color="tab:gray", label="cumulative")
    ax.set(title="Reward evaluations (NREs)", xlabel="round", ylabel="NREs")
    ax.legend()

    ax = axes[0, 1]
    ax.bar(rounds, [r.successes for r in run.rounds], color="tab:green", label="this round")
    ax.plot(rounds, [r.cumulative_successes for r in run.rounds], "o-", color="tab:gray", label="cumulative (paid)")
    ax.set(title="Successes (never trained on)", xlabel="round", ylabel="successes")
    ax.legend()

    for ax, name, title, log_scale in (
        (axes[1, 0], "acceptance_rate", "Acceptance rate of the posterior", True),
        (axes[1, 1], "negative_loss", "Negative model fit loss (NLL per token)", False),
    ):
        points = [(r.round, getattr(r, name)) for r in run.rounds if getattr(r, name) is not None]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", color="tab:red")
            if log_scale and all(value > 0 for _, value in points):
                ax.set_yscale("log")
        else:
            ax.text(
                0.5,
                0.5,
                f"no {name} logged\n({TRAINER_STATE_NAME} missing)",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set(title=title, xlabel="round")
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    total = run.rounds[-1] if run.rounds else None
    figure.suptitle(
        f"BaNEL run {os.path.basename(os.path.abspath(run.output_dir))}: "
        f"{total.cumulative_evaluations if total else 0} NREs, {len(run.successes)} successes"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@torch.no_grad()
def failure_patterns(
    run: RunSummary,
    posterior: BanelPosterior,
    tokenizer,
    num_failures: int = 512,
    top_k: int = 5,
    seed: int = 0,
) -> list[dict]:
    """
    What each region rejects: the paid failures ranked by the region's score `log p_phi_k(x) - log p_ref_k(x)` (its
    reference `p_ref_k` is `p_theta` or a model of the posterior the failures came from, see [`RejectionRegion`]).

    Args:
        run, posterior, tokenizer:
            The run (from [`read_run`]), its posterior and the tokenizer its prompts were encoded with.
        num_failures (`int`, *optional*, defaults to `512`):
            Failures scored (a random subset from `seed` when there are more).
        top_k (`int`, *optional*, defaults to `5`):
            Failures listed at each end of the ranking.

    Returns:
        `list[dict]`: one entry per region, with its `round`, `threshold`, `rejected_share` (of the scored failures
        inside the region), and `most_likely` / `least_likely`: the failures with the highest / lowest score, each a
        dict with `prompt`, `completion` and `score`.
    """
    failures = run.failures
    if not failures or not posterior.regions:
        return []
    if len(failures) > num_failures:
        failures = random.Random(seed).sample(failures, num_failures)
    collator = NegativesCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    device = posterior.model.device
    scores = []
    for start in range(0, len(failures), posterior.scoring_batch_size):
        chunk = failures[start : start + posterior.scoring_batch_size]
        prompt_ids = tokenize_prompts([r["prompt"] for r in chunk], tokenizer)
        batch = collator(
            [
                {"prompt_ids": ids, "completion_ids": r["completion_ids"]}
                for ids, r in zip(prompt_ids, chunk, strict=True)
            ]
        )
        batch = {key: value.to(device) for key, value in batch.items()}
        scores.append(posterior.log_ratios(**batch, regions=posterior.regions).cpu())
    scores = torch.cat(scores)

    def entry(i: int, k: int) -> dict:
        return {"prompt": failures[i]["prompt"], "completion": failures[i]["completion"], "score": float(scores[i, k])}

    patterns = []
    for k, region in enumerate(posterior.regions):
        order = scores[:, k].argsort(descending=True).tolist()
        patterns.append(
            {
                "round": region.round,
                "threshold": region.threshold,
                "retracted": region.retracted,
                "relaxed": region.relaxed,
                "kappa": region.kappa or 1.0,
                "rejected_share": float((scores[:, k] > region.threshold).float().mean()),
                "most_likely": [entry(i, k) for i in order[:top_k]],
                "least_likely": [entry(i, k) for i in order[::-1][:top_k]],
            }
        )
    return patterns


def _patterns_section(patterns: list[dict]) -> list[str]:
    """The report's section on what each region rejects (see [`failure_patterns`])."""
    lines = [
        "## What the regions reject",
        "",
        "Failures ranked by each region's score `log p_phi_k(x) - log p_ref_k(x)` (`p_ref_k`: `p_theta`, or from "
        "round 1 on by default a model of the posterior the failures came from): the region rejects what scores "
        "above its threshold. The most likely failures are the pattern the negative model learned; the least "
        "likely are failures it does not cover.",
        "",
    ]
    for pattern in patterns:
        state = f"relaxed, kappa {pattern['kappa']:g}: rejects " if pattern["relaxed"] else "rejects "
        lines += [
            f"### Region {pattern['round']} (threshold {pattern['threshold']:.3f}, "
            + ("retracted: it rejects nothing, it would reject " if pattern["retracted"] else state)
            + f"{pattern['rejected_share']:.0%} of the scored failures)",
            "",
            f"| most likely under p_phi_{pattern['round']} (vs p_ref_{pattern['round']}) | score | least likely | "
            "score |",
            "|---|---|---|---|",
        ]
        for most, least in zip(pattern["most_likely"], pattern["least_likely"], strict=True):
            lines.append(
                f"| {shorten(most['completion'], 60)} | {most['score']:.2f} | "
                f"{shorten(least['completion'], 60)} | {least['score']:.2f} |"
            )
        lines.append("")
    return lines


def format_report(run: RunSummary, patterns: list[dict] | None = None, plot_path: str | None = None) -> str:
    """The run as Markdown: a table of rounds, the successes found, and the failure patterns of each region."""
    lines = [f"# BaNEL run report: `{run.output_dir}`", ""]
    if plot_path is not None:
        lines += [f"![BaNEL rounds]({os.path.basename(plot_path)})", ""]
    lines += [
        f"{len(run.records)} reward evaluations (NREs) in {len(run.rounds)} rounds, {len(run.successes)} successes; "
        f"{run.eval_evaluations} more reward evaluations in `evaluate()`, apart from the training budget.",
        "",
        "| round | NREs | cumulative NREs | successes | success rate [95% CI] | acceptance rate | negative loss | "
        "threshold |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def number(value, spec):
        return "–" if value is None else format(value, spec)

    for r in run.rounds:
        samples = r.evaluations + r.repeats
        rate = "–"
        if samples:
            low, high = clopper_pearson(r.successes, samples)
            rate = f"{r.success_rate:.2e} [{low:.1e}, {high:.1e}]"
        lines.append(
            f"| {r.round} | {r.evaluations} | {r.cumulative_evaluations} | {r.successes} | {rate} | "
            f"{number(r.acceptance_rate, '.2e')} | {number(r.negative_loss, '.3f')} | {number(r.threshold, '.3f')} |"
        )
    lines += ["", "Round 0 samples `p_theta` itself: its success rate estimates the base model's.", ""]

    found_in = [hit["found_in"] for hit in run.hits]
    lines += [
        "## Successes",
        "",
        f"{len(run.hits)} distinct successes ({found_in.count('training')} in training, "
        f"{found_in.count('evaluation')} in evaluation), all in `{HITS_NAME}`:"
        if run.hits
        else "None found.",
        "",
    ]
    lines += [
        f"- {hit['found_in']}, round {hit['round']}, reward {hit['reward']}: {shorten(hit['completion'], 100)} "
        f"(prompt {shorten(hit['prompt'], 60)})"
        for hit in run.hits
    ]
    lines.append("")

    if patterns:
        lines += _patterns_section(patterns)
    return "\n".join(lines)


def write_report(
    output_dir: str,
    posterior: BanelPosterior | None = None,
    tokenizer=None,
    model_name_or_path: str | None = None,
    patterns: bool = True,
    num_failures: int = 512,
    top_k: int = 5,
) -> tuple[str, str]:
    """
    Write `banel_report.png` (see [`plot_run`]) and `banel_report.md` (see [`format_report`]) into `output_dir`.

    Args:
        output_dir (`str`):
            The `output_dir` of a [`BanelTrainer`] run.
        posterior, tokenizer, model_name_or_path (*optional*):
            The run's posterior and tokenizer, for the failure patterns; loaded from `output_dir` onto
            `model_name_or_path` (by default the base model recorded in the folder) when `None`.
        patterns (`bool`, *optional*, defaults to `True`):
            Score failures under every region (loads the model) to list what the regions reject.
        num_failures (`int`, *optional*, defaults to `512`):
            Failures scored for the patterns.
        top_k (`int`, *optional*, defaults to `5`):
            Failures listed at each end of every region's ranking.

    Returns:
        `tuple[str, str]`: paths of the Markdown report and of the plot.
    """
    run = read_run(output_dir)
    plot_path = plot_run(run, os.path.join(output_dir, REPORT_PLOT_NAME))
    found = []
    if patterns and run.posterior_config is not None and run.posterior_config["regions"]:
        if posterior is None:
            posterior = BanelPosterior.from_pretrained(output_dir, model=model_name_or_path)
        if tokenizer is None:
            from transformers import AutoTokenizer

            base = model_name_or_path or run.posterior_config["base_model_name_or_path"]
            saved = os.path.isfile(os.path.join(output_dir, "tokenizer_config.json"))  # where `save_model` puts it
            tokenizer = AutoTokenizer.from_pretrained(output_dir if saved else base)
        found = failure_patterns(run, posterior, tokenizer, num_failures=num_failures, top_k=top_k)
    report_path = os.path.join(output_dir, REPORT_NAME)
    with open(report_path, "w") as file:
        file.write(format_report(run, found, plot_path) + "\n")
    return report_path, plot_path
