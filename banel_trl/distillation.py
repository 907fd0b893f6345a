"""The paper's Algorithm 2: each round's posterior distilled into a LoRA proposal that the next round samples."""

from .fitting import ModelFitter
from .models import proposal_adapter_name
from .posterior import BanelPosterior
from .regions import BASE_ADAPTER


class DistilledProposal:
    """
    The proposal of the distilled loop (`BanelConfig.distill_posterior`): after round `k`, a LoRA adapter `q_{k+1}`,
    started from `q_k` (the posterior is `q_k` minus a region: a small change), is fit by maximum likelihood on
    unevaluated samples of the posterior (no NRE, and no reward is consulted), and samples the next round. The regions
    fit on samples of an earlier proposal stop rejecting: they are in `q_{k+1}`'s weights.
    """

    def __init__(self, fitter: ModelFitter, posterior: BanelPosterior):
        self.fitter = fitter
        self.posterior = posterior

    def distil(self, k: int, samples: list[dict], seed: int) -> None:
        """Fit `q_{k+1}` on `samples` of the posterior after region `k`, from `seed`, and propose from it."""
        if len(samples) < 2:
            raise RuntimeError(
                f"Round {k}: the posterior accepted {len(samples)} samples to distil within `max_sampling_attempts` "
                "proposals each: lower `target_rejection_rate` or raise `max_sampling_attempts`."
            )
        name, previous = proposal_adapter_name(k + 1), self.posterior.proposal_adapter
        self.fitter.fit_adapter(name, samples, seed, k, None if previous == BASE_ADAPTER else previous)
        self.posterior.proposal_adapter = name
