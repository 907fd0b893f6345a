"""How a round's paid failures become a rejection region, and how the next rounds' paid evidence reviews it."""

import logging
import random
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from scipy.stats import fisher_exact, mannwhitneyu

from .distributed import on_main_process
from .fitting import ModelFitter
from .ledger import RewardLedger
from .models import reference_adapter_name, reference_model_name, region_adapter_name, region_model_name
from .posterior import BanelPosterior
from .regions import BASE_ADAPTER, RejectionRegion
from .sampling import REFERENCE_SEED_OFFSET, CandidateSampler
from .thresholds import calibrated_threshold, region_scores


logger = logging.getLogger(__name__)


@dataclass
class RoundEvidence:
    """
    What round `k` paid for, split once: the failures its negative model is fit on, the failures held out of the fit
    to set its threshold, and its paid successes (never trained on; they tell whether a relaxed cut rejects them).
    """

    fit: list[dict]
    held_out: list[dict]
    successes: list[dict]


def relaxed_acceptance(rejection_rate: float) -> float | None:
    """
    The share of held-out failures a relaxed cut keeps: `RegionPolicy.relaxation` times what the cut at
    `rejection_rate` kept (0.995 becomes 0.95), never deeper than that cut; `None` when it would keep half of them or
    more: such a region is retracted instead.
    """
    kept = RegionPolicy.relaxation * (1.0 - rejection_rate)
    return kept if kept < 0.5 else None


