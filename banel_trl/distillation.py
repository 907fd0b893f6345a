"""The paper's Algorithm 2: each round's posterior distilled into a LoRA proposal that the next round samples."""

from .fitting import ModelFitter
from .models import proposal_adapter_name
from .regions import BASE_ADAPTER
from .sampling import DISTILLATION_SEED_OFFSET, CandidateSampler


class DistilledProposal:
    """
    The proposal of the distilled loop (`BanelConfig.distill_posterior`): after round `k`, a LoRA adapter `q_{k+1}`,
    started from `q_k` (the posterior is `q_k` minus a region: a small change), is fit by maximum likelihood on
    unevaluated samples of the posterior (no NRE, and no reward is consulted), and samples the next round. The regions
    fit on samples of an earlier proposal stop rejecting: they are in `q_{k+1}`'s weights.
    """

    def __init__(self, args, fitter: ModelFitter, sampler: CandidateSampler):
        self.args = args
        self.fitter = fitter
        self.sampler = sampler
        self.posterior = sampler.posterior

    def distil(self, k: int) -> None:
        """
        Fit `q_{k+1}` on `distillation_samples` samples of the posterior after region `k` (the round's one draw of
        unevaluated samples, from their own seed), and propose from it.
        """
        args, seed = self.args, self.args.seed + k + DISTILLATION_SEED_OFFSET
        samples = self.sampler.posterior_samples(
            seed, args.distillation_samples, args.max_sampling_attempts, disable_tqdm=args.disable_tqdm
        )
        if len(samples) < 2:
            raise RuntimeError(
                f"Round {k}: the posterior accepted {len(samples)} samples to distil within `max_sampling_attempts` "
                "proposals each: lower `target_rejection_rate` or raise `max_sampling_attempts`."
            )
        name, previous = proposal_adapter_name(k + 1), self.posterior.proposal_adapter
        self.fitter.fit_adapter(name, samples, seed, k, None if previous == BASE_ADAPTER else previous)
        self.posterior.proposal_adapter = name
