"""Calibrated thresholds: a region rejects a chosen share of held-out failures of the posterior it acts on."""

import logging
import random

import torch

from .posterior import BanelPosterior
from .regions import RejectionRegion


logger = logging.getLogger(__name__)

# Below this span of the held-out failures' log-ratios, per completion token, the negative model is still at its
# initialisation. Measured on the toy task of tests/test_trainer.py (7-token completions; rounds of 50 and 200
# evaluations, 3 and 5 epochs; seeds 0-1): 3e-6 to 1.5e-4 per token at learning_rate 1e-6, 1.9e-3 to 1 at BaNEL's 1e-3.
UNTRAINED_SPAN_PER_TOKEN = 5e-4


def hold_out_calibration(negatives: list[dict], k: int, fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """
    Split round `k`'s `negatives` into those the negative model is fit on and a held-out `fraction` that sets its
    threshold, drawn from the failures of round `k` only: they are samples of the posterior the new region will act
    on, so the region rejects its target rate of it and the acceptance falls by that factor. (A round whose samples
    were all successes falls back to every failure.) Returns `(fit, calibration)`.
    """
    pool = [i for i, negative in enumerate(negatives) if negative["round"] == k] or range(len(negatives))
    num_held_out = min(max(1, round(fraction * len(pool))), len(negatives) - 1)
    held_out = set(random.Random(seed).sample(pool, num_held_out))
    fit = [negative for i, negative in enumerate(negatives) if i not in held_out]
    return fit, [negative for i, negative in enumerate(negatives) if i in held_out]


def calibrated_threshold(
    posterior: BanelPosterior,
    region: RejectionRegion,
    batch: dict[str, torch.Tensor],
    rejection_rate: float,
    learning_rate: float | None = None,
) -> float:
    """
    The `1 - rejection_rate` quantile of the log-ratios of the held-out failures `batch` under `region`. Warns when
    they span less than `UNTRAINED_SPAN_PER_TOKEN` per completion token: the negative model barely moved from its
    initialisation (a new LoRA is `p_theta` itself), typically at a learning rate made for policy gradients
    (`learning_rate`, named in the warning), and the region would reject noise.
    """
    scores = posterior.log_ratios(**batch, regions=[region])[:, 0].float().cpu()
    samples = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    if len(torch.unique(samples, dim=0)) > 1:  # a span needs two samples (held-out failures may repeat one)
        span = (scores.max() - scores.min()).item()
        tokens = 1.0 if posterior.length_normalize else batch["completion_mask"].sum(dim=1).float().mean().item()
        if span / max(tokens, 1.0) < UNTRAINED_SPAN_PER_TOKEN:
            _warn_untrained(region, span, span / max(tokens, 1.0), len(scores), learning_rate)
    return torch.quantile(scores, 1.0 - rejection_rate).item()


def _warn_untrained(
    region: RejectionRegion, span: float, span_per_token: float, num_scores: int, learning_rate: float | None
) -> None:
    rate = "" if learning_rate is None else f" at `learning_rate`={learning_rate:g}"
    logger.warning(
        f"Round {region.round}: the negative model barely moved from its initialisation{rate}. The log-ratios of the "
        f"{num_scores} held-out failures span {span:.2g} nats ({span_per_token:.2g} per completion token, under "
        f"{UNTRAINED_SPAN_PER_TOKEN:g}), so region {region.round} rejects noise. BaNEL's default `learning_rate` is "
        "1e-3; GRPO's 1e-6 leaves the negative fits untrained: raise `learning_rate` (at 1e-3 already, raise "
        "`num_train_epochs`)."
    )