class RegionPolicy:
    r"""
    How BaNEL turns a round's failures into a rejection region, and how the next rounds' paid samples review it.

    - A region of round `k`: a negative model `p_phi_k` fit on the round's failures (a LoRA adapter or a separate
      model, `BanelConfig.negative_model`) and compared with a reference `p_ref_k`: the model that drew the round's
      samples (`p_theta`, or the distilled proposal) in round 0 and in the distilled loop, and from round 1 on a model
      of the same form fit on as many unevaluated samples of the posterior the failures came from. A LoRA fit on
      posterior samples learns the posterior's own shape; fit against `p_theta`, it would reject where the earlier
      regions kept the successes, while a reference fit the same way learns that shape too, so the ratio keeps what
      the failures teach. The threshold rejects `first_region_rejection_rate` (round 0) or `target_rejection_rate` of
      the failures held out of the fit (`calibration_fraction` of them).
    - From round 1 on in the exact loop, a round adds a region only when it paid for at least `min_successes`
      successes: they are all that tells its failures from the reference's samples, and without them the region fits
      noise and divides the acceptance for nothing.
    - The next round reviews the newest region with its paid samples. A region stays if they succeed more often than
      those it was fit on (one-sided Fisher exact test at `review_p_value`). Otherwise it is relaxed to a shallower
      cut, scored with `relaxed_kappa` (see [`relaxed_acceptance`]), or retracted (it stops rejecting) when there is
      no such cut or the relaxed scores rank the successes of its round above its held-out failures (one-sided
      Mann-Whitney U test). A relaxed region is retracted if the round after succeeds less often than its own round.
      A round that changes a region adds none: its samples came from the posterior it changed. In the distilled loop
      the proposal distilled from a changed region is replaced (see [`DistilledProposal.revise`]), and the test is
      at `distilled_review_p_value`: its rounds are small (750 NREs at the defaults), where 4 successes against 0 is
      p = 0.06, and a region stays once its next round found two more successes than its own (2 against 0: p = 0.25;
      1 against 0, 2 against 1: p = 0.5).

    The class attributes are the method's constants; docs/results/defaults.md shows how they were measured.
    """

    calibration_fraction = 0.2
    min_successes = 10
    review_p_value: float | None = 0.05
    distilled_review_p_value = 0.5
    relaxation = 10.0
    relaxed_kappa = 2.0

    def __init__(
        self,
        args,
        fitter: ModelFitter,
        posterior: BanelPosterior,
        sampler: CandidateSampler,
        accelerator: Accelerator | None = None,
    ):
        self.args = args
        self.fitter = fitter
        self.posterior = posterior
        self.sampler = sampler
        self.accelerator = accelerator
        self._evidence: dict[int, RoundEvidence] = {}

    def evidence(self, ledger: RewardLedger, k: int) -> RoundEvidence:
        """Round `k`'s failures (paid and free repeats), split into fit and held-out ones from its seed, and successes."""
        if k not in self._evidence:
            failures = [self._example(r) for r in ledger.samples_of_round(k) if not r["success"]]
            pool = list(range(len(failures)))
            num_held_out = min(max(1, round(self.calibration_fraction * len(pool))), len(failures) - 1)
            held_out = set(random.Random(self.args.seed + k).sample(pool, max(num_held_out, 0)))
            self._evidence[k] = RoundEvidence(
                [failure for i, failure in enumerate(failures) if i not in held_out],
                [failure for i, failure in enumerate(failures) if i in held_out],
                [self._example(r) for r in ledger.paid_in_round(k) if r["success"]],
            )
        return self._evidence[k]

    def _example(self, record: dict) -> dict:
        return {"prompt_ids": self.sampler.prompt_ids(record["prompt"]), "completion_ids": record["completion_ids"]}

    def needs_reference(self, k: int) -> bool:
        """Whether round `k`'s region is compared with a reference fit on samples of the posterior (see above)."""
        return k > 0 and not self.args.distill_posterior

    def has_evidence(self, ledger: RewardLedger, k: int) -> bool:
        """Whether round `k` paid for enough successes to add a region (`min_successes`, see above)."""
        num_successes = len(self.evidence(ledger, k).successes)
        if not self.needs_reference(k) or num_successes >= self.min_successes:
            return True
        logger.warning(
            f"Round {k} adds no region: it found {num_successes} success(es), fewer than the {self.min_successes} "
            "that would tell its failures from the reference's samples, so the region would be fitting noise. Its "
            "evaluations stay in the ledger; the posterior is unchanged."
        )
        return False

    def fit(self, ledger: RewardLedger, k: int) -> tuple[RejectionRegion, float]:
        """
        Fit round `k`'s negative model on its failures, and its reference on as many unevaluated samples of the same
        posterior (the round's one draw of them; none accepted, or none needed: the proposal is the reference), then
        set the region's threshold.
        """
        evidence, proposal, seed = self.evidence(ledger, k), self.posterior.proposal_adapter, self.args.seed + k
        reference_samples = self._reference_samples(ledger, k, len(evidence.fit))
        separate = self.args.negative_model != "lora"
        name, loss = self._fit((region_model_name if separate else region_adapter_name)(k), evidence.fit, seed, k)
        reference = proposal  # the failures are samples of the proposal, cut by its regions (none once distilled)
        if reference_samples:
            reference, _ = self._fit(
                (reference_model_name if separate else reference_adapter_name)(k), reference_samples, seed, k
            )
        region = RejectionRegion(name, 0.0, k, reference, proposal, separate=separate)
        rate = self.args.first_region_rejection_rate if k == 0 else self.args.target_rejection_rate
        region.threshold = on_main_process(self.accelerator, self._threshold, region, evidence.held_out, rate)
        return region, loss

    def _reference_samples(self, ledger: RewardLedger, k: int, num_samples: int) -> list[dict]:
        """
        `num_samples` fresh samples of the posterior round `k` sampled, from their own seed, never evaluated (no NRE);
        a sample the ledger knows to be a success is left out, so that no known success is trained on.
        """
        if not self.needs_reference(k):
            return []
        args = self.args
        seed = args.seed + k + REFERENCE_SEED_OFFSET
        samples = self.sampler.posterior_samples(
            seed, num_samples, args.max_sampling_attempts, ledger.is_known_success, args.disable_tqdm
        )
        if len(samples) < num_samples:
            outcome = "the reference model is fit on those" if samples else f"region {k} is compared with p_theta"
            logger.warning(f"Round {k}: {len(samples)} of {num_samples} reference samples were accepted; {outcome}.")
        return samples

    def _fit(self, name: str, examples: list[dict], seed: int, k: int) -> tuple[str, float]:
        """Fit the model `name` on `examples`: an adapter (from the distilled proposal, if any) or a separate model."""
        if self.args.negative_model == "lora":
            proposal = self.posterior.proposal_adapter
            warm_start = None if proposal == BASE_ADAPTER else proposal  # Algorithm 2: p_phi_k starts from q_k
            return name, self.fitter.fit_adapter(name, examples, seed, k, warm_start)
        config = self.args.negative_model_config
        model, loss = self.fitter.fit_separate_model(examples, seed, k, self.args.negative_model, config)
        self.posterior.negative_models[name] = model
        return name, loss

    def _threshold(self, region: RejectionRegion, held_out: list[dict], rate: float) -> float:
        batch = self._batch(held_out)
        return calibrated_threshold(
            region_scores(self.posterior, region, batch), batch, region, rate, self.args.learning_rate
        )

    def _batch(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """`examples` collated on the model's device (none: an empty batch)."""
        if not examples:
            return {}
        return {key: value.to(self.posterior.model.device) for key, value in self.fitter.collator(examples).items()}

    def review(self, ledger: RewardLedger, k: int) -> bool:
        """
        Whether round `k`'s paid samples change the newest region (see above); a round that does adds no region. Only
        paid evidence decides, and a resumed run decides again the same way.
        """
        regions = self.posterior.regions
        newest = regions[-1] if regions else None
        if self.review_p_value is None or newest is None:
            return False
        if newest.reviewed_round == k:
            return True  # decided before an interruption
        as_fit = newest.reviewed_round is None
        if newest.retracted or newest.last_round != k - 1:
            return False  # not on trial: retracted, or not changed since a round before the previous one
        counts = [
            (sum(r["success"] for r in paid), len(paid)) for paid in map(ledger.paid_in_round, (k, newest.round))
        ]
        table = [[successes, num_paid - successes] for successes, num_paid in counts]
        p_value = float(fisher_exact(table, alternative="greater" if as_fit else "less").pvalue)
        level = self.distilled_review_p_value if self.args.distill_posterior else self.review_p_value
        if (p_value < level) == as_fit:
            return False
        (with_region, num_with), (without, num_without) = counts
        evidence = (
            f"its paid samples succeeded {with_region} times in {num_with}, against {without} in {num_without} without "
            f"the region (one-sided Fisher test p = {p_value:.3g})"
        )
        relaxed, relaxes = None, False
        if as_fit:
            relaxed, note = self._relax(ledger, newest)
            relaxes, evidence = relaxed is not None, evidence + note
        newest.reviewed_round, newest.retracted = k, not relaxes
        if relaxes:
            newest.kappa, newest.threshold = self.relaxed_kappa, relaxed
        logger.warning(
            f"Round {k} {'relaxes' if relaxes else 'retracts'} the region of round {newest.round}: {evidence}. "
            + ("It stops rejecting" if newest.retracted else "It keeps the relaxed cut")
            + ", and this round adds no region: its samples came from the posterior it changed."
        )
        return True

    def _relax(self, ledger: RewardLedger, region: RejectionRegion) -> tuple[float | None, str]:
        """The threshold of `region`'s relaxed cut (`None`: retract it instead), and why, for the log."""
        rate = self.args.first_region_rejection_rate if region.round == 0 else self.args.target_rejection_rate
        kept = relaxed_acceptance(rate)
        if kept is None:
            return None, f"; a cut at {rate:g} has no shallower cut that still rejects most failures"
        evidence = self.evidence(ledger, region.round)
        relaxed = RejectionRegion(**{**vars(region), "kappa": self.relaxed_kappa})
        failures, successes = on_main_process(
            self.accelerator,
            lambda: [
                region_scores(self.posterior, relaxed, self._batch(e)).tolist()
                for e in (evidence.held_out, evidence.successes)
            ],
        )
        harm = float(mannwhitneyu(successes, failures, alternative="greater").pvalue) if successes else 1.0
        threshold = torch.quantile(torch.tensor(failures), kept).item()
        note = (
            f"; relaxed to reject {1 - kept:g} of its held-out failures at kappa {self.relaxed_kappa:g}, it would reject "
            f"{sum(score > threshold for score in successes)} of the {len(successes)} successes paid in round "
            f"{region.round} (that their scores rank above those failures': one-sided Mann-Whitney U test p = "
            f"{harm:.3g})"
        )
        return (threshold if harm >= self.review_p_value else None), note
