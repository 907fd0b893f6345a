"""
The paper's Algorithm 2: each round's posterior distilled into a LoRA proposal that the next round samples, reached in
stages so that its cost does not grow with the depth of the round's cut.
"""

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from .config_checks import STAGE_PROPOSALS
from .distributed import gather_to_all, rank_share
from .fitting import ModelFitter
from .models import proposal_adapter_name
from .regions import BASE_ADAPTER, RejectionRegion
from .rejection import sample_until
from .sampling import DISTILLATION_SEED_OFFSET, CandidateSampler


logger = logging.getLogger(__name__)

# A distillation proposes at most STAGE_PROPOSALS candidates per sample it wants at each of at most MAX_STAGES stages:
# at most 20 per distillation sample wanted (each stage rounded up to a whole prompt), whatever share of the proposal
# the posterior accepts. An intermediate stage keeps the STAGE_KEEP of its candidates that lie deepest inside the cut
# (the multilevel cross-entropy method): four stages reach a posterior that accepts 1e-4 of its proposal at
# acceptances of about STAGE_KEEP each.
STAGE_KEEP = 0.1
# A stage whose acceptance reaches this share of the wanted samples within the allowance draws on from its own proposal
# instead of fitting an intermediate one: its samples are the posterior's, where an intermediate proposal, fit on the
# candidates deepest inside the cut, leans towards the deepest part of it.
DRAW_ON = 0.5
MAX_STAGES = 4
STAGE_SEED_OFFSET = 5_000_011  # stage s of a distillation draws from the distillation's seed + s * this


@dataclass
class Candidate:
    """A candidate of a distillation stage and its `margin`: how far outside the posterior it lies (<= 0: inside)."""

    prompt: Any
    completion_ids: list[int]
    margin: float


