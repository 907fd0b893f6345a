"""Calibrated thresholds: a region rejects a chosen share of held-out failures of the posterior it acts on."""

import logging

import torch

from .posterior import BanelPosterior
from .regions import RejectionRegion


logger = logging.getLogger(__name__)

# Below this span of the held-out failures' log-ratios, per completion token, the negative model is still at its
# initialisation (docs/results/defaults.md: the spans of trained and untrained fits on the toy task).
UNTRAINED_SPAN_PER_TOKEN = 5e-4


def region_scores(posterior: BanelPosterior, region: RejectionRegion, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The scores (log-ratios) of the collated examples `batch` under `region` alone, on the CPU (none: empty)."""
    if not batch or batch["prompt_ids"].size(0) == 0:
        return torch.empty(0)
    return posterior.log_ratios(**batch, regions=[region])[:, 0].float().cpu()


def calibrated_threshold(
    scores: torch.Tensor,
    batch: dict[str, torch.Tensor],
    region: RejectionRegion,
    rejection_rate: float,
    learning_rate: float | None = None,
) -> float:
    """
    The `1 - rejection_rate` quantile of `scores`, the log-ratios of the held-out failures `batch` under `region`.
    Warns when they span less than `UNTRAINED_SPAN_PER_TOKEN` per completion token: the negative model barely moved
    from its initialisation (a new LoRA is `p_theta` itself), typically at a learning rate made for policy gradients
    (`learning_rate`, named in the warning), and the region would reject noise.
    """
    samples = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    if len(torch.unique(samples, dim=0)) > 1:  # a span needs two samples (held-out failures may repeat one)
        span = (scores.max() - scores.min()).item()
        tokens = batch["completion_mask"].sum(dim=1).float().mean().item()
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
