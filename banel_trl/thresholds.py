"""Calibrated thresholds: a region rejects a chosen share of held-out failures of the posterior it acts on."""

import random

import torch

from .posterior import BanelPosterior
from .regions import RejectionRegion


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
    posterior: BanelPosterior, region: RejectionRegion, batch: dict[str, torch.Tensor], rejection_rate: float
) -> float:
    """The `1 - rejection_rate` quantile of the log-ratios of the held-out failures `batch` under `region`."""
    scores = posterior.log_ratios(**batch, regions=[region])[:, 0]
    return torch.quantile(scores.float().cpu(), 1.0 - rejection_rate).item()