class DistilledProposal:
    """
    The proposal of the distilled loop (`BanelConfig.distill_posterior`): after round `k`, a LoRA adapter `q_{k+1}`
    is fit by maximum likelihood on unevaluated samples of the posterior (`q_k` cut by region `k`; no NRE, and no
    reward is consulted), and samples the next round. The regions fit on samples of an earlier proposal stop
    rejecting: they are in `q_{k+1}`'s weights. A region the next round's review relaxes or retracts is distilled
    again, or undone ([`~DistilledProposal.revise`]).

    Rejection-sampling the posterior would cost `1 / acceptance` proposals per sample (~200 at a first cut that keeps
    0.5% of `p_theta`). Instead the samples are reached in stages: a stage proposes from an intermediate adapter; when
    its candidates lie inside the cut too rarely to reach `DRAW_ON` of the samples wanted within the allowance, the
    tenth deepest inside (by their margin, the excess of the region's log-ratio over its threshold) fit the next
    intermediate adapter, which proposes the next stage. The stage that reaches the cut often enough draws on and
    gives the samples `q_{k+1}` is fit on, started from the last intermediate adapter. Every stage proposes at most
    `STAGE_PROPOSALS` candidates per sample wanted. A distillation that reaches fewer than `STAGE_KEEP` of the samples
    it wants fits no generator: the posterior stays the proposal cut by the round's region, which the next round
    samples by rejection.
    """

    def __init__(self, args, fitter: ModelFitter, sampler: CandidateSampler):
        self.args = args
        self.fitter = fitter
        self.sampler = sampler
        self.posterior = sampler.posterior

    def distil(self, k: int) -> dict[str, float]:
        """
        Fit `q_{k+1}` on up to `distillation_samples` samples of the posterior after region `k` (unevaluated, from
        the distillation's own seeds), and propose from it. Returns the distillation's figures: samples fit on,
        candidates proposed (per sample), stages.
        """
        args, regions, wanted = self.args, self.posterior.active_regions, self.args.distillation_samples
        seed, name = args.seed + k + DISTILLATION_SEED_OFFSET, proposal_adapter_name(k + 1)
        adapter, stage_adapters, proposed = self.posterior.proposal_adapter, [], 0
        allowance_total = STAGE_PROPOSALS * MAX_STAGES * wanted  # proposals over every stage and the draw-on
        for stage in range(MAX_STAGES):
            draw_seed, description = seed + stage * STAGE_SEED_OFFSET, f"Distillation {k}, stage {stage}"
            candidates = self._draw(adapter, regions, draw_seed, description, wanted, STAGE_PROPOSALS)
            proposed += len(candidates)
            inside = [candidate for candidate in candidates if candidate.margin <= 0]
            # At the acceptance seen, what drawing on from this stage's proposal reaches within the allowance.
            reachable = len(inside) * (1 + (allowance_total - proposed) / len(candidates))
            if reachable >= DRAW_ON * wanted or stage == MAX_STAGES - 1:
                break
            margins = sorted(candidate.margin for candidate in candidates)
            level = margins[max(math.ceil(STAGE_KEEP * len(margins)) - 1, 0)]
            elite = [candidate for candidate in candidates if candidate.margin <= level]
            stage_adapters.append(f"{name}_stage_{stage + 1}")
            self.fitter.fit_adapter(stage_adapters[-1], self._examples(elite), seed + stage, k, _warm(adapter))
            adapter = stage_adapters[-1]
        if len(inside) < wanted:  # the last stage draws on, from its own stream, within what the stages left
            missing = wanted - len(inside)
            allowance = (allowance_total - proposed) // missing
            more = self._draw(adapter, regions, None, description, missing, allowance)
            proposed += len(more)
            inside += [candidate for candidate in more if candidate.margin <= 0]
        kept = min(len(inside), wanted)
        if kept >= STAGE_KEEP * wanted:
            self.fitter.fit_adapter(name, self._examples(inside[:wanted]), seed, k, _warm(adapter))
            self.posterior.proposal_adapter = name
        else:  # too few to fit a generator on: the posterior stays exact, the proposal cut by the round's region
            logger.warning(
                f"Round {k}: {kept} of the {proposed} candidates of the distillation's {stage + 1} stages lie inside "
                f"the posterior, fewer than {STAGE_KEEP:g} of the {wanted} wanted: no generator is distilled, and the "
                "next round samples the posterior by rejection. A region this deep rejects almost everything: lower "
                "`target_rejection_rate` (or `first_region_rejection_rate` for the first round)."
            )
        for stage_adapter in stage_adapters:
            self.fitter.delete_adapter(stage_adapter)
        return {
            "distillation/samples": kept,
            "distillation/proposals": proposed,
            "distillation/proposals_per_sample": proposed / max(kept, 1),
            "distillation/stages": stage + 1,
        }

    def revise(self, region: RejectionRegion) -> dict[str, float]:
        """
        After a review changed `region` (see [`RegionPolicy.review`]), replace the proposal distilled from it: propose
        from the proposal the region was fit on, cut by the relaxed region (distilled again, into the same adapter)
        or, once retracted, without it. Returns the figures of the new distillation (none after a retraction).
        """
        self.posterior.proposal_adapter = region.proposal
        return {} if region.retracted else self.distil(region.round)

    def _draw(
        self,
        adapter: str,
        regions: list[RejectionRegion],
        seed: int | None,
        description: str,
        wanted: int,
        allowance: int,
    ) -> list[Candidate]:
        """
        Candidates of `adapter` with their margins under `regions`, from `seed` (`None`: on from the last draw), until
        `wanted` lie inside the posterior or `allowance` times that many were proposed: each process its share, from
        its own stream, every process getting them all in rank order.
        """
        if seed is not None:
            self.sampler.reseed(seed, own_stream=True)
        accelerator, candidates, num_generations = self.sampler.accelerator, [], self.sampler.num_generations
        thresholds = torch.tensor([region.threshold for region in regions])

        def draw(stats) -> tuple[int, int, int]:
            # Within the allowance: whole prompts of `num_generations`, at least one.
            left = max((allowance * share - stats.proposed) // num_generations, 1) * num_generations
            size = min(self.sampler.batch_size(stats, share), left)
            examples, proposal = self.sampler.propose_batch(size, adapter, regions)
            excess = (proposal.log_ratios.float().cpu() - thresholds).nan_to_num(nan=-math.inf)  # NaN: not scored
            margins = excess.amax(dim=1) if regions else torch.zeros(len(examples))
            lengths = proposal.completion_mask.sum(dim=1).tolist()
            candidates.extend(
                Candidate(example["prompt"], proposal.completion_ids[j, : int(lengths[j])].tolist(), float(margin))
                for j, (example, margin) in enumerate(zip(examples, margins, strict=True))
            )
            inside = int((margins <= 0).sum())
            return len(examples), inside, inside

        main = accelerator is None or accelerator.is_local_main_process
        disable_tqdm = self.args.disable_tqdm or not main
        share = rank_share(accelerator, wanted)
        sample_until(share, allowance, draw, description, disable_tqdm, give_up_on_low_acceptance=False)
        return gather_to_all(accelerator, candidates)

    def _examples(self, candidates: list[Candidate]) -> list[dict]:
        return [
            {"prompt_ids": self.sampler.prompt_ids(c.prompt), "completion_ids": c.completion_ids} for c in candidates
        ]


def _warm(adapter: str) -> str | None:
    """The adapter a fit starts from: a copy of `adapter`, or a new LoRA (`p_theta` itself) for `p_theta`."""
    return None if adapter == BASE_ADAPTER else adapter
