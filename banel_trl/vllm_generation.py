"""vLLM as the proposal's sampler (GRPO's `use_vllm`): vLLM draws the candidates, transformers scores them."""

from dataclasses import dataclass, field

import torch
from trl.import_utils import is_vllm_available
from trl.trainer.utils import pad

from .regions import BASE_ADAPTER


VLLM_MODES = ("colocate", "server")
# SamplingParams keys BaNEL sets itself: the posterior needs one independent sample of the proposal per request.
REFUSED_SAMPLING_PARAMS = {
    "n": "each request must return one sample: raise `num_generations` instead",
    "best_of": "each request must return one sample: raise `num_generations` instead",
    "seed": "a fixed seed per request makes every completion of a prompt the same sample",
    "max_tokens": "set `max_completion_length` instead",
}


@dataclass
class VLLMArguments:
    r"""
    The vLLM arguments of [`BanelConfig`], GRPOConfig's names with their meaning there. vLLM only draws the proposal's
    candidates; the regions score them with transformers, in the trainer's own processes. vLLM starts from
    `p_theta`'s checkpoint (the model's path); once a distilled proposal takes over (`distill_posterior`), its adapter
    is merged and its weights pushed to vLLM once per round, as GRPO pushes a PEFT model's. Sleep mode, structured
    outputs and tensor parallelism are not supported (a region scores `p_theta`'s plain samples, one process each).
    """

    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Draw the candidates with vLLM instead of transformers' generate (`pip install banel_trl[vllm]`, "
            "a GPU); the regions still score them with transformers."
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "`colocate`: a vLLM engine in each training process; `server`: a `trl vllm-serve` server started "
            "with the same model (one training process)."
        },
    )
    vllm_model_impl: str = field(
        default="vllm", metadata={"help": "vLLM's model implementation: `vllm` or `transformers`."}
    )
    vllm_server_base_url: str | None = field(
        default=None,
        metadata={"help": "Server mode: base URL of the server; overrides vllm_server_host and vllm_server_port."},
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "Server mode: host of the server."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Server mode: port of the server."})
    vllm_server_timeout: float = field(
        default=240.0, metadata={"help": "Server mode: seconds to wait for the server before giving up."}
    )
    vllm_group_port: int = field(
        default=51216, metadata={"help": "Server mode: port of the group that pushes a distilled proposal's weights."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={"help": "Colocate mode: share of the GPU's memory vLLM reserves (weights and KV cache), in (0, 1]."},
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "Colocate mode: vLLM's context (longest prompt + max_completion_length); default: model's."},
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "Colocate mode: must be 1 (every process samples its own stream)."}
    )

    def check_vllm_arguments(self) -> None:
        """Refuse vLLM settings BaNEL cannot honour (with `generation_kwargs`, as vLLM reads it), naming the fix."""
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"`vllm_mode` must be one of {VLLM_MODES}, got {self.vllm_mode!r}.")
        if self.vllm_tensor_parallel_size != 1:
            raise ValueError(
                f"`vllm_tensor_parallel_size={self.vllm_tensor_parallel_size}` is not supported: every BaNEL process "
                "draws its own candidates, while tensor parallelism needs a group to draw the same ones. Run one "
                "process per GPU, or `vllm_mode='server'` with a tensor-parallel `trl vllm-serve`."
            )
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"`vllm_gpu_memory_utilization` must be in (0, 1], got {self.vllm_gpu_memory_utilization}."
            )
        if not self.use_vllm:
            return
        if not is_vllm_available():
            raise ImportError("`use_vllm=True` needs vLLM: `pip install banel_trl[vllm]` (on a machine with a GPU).")
        refused = sorted(set(self.generation_kwargs or {}) & set(REFUSED_SAMPLING_PARAMS))
        if refused:
            raise ValueError(
                f"`generation_kwargs` sets `{refused[0]}`, which vLLM must not take from it with `use_vllm`: "
                f"{REFUSED_SAMPLING_PARAMS[refused[0]]}."
            )


class VLLMSampler:
    """
    Draws one completion per prompt from the proposal with vLLM, through TRL's `VLLMGeneration` (GRPO's engine, in
    colocate or server mode), for [`BanelPosterior.propose`].

    vLLM holds `p_theta` from its checkpoint. The first time a distilled adapter proposes, it must be the model's
    active adapter: TRL merges it into the base, pushes the weights to vLLM and unmerges it. A run never goes back to
    `p_theta` once a distilled proposal took over, so vLLM is never asked to.

    Args:
        model ([`~peft.PeftModel`]):
            The trainer's model: `p_theta` with the run's adapters.
        accelerator ([`~accelerate.Accelerator`]):
            The run's processes.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Pads the completions.
        args ([`BanelConfig`]):
            The `vllm_*` settings and the sampling settings (`temperature`, `top_p`, `top_k`, `min_p`,
            `repetition_penalty`, `max_completion_length`, `generation_kwargs`, as vLLM `SamplingParams`).
    """

    def __init__(self, model, accelerator, tokenizer, args):
        from trl.generation.vllm_generation import VLLMGeneration

        if args.vllm_mode == "server" and accelerator.num_processes > 1:
            raise ValueError(
                "`vllm_mode='server'` with several training processes is not supported: each BaNEL process draws its "
                "own candidates, at its own pace, while a server call gathers every process. Use one process, or "
                "`vllm_mode='colocate'`."
            )
        if not model.name_or_path:
            raise ValueError(
                "`use_vllm` starts vLLM from the model's checkpoint, and this model has no path: save it with "
                "`save_pretrained` and pass that path as `model`."
            )
        self.pad_token_id = tokenizer.pad_token_id
        self.loaded = BASE_ADAPTER  # whose weights vLLM holds
        self.generation = VLLMGeneration(
            model=model,
            accelerator=accelerator,
            processing_class=tokenizer,
            mode=args.vllm_mode,
            server_base_url=args.vllm_server_base_url,
            server_host=args.vllm_server_host,
            server_port=args.vllm_server_port,
            server_timeout=args.vllm_server_timeout,
            group_port=args.vllm_group_port,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_length=args.vllm_max_model_length,
            max_num_seqs=args.generation_batch_size,
            model_impl=args.vllm_model_impl,
            trust_remote_code=args.trust_remote_code,
            repetition_penalty=args.repetition_penalty,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p,
            max_completion_length=args.max_completion_length,
            logprobs=None,  # the regions score every candidate with transformers
            generation_kwargs=args.generation_kwargs,
        )

    def __call__(self, adapter: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """
        Completion ids `(N, C)`, right-padded with the pad token, one per row of the left-padded prompts, sampled from
        the proposal `adapter` (`BASE_ADAPTER`: `p_theta`; otherwise the model's active adapter).
        """
        if adapter != self.loaded:
            if adapter == BASE_ADAPTER:
                raise RuntimeError(f"vLLM holds the distilled proposal {self.loaded!r} and cannot go back to p_theta.")
            self.generation.sync_weights()
            self.loaded = adapter
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
        _, completion_ids, _, _ = self.generation.generate(prompts, images=None, num_generations=1)
        completions = [torch.tensor(list(ids), dtype=torch.long) for ids in completion_ids]  # vLLM: any int sequence
        return pad(completions, padding_value=self.pad_token_id).to(input_ids.device)
