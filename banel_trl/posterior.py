"""The BaNEL posterior: a proposal (p_theta, or a distilled LoRA) restricted to the complement of its rejection regions."""

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from peft import PeftConfig, PeftModel, set_peft_model_state_dict
from transformers import GenerationConfig, PreTrainedModel
from trl.trainer.utils import pad, selective_log_softmax

from .regions import BASE_ADAPTER, RejectionRegion, load_posterior, save_posterior, saved_adapter_names
from .rejection import PosteriorAcceptanceError, sample_until
from .scoring import completion_mask_from_ids, only_adapter, sequence_log_probs


MIN_STAGE_ROWS = 64  # `log_ratios(stop_at_rejection=True)` scores several regions per stage below this many rows
MAX_GENERATION_LOGITS = 2**26  # logits `propose` keeps from generation to reuse for log p_theta (256 MiB in float32)
SAVED_SETTINGS = ("temperature", "scoring_batch_size", "max_sampling_attempts", "proposal_adapter")


@dataclass
class Proposal:
    """
    A batch of candidates from p_theta with their log-ratios under each region, shape `(N, K)`. Regions are scored in
    order and a rejected candidate is not scored under the later ones: `log_ratios[i, k]` is NaN when a region of
    index below `k` already rejected candidate `i` (see `stop_at_rejection` in [`~BanelPosterior.log_ratios`]).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    log_ratios: torch.Tensor
    accepted: torch.Tensor


class BanelPosterior:
    r"""
    The BaNEL posterior `p(x) ∝ q(x) · prod_k 1[x not in R_k]`, sampled exactly by rejection.

    The proposal `q` is `p_theta`, the base model with its adapters disabled, or a LoRA adapter distilled from an
    earlier posterior (`proposal_adapter`, see `BanelConfig.distill_posterior`). Each region `R_k` is a LoRA adapter
    `p_phi_k` on the same base, a reference (`p_theta`, or a LoRA adapter `p_ref_k`) and a threshold: `x` is rejected
    when `log p_phi_k(x) - log p_ref_k(x) > threshold_k` for ANY active `k` (computed on the completion, given the
    prompt; a relaxed region weighs `log p_phi_k` by its own `kappa`). The active regions are those fit on samples of
    the current proposal. Candidates are scored under the regions in order, and one rejected by a region is not scored
    under the later ones.

    Args:
        model ([`~peft.PeftModel`]):
            The base model carrying one LoRA adapter per region.
        regions (`list[RejectionRegion]`, *optional*):
            The rejection regions, in the order they were added.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature applied to the logits of every likelihood, the one the regions were fit with.
        scoring_batch_size (`int`, *optional*, defaults to `64`):
            Rows per forward pass when scoring; a candidate takes one row for `p_theta` and one per region it is
            scored under.
        max_sampling_attempts (`int`, *optional*, defaults to `10000`):
            Bound on [`~BanelPosterior.generate`]: at most this many candidates per requested sample, in total over the
            samples requested, before it gives up (as `BanelConfig.max_sampling_attempts`).
        generation_config ([`~transformers.GenerationConfig`], *optional*):
            Default sampling settings of [`~BanelPosterior.generate`]; defaults to the model's.
        disable_tqdm (`bool`, *optional*, defaults to `False`):
            Hide the progress bar of [`~BanelPosterior.generate`] (samples accepted, acceptance rate).
        proposal_adapter (`str`, *optional*, defaults to `BASE_ADAPTER`):
            The LoRA adapter that proposes candidates; `BASE_ADAPTER` is `p_theta`.
        proposal_sampler (`Callable`, *optional*):
            Draws the candidates instead of the model's `generate`: `proposal_sampler(adapter, input_ids,
            attention_mask)` returns right-padded completion ids, one per row, sampled from the proposal `adapter`
            (active while it runs). [`VLLMSampler`] is one.
        negative_models (`dict[str, torch.nn.Module]`, *optional*):
            The separate negative models and references of the regions, by name (see `BanelConfig.negative_model`).
    """

    def __init__(
        self,
        model: PeftModel,
        regions: list[RejectionRegion] | None = None,
        temperature: float = 1.0,
        scoring_batch_size: int = 64,
        max_sampling_attempts: int = 10000,
        generation_config: GenerationConfig | None = None,
        disable_tqdm: bool = False,
        proposal_adapter: str = BASE_ADAPTER,
        proposal_sampler: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        negative_models: dict[str, torch.nn.Module] | None = None,
    ):
        self.model = model
        self.regions = list(regions or [])
        self.temperature = temperature
        self.scoring_batch_size = scoring_batch_size
        self.max_sampling_attempts = max_sampling_attempts
        self.generation_config = generation_config or model.generation_config
        self.disable_tqdm = disable_tqdm
        self.proposal_adapter = proposal_adapter
        self.proposal_sampler = proposal_sampler
        self.negative_models = dict(negative_models or {})

    @property
    def active_regions(self) -> list[RejectionRegion]:
        """The regions that reject: those fit on samples of the current proposal, never a retracted one."""
        return [region for region in self.regions if not region.retracted and region.proposal == self.proposal_adapter]

    @property
    def adapter_names(self) -> list[str]:
        """Every LoRA adapter of the posterior: the regions' and the proposal's."""
        return saved_adapter_names(self.regions, self.proposal_adapter)

    @property
    def thresholds(self) -> torch.Tensor:
        """The active regions' thresholds."""
        return torch.tensor([region.threshold for region in self.active_regions], dtype=torch.float32)

    def add_region(self, region: RejectionRegion) -> None:
        self.regions.append(region)

    def restore(
        self, regions: list[RejectionRegion], weights: list[dict], proposal: tuple | None, peft_config: PeftConfig
    ) -> None:
        """
        Put back what a run saved: the adapters' `weights` and the separate models (one dict by name per region; an
        adapter the model lacks is added with `peft_config`), the `regions`, and the distilled `proposal`
        `(name, weights)` to sample from (`None`: `p_theta`).
        """
        adapters = {name: values for region_weights in weights for name, values in region_weights.items()}
        adapters.update([proposal] if proposal is not None else [])
        separate = {name for region in regions for name in region.model_names}
        for name, saved in adapters.items():
            if name in separate:  # a separate model, loaded whole
                self.negative_models[name] = saved.to(self.model.device).eval()
                continue
            if name not in self.model.peft_config:
                self.model.add_adapter(name, peft_config)
            set_peft_model_state_dict(self.model, saved, adapter_name=name)
        self.regions.extend(regions)
        self.proposal_adapter = proposal[0] if proposal is not None else self.proposal_adapter

    @torch.no_grad()
    def log_ratios(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        regions: list[RejectionRegion] | None = None,
        stop_at_rejection: bool = False,
        proposal_log_probs: torch.Tensor | None = None,
        proposal: str | None = None,
    ) -> torch.Tensor:
        """
        `kappa_k * log p_phi_k(x) - log p_ref_k(x)` for every candidate and region, shape `(N, K)` (`kappa_k` is 1
        unless the region was relaxed). `p_theta` is scored once per candidate; each forward chunk runs under one
        adapter.

        Args:
            prompt_ids, prompt_mask, completion_ids, completion_mask (`torch.Tensor`):
                Left-padded prompts and right-padded completions, `(N, P)` and `(N, C)`.
            regions (`list[RejectionRegion]`, *optional*):
                The regions to score under; defaults to the posterior's active regions.
            stop_at_rejection (`bool`, *optional*, defaults to `False`):
                Score the regions in order, in stages, and drop a candidate from later stages as soon as a region
                rejects it (log-ratio above that region's threshold). Its entries for the regions it was not scored
                under are NaN: an entry is NaN only if a region of lower index already rejected the candidate. The
                decisions of [`~BanelPosterior.rejects`] are those of full scores, at the cost of the scores a
                rejected candidate no longer needs.
            proposal_log_probs (`torch.Tensor`, *optional*):
                The candidates' sequence log-likelihoods under the proposal, `(N,)`, when they are known already (from
                generation, see [`~BanelPosterior.propose`]); the proposal is then not scored again.
            proposal (`str`, *optional*):
                The adapter that sampled the candidates, whose `proposal_log_probs` these are; defaults to
                `proposal_adapter`.
        """
        regions = self.active_regions if regions is None else regions
        num_samples, device = prompt_ids.size(0), prompt_ids.device
        ratios = torch.full((num_samples, len(regions)), float("nan"), device=device)
        if not regions:
            return ratios
        thresholds = torch.tensor([region.threshold for region in regions], device=device)
        inputs = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        alive = torch.arange(num_samples, device=device)
        # Full-length log-likelihoods of the models scored once for all stages: the proposal (when known) and p_theta.
        proposal = self.proposal_adapter if proposal is None else proposal
        shared = {} if proposal_log_probs is None else {proposal: proposal_log_probs}
        start = 0
        was_training = self.model.training
        self.model.eval()  # dropout off; PEFT only mixes adapters in eval mode
        try:
            while start < len(regions) and len(alive) > 0:
                # One region per stage, or several once so few candidates survive that a stage would not fill
                # MIN_STAGE_ROWS rows: forwards that small cost their fixed overhead more than the rows they save.
                size = math.ceil(MIN_STAGE_ROWS / len(alive)) if stop_at_rejection else len(regions)
                stage = range(start, min(start + size, len(regions)))
                scored = self._stage_log_probs([regions[k] for k in stage], alive, shared, inputs)
                stage_ratios = torch.stack(
                    [
                        (regions[k].kappa or 1.0) * scored[regions[k].adapter_name]
                        - scored[regions[k].reference_adapter]
                        for k in stage
                    ],
                    dim=1,
                )
                ratios[alive, stage.start : stage.stop] = stage_ratios
                if stop_at_rejection:
                    alive = alive[~(stage_ratios > thresholds[stage.start : stage.stop]).any(dim=1)]
                start = stage.stop
        finally:
            self.model.train(was_training)
        return ratios

    def _stage_log_probs(
        self, regions: list[RejectionRegion], alive: torch.Tensor, shared: dict[str, torch.Tensor], inputs: tuple
    ) -> dict[str, torch.Tensor]:
        """
        The log-likelihoods of the candidates `alive` under every model the `regions` compare, by adapter name.
        `p_theta` (when a region refers to it) and the models in `shared` are scored once, on the first stage that
        needs them (every candidate is alive then), and kept in `shared` for the later stages.
        """
        names = [name for region in regions for name in (region.adapter_name, region.reference_adapter)]
        needs_base = BASE_ADAPTER in names and BASE_ADAPTER not in shared
        names = [BASE_ADAPTER] * needs_base + [
            n for n in dict.fromkeys(names) if n not in shared and n != BASE_ADAPTER
        ]
        scored = sequence_log_probs(
            self.model, self.negative_models, names, alive, *inputs, self.temperature, self.scoring_batch_size
        )
        log_probs = dict(zip(names, scored, strict=True)) if names else {}
        if needs_base:
            shared[BASE_ADAPTER] = log_probs.pop(BASE_ADAPTER)
        return {**{name: values[alive] for name, values in shared.items()}, **log_probs}

    def rejects(self, log_ratios: torch.Tensor, regions: list[RejectionRegion] | None = None) -> torch.Tensor:
        """
        A candidate is rejected when any region's log-ratio exceeds its threshold (the active regions', or those of
        `regions`). NaN entries (regions a candidate was not scored under, see `stop_at_rejection`) never reject.
        """
        regions = self.active_regions if regions is None else regions
        thresholds = torch.tensor([region.threshold for region in regions], dtype=torch.float32)
        return (log_ratios > thresholds.to(log_ratios.device)).any(dim=1)

    @torch.no_grad()
    def propose(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generation_config: GenerationConfig,
        adapter: str | None = None,
        regions: list[RejectionRegion] | None = None,
    ) -> Proposal:
        """
        Sample one completion per row from the proposal (`p_theta`, or the distilled `proposal_adapter`) and decide,
        for each, whether the posterior accepts it. `adapter` and `regions` sample another adapter and decide by other
        regions (a distillation's intermediate proposals, see [`DistilledProposal`]).

        Generation computes the proposal's logits at every step already. For a float32 model whose logits fit in
        `MAX_GENERATION_LOGITS` (short completions, small vocabularies), the raw logits, before any logits processor
        or warper, are kept and give the candidates' log-likelihood under the proposal, and scoring skips that
        forward pass.
        They come from the KV-cached decoding path, which in float32 differs from the scoring pass by float rounding
        (at most 8e-6 nats on 4,096 addition-attack candidates); in half precision the two paths differ far more, so
        such models are always scored afresh, as are the candidates of a `proposal_sampler` (vLLM).
        """
        output_embeddings = self.model.get_output_embeddings().weight
        max_new_tokens = generation_config.max_new_tokens or generation_config.max_length - input_ids.size(1)
        num_logits = input_ids.size(0) * max_new_tokens * output_embeddings.size(0)
        adapter = self.proposal_adapter if adapter is None else adapter
        regions = self.active_regions if regions is None else regions
        keep_logits = (
            self.proposal_sampler is None
            and bool(regions)
            and output_embeddings.dtype == torch.float32
            and (num_logits <= MAX_GENERATION_LOGITS)
        )
        config = copy.deepcopy(generation_config)
        config.output_logits, config.return_dict_in_generate = keep_logits, True
        was_training = self.model.training
        self.model.eval()
        try:
            with only_adapter(self.model, self.negative_models, adapter):
                if self.proposal_sampler is not None:
                    completion_ids = self.proposal_sampler(adapter, input_ids, attention_mask)
                else:
                    output = self.model.generate(
                        input_ids=input_ids, attention_mask=attention_mask, generation_config=config
                    )
                    completion_ids = output.sequences[:, input_ids.size(1) :]
        finally:
            self.model.train(was_training)
        eos = generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        completion_mask = completion_mask_from_ids(completion_ids, eos)
        proposal_log_probs = None
        if keep_logits:
            # One generation step at a time, as a single row for TRL's row loop (see `completion_log_probs`).
            steps = zip(output.logits, completion_ids.T, completion_mask.T, strict=True)
            proposal_log_probs = sum(
                selective_log_softmax(logits[None], ids[None], self.temperature)[0] * mask
                for logits, ids, mask in steps
            ).float()
        log_ratios = self.log_ratios(
            input_ids,
            attention_mask,
            completion_ids,
            completion_mask,
            regions=regions,
            stop_at_rejection=True,
            proposal_log_probs=proposal_log_probs,
            proposal=adapter,
        )
        return Proposal(
            input_ids, attention_mask, completion_ids, completion_mask, log_ratios, ~self.rejects(log_ratios, regions)
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        max_sampling_attempts: int | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """
        Sample from the posterior, like [`~transformers.GenerationMixin.generate`]: returns `(B * n, P + C)`
        sequences (left-padded prompt, then completion padded with the pad token), every one accepted by all regions.

        Candidates are drawn from `p_theta` with the given sampling arguments and rejected until each requested sample
        is accepted. Low acceptance is met by oversampling; once `max_sampling_attempts` candidates per requested
        sample have been proposed in all, or as soon as the acceptance rate is below 1 in `max_sampling_attempts`
        with 95% confidence ([`acceptance_too_low`]), [`PosteriorAcceptanceError`] reports the acceptance rate
        instead of looping on. The bound is on the total, not per sample: at acceptance `a`, a sample takes a
        geometric number of attempts with mean `1 / a`, and a per-sample bound would fail some of many requested
        samples long before the total is out of proportion.
        """
        config = GenerationConfig.from_dict({**(generation_config or self.generation_config).to_dict(), **kwargs})
        copies = config.num_return_sequences or 1
        config.num_return_sequences = 1
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        input_ids = input_ids.repeat_interleave(copies, dim=0)
        attention_mask = attention_mask.repeat_interleave(copies, dim=0)
        max_attempts = max_sampling_attempts or self.max_sampling_attempts
        batch_limit = max(self.scoring_batch_size, input_ids.size(0))
        completions: dict[int, torch.Tensor] = {}

        def draw(stats) -> tuple[int, int, int]:
            # Oversample each pending row by the inverse of the acceptance seen so far, within the batch limit.
            pending = torch.tensor([i for i in range(input_ids.size(0)) if i not in completions])
            acceptance = (stats.accepted + 1) / (stats.proposed + 1)
            rows = pending.repeat_interleave(max(1, min(math.ceil(1 / acceptance), batch_limit // len(pending))))
            proposal = self.propose(input_ids[rows], attention_mask[rows], config)
            filled = len(completions)
            for j in proposal.accepted.nonzero().flatten().tolist():
                completions.setdefault(
                    int(rows[j]), proposal.completion_ids[j, : int(proposal.completion_mask[j].sum())]
                )
            return len(rows), int(proposal.accepted.sum()), len(completions) - filled

        stats = sample_until(input_ids.size(0), max_attempts, draw, "Posterior samples", self.disable_tqdm)
        if stats.kept < input_ids.size(0):
            raise PosteriorAcceptanceError(
                f"The posterior accepted {stats.accepted} of {stats.proposed} candidates (acceptance rate "
                f"{stats.acceptance:.2e}, below 1 in `max_sampling_attempts`={max_attempts} or out of its "
                f"{max_attempts} attempts per sample) and {input_ids.size(0) - stats.kept} requested samples are "
                f"still missing. Its {len(self.active_regions)} regions reject almost all of the proposal: raise "
                "`max_sampling_attempts`, or use fewer or smaller regions (e.g. a lower `target_rejection_rate`)."
            )
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        ordered = [completions[i] for i in range(input_ids.size(0))]
        return torch.cat([input_ids, pad(ordered, padding_value=pad_token_id).to(input_ids.device)], dim=1)

    def save_pretrained(self, save_directory: str, ledger: dict | None = None) -> None:
        """
        Save every region's adapter or separate model (one sub-folder each) and `banel_posterior.json` (thresholds
        and settings), crash-safe (see [`save_posterior`]). `ledger` is the ledger the regions were fit on, as
        [`~RewardLedger.fingerprint`] gives it: a run resumed from the folder checks that its ledger starts with it.
        """
        settings = {name: getattr(self, name) for name in SAVED_SETTINGS}
        save_posterior(self, save_directory, settings, ledger)

    @classmethod
    def from_pretrained(
        cls, pretrained_path: str, model: PreTrainedModel | PeftModel | str | None = None, **kwargs
    ) -> "BanelPosterior":
        """
        Load a posterior saved by [`~BanelPosterior.save_pretrained`] onto `model`, the proposal `p_theta` (a
        model, a model id or path; defaults to the base model recorded in the folder). `kwargs` go to the constructor.
        """
        model, regions, negative_models, settings = load_posterior(pretrained_path, model)
        return cls(model, regions, negative_models=negative_models, **{**settings, **kwargs})
