"""The BaNEL posterior: the proposal p_theta restricted to the complement of every rejection region."""

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel
from trl.trainer.utils import pad, selective_log_softmax


POSTERIOR_CONFIG_NAME = "banel_posterior.json"
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch: p_theta


class PosteriorAcceptanceError(RuntimeError):
    """Raised when rejection sampling hits its attempt cap: the posterior accepts (almost) nothing."""


@dataclass
class RejectionRegion:
    """`R_k = {x : log p_phi_k(x) - log p_theta(x) > threshold}`; `p_phi_k` is the LoRA adapter `adapter_name`."""

    adapter_name: str
    threshold: float
    round: int


@dataclass
class Proposal:
    """A batch of candidates from p_theta with their log-ratios under each region, shape `(N, K)`."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    log_ratios: torch.Tensor
    accepted: torch.Tensor


def read_posterior_config(path: str) -> dict:
    with open(os.path.join(path, POSTERIOR_CONFIG_NAME)) as file:
        return json.load(file)


def read_regions(path: str) -> list[RejectionRegion]:
    """The regions listed in a saved posterior folder (whose adapters are complete: the list is written last)."""
    return [RejectionRegion(**region) for region in read_posterior_config(path)["regions"]]


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """1 for every completion token up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_token_ids), device=completion_ids.device))
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()
    return (eos_before == 0).long()


def completion_log_probs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    adapter_names: list[str] | None = None,
) -> torch.Tensor:
    """
    Per-token log-probabilities `(N, C)` of the completion given the prompt (0 on padding), with logits scaled by
    `temperature`. Prompts are left-padded and completions right-padded; positions follow the attention mask so a
    sequence scores the same whatever the padding of its batch. `adapter_names` gives each row its own LoRA adapter.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    extra = {} if adapter_names is None else {"adapter_names": adapter_names}
    num_completion_tokens = completion_ids.size(1)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_completion_tokens + 1,
        use_cache=False,
        **extra,
    ).logits[:, :-1]
    return selective_log_softmax(logits, completion_ids, temperature) * completion_mask


class BanelPosterior:
    r"""
    The BaNEL posterior `p(x) ∝ p_theta(x) · prod_k 1[x not in R_k]`, sampled exactly by rejection.

    `p_theta` is the base model with its adapters disabled; each region `R_k` is a LoRA adapter `p_phi_k` on the same
    base and a threshold: `x` is rejected when `log p_phi_k(x) - log p_theta(x) > threshold_k` for ANY `k` (computed on
    the completion, given the prompt). Scoring a candidate under `p_theta` and all `K` regions is a single batched
    forward, using PEFT's mixed-adapter batches.

    Args:
        model ([`~peft.PeftModel`]):
            The base model carrying one LoRA adapter per region.
        regions (`list[RejectionRegion]`, *optional*):
            The rejection regions, in the order they were added.
        temperature (`float`, *optional*, defaults to `1.0`):
            Temperature applied to the logits of every likelihood, the one the regions were fit with.
        length_normalize (`bool`, *optional*, defaults to `False`):
            Compare per-token mean log-likelihoods instead of sums.
        scoring_batch_size (`int`, *optional*, defaults to `64`):
            Rows per forward pass when scoring; each candidate takes `K + 1` rows.
        max_sampling_attempts (`int`, *optional*, defaults to `100`):
            Candidates proposed per requested sample before [`~BanelPosterior.generate`] gives up.
        generation_config ([`~transformers.GenerationConfig`], *optional*):
            Default sampling settings of [`~BanelPosterior.generate`]; defaults to the model's.
    """

    def __init__(
        self,
        model: PeftModel,
        regions: list[RejectionRegion] | None = None,
        temperature: float = 1.0,
        length_normalize: bool = False,
        scoring_batch_size: int = 64,
        max_sampling_attempts: int = 100,
        generation_config: GenerationConfig | None = None,
    ):
        self.model = model
        self.regions = list(regions or [])
        self.temperature = temperature
        self.length_normalize = length_normalize
        self.scoring_batch_size = scoring_batch_size
        self.max_sampling_attempts = max_sampling_attempts
        self.generation_config = generation_config or model.generation_config

    @property
    def thresholds(self) -> torch.Tensor:
        return torch.tensor([region.threshold for region in self.regions], dtype=torch.float32)

    def add_region(self, region: RejectionRegion) -> None:
        self.regions.append(region)

    @torch.no_grad()
    def log_ratios(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion_ids: torch.Tensor,
        completion_mask: torch.Tensor,
        regions: list[RejectionRegion] | None = None,
    ) -> torch.Tensor:
        """
        `log p_phi_k(x) - log p_theta(x)` for every candidate and region, shape `(N, K)` (divided by the completion
        length when `length_normalize`). All `K + 1` likelihoods of a candidate come from one mixed-adapter forward.
        """
        regions = self.regions if regions is None else regions
        num_samples, num_models = prompt_ids.size(0), len(regions) + 1
        if not regions:
            return torch.zeros(num_samples, 0, device=prompt_ids.device)
        names = [BASE_ADAPTER] + [region.adapter_name for region in regions]
        # Row r scores sample r % N under model r // N. Model-major rows keep each forward chunk to one or two
        # adapters: PEFT splits a mixed batch by adapter inside every LoRA layer, and fewer splits run faster.
        rows = torch.arange(num_samples * num_models, device=prompt_ids.device)
        sequence_log_probs = torch.empty(num_samples * num_models, device=prompt_ids.device)
        was_training = self.model.training
        self.model.eval()  # dropout off; PEFT only mixes adapters in eval mode
        try:
            for chunk in rows.split(self.scoring_batch_size):
                samples = chunk % num_samples
                token_log_probs = completion_log_probs(
                    self.model,
                    prompt_ids[samples],
                    prompt_mask[samples],
                    completion_ids[samples],
                    completion_mask[samples],
                    self.temperature,
                    adapter_names=[names[i] for i in (chunk // num_samples).tolist()],
                )
                sequence_log_probs[chunk] = token_log_probs.sum(dim=1).float()
        finally:
            self.model.train(was_training)
        sequence_log_probs = sequence_log_probs.view(num_models, num_samples).T
        ratios = sequence_log_probs[:, 1:] - sequence_log_probs[:, :1]
        if self.length_normalize:
            ratios = ratios / completion_mask.sum(dim=1, keepdim=True).clamp(min=1)
        return ratios

    def rejects(self, log_ratios: torch.Tensor) -> torch.Tensor:
        """A candidate is rejected when any region's log-ratio exceeds its threshold."""
        return (log_ratios > self.thresholds.to(log_ratios.device)).any(dim=1)

    @torch.no_grad()
    def propose(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generation_config: GenerationConfig
    ) -> Proposal:
        """Sample one completion per row from `p_theta` and decide, for each, whether the posterior accepts it."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                sequences = self.model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
                )
        finally:
            self.model.train(was_training)
        completion_ids = sequences[:, input_ids.size(1) :]
        eos = generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        completion_mask = completion_mask_from_ids(completion_ids, eos)
        log_ratios = self.log_ratios(input_ids, attention_mask, completion_ids, completion_mask)
        return Proposal(
            input_ids, attention_mask, completion_ids, completion_mask, log_ratios, ~self.rejects(log_ratios)
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
        is accepted. Low acceptance is met by oversampling; after `max_sampling_attempts` candidates per requested
        sample, [`PosteriorAcceptanceError`] reports the acceptance rate instead of looping on.
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
        attempts = torch.zeros(input_ids.size(0), dtype=torch.long)
        proposed = accepted = 0
        while len(completions) < input_ids.size(0):
            pending = torch.tensor([i for i in range(input_ids.size(0)) if i not in completions])
            if (attempts[pending] >= max_attempts).any():
                raise PosteriorAcceptanceError(
                    f"The posterior accepted {accepted} of {proposed} candidates (acceptance rate "
                    f"{accepted / proposed:.2e}) and {len(pending)} requested samples are still missing after "
                    f"{max_attempts} attempts each. Its {len(self.regions)} regions reject almost all of p_theta: "
                    "raise `max_sampling_attempts`, or use fewer or smaller regions (e.g. a lower "
                    "`target_rejection_rate`)."
                )
            # Oversample each pending row by the inverse of the acceptance seen so far, within the batch limit.
            acceptance = (accepted + 1) / (proposed + 1)
            per_row = max(1, min(math.ceil(1 / acceptance), batch_limit // len(pending)))
            rows = pending.repeat_interleave(per_row)
            proposal = self.propose(input_ids[rows], attention_mask[rows], config)
            attempts += torch.bincount(rows, minlength=input_ids.size(0))
            proposed += len(rows)
            accepted += int(proposal.accepted.sum())
            for j in proposal.accepted.nonzero().flatten().tolist():
                row = int(rows[j])
                if row not in completions:
                    length = int(proposal.completion_mask[j].sum())
                    completions[row] = proposal.completion_ids[j, :length]
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
        ordered = [completions[i] for i in range(input_ids.size(0))]
        return torch.cat([input_ids, pad(ordered, padding_value=pad_token_id).to(input_ids.device)], dim=1)

    def save_pretrained(self, save_directory: str) -> None:
        """
        Save every region's adapter (one sub-folder each) and `banel_posterior.json` (thresholds and settings). The
        JSON is written last and atomically, so a folder only ever lists regions whose adapters are complete.
        """
        os.makedirs(save_directory, exist_ok=True)
        if self.regions:
            self.model.save_pretrained(
                save_directory, selected_adapters=[region.adapter_name for region in self.regions]
            )
        config = {
            "regions": [asdict(region) for region in self.regions],
            "temperature": self.temperature,
            "length_normalize": self.length_normalize,
            "base_model_name_or_path": self.model.get_base_model().config._name_or_path,
        }
        temporary = os.path.join(save_directory, POSTERIOR_CONFIG_NAME + ".tmp")
        with open(temporary, "w") as file:
            json.dump(config, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, os.path.join(save_directory, POSTERIOR_CONFIG_NAME))

    @classmethod
    def from_pretrained(
        cls, pretrained_path: str, model: PreTrainedModel | PeftModel | str | None = None, **kwargs
    ) -> "BanelPosterior":
        """
        Load a posterior saved by [`~BanelPosterior.save_pretrained`] onto `model`, the proposal `p_theta` (a
        model, a model id or path; defaults to the base model recorded in the folder). `kwargs` go to the constructor.
        """
        config = read_posterior_config(pretrained_path)
        if model is None or isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model or config["base_model_name_or_path"])
        regions = read_regions(pretrained_path)
        for region in regions:
            adapter_path = os.path.join(pretrained_path, region.adapter_name)
            if isinstance(model, PeftModel):
                model.load_adapter(adapter_path, adapter_name=region.adapter_name)
            else:
                model = PeftModel.from_pretrained(model, adapter_path, adapter_name=region.adapter_name)
        if not isinstance(model, PeftModel):
            raise ValueError(f"{pretrained_path} holds no region: there is no adapter to load.")
        model.eval()
        settings = {"temperature": config["temperature"], "length_normalize": config["length_normalize"]}
        return cls(model, regions, **{**settings, **kwargs})
