"""GRPOConfig's arguments for sampling the proposal `p_theta`, as [`BanelConfig`] takes them."""

from dataclasses import dataclass, field


@dataclass
class GenerationArguments:
    r"""
    The sampling arguments of [`BanelConfig`]: GRPOConfig's names, with their meaning there unless said otherwise.

    Parameters:
        num_generations (`int`, *optional*, defaults to `8`):
            Completions sampled per prompt in a generation batch.
        num_generations_eval (`int`, *optional*):
            Accepted samples per prompt that `evaluate()` draws and scores. Defaults to `num_generations`.
        generation_batch_size (`int`, *optional*):
            The most candidates proposed per call to `generate` (a rejection loop proposes what it still needs at the
            acceptance it has seen, up to this); must be divisible by `num_generations`. Defaults to
            `per_device_train_batch_size * world_size * steps_per_generation` when `steps_per_generation` is set (as in
            GRPO), else to the largest batch of 65,536 completion tokens, at most 4,096 candidates (4,096 for
            completions of up to 16 tokens, 256 for the default `max_completion_length`).
        steps_per_generation (`int`, *optional*):
            GRPO's other way to size the generation batch (see `generation_batch_size`); both cannot be set.
        shuffle_dataset (`bool`, *optional*, defaults to `True`):
            Each round takes prompts from the dataset in an order shuffled from its seed (reshuffled every pass).
            `False`: in the dataset's order, from the first prompt, cycling.
        max_completion_length (`int`, *optional*, defaults to `256`):
            Maximum length of a completion, in tokens.
        temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs, chat_template_kwargs:
            As in [`~trl.GRPOConfig`]. `temperature` also scales the logits of every likelihood BaNEL computes, so the
            negative models compare against the proposal actually sampled.
        cache_implementation (`str`, *optional*):
            Cache implementation of `generate` (`transformers.GenerationConfig.cache_implementation`), as in GRPO.
            `"paged"` is refused, as `use_transformers_paged` is.
        pad_to_multiple_of (`int` or `str`, *optional*):
            Pad the prompt and completion ids of the generation batches and of the negative fits' batches to a multiple
            of this, for accelerators that compile once per shape. GRPO's `"auto"`: 128 on Neuron, else no padding.
        use_transformers_paged, use_transformers_continuous_batching (`bool`, *optional*, defaults to `False`):
            Refused when `True`: transformers' paged generation (continuous batching) takes unpadded prompts and
            returns each request's tokens apart, while the posterior proposes with `generate` on a left-padded batch
            and scores exactly the tokens it sampled.
    """

    num_generations: int = field(
        default=8,
        metadata={"help": "Completions sampled per prompt in a generation batch."},
    )
    num_generations_eval: int | None = field(
        default=None,
        metadata={
            "help": "Samples per prompt evaluate() scores (fewer: fewer reward calls). Defaults to num_generations."
        },
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Most candidates proposed per call to generate, a multiple of num_generations. Defaults to "
            "per_device_train_batch_size * world_size * steps_per_generation, or 65,536 completion tokens (<= 4,096).",
        },
    )
    steps_per_generation: int | None = field(
        default=None,
        metadata={"help": "GRPO's way to size the generation batch (see generation_batch_size); both cannot be set."},
    )
    shuffle_dataset: bool = field(
        default=True,
        metadata={
            "help": "Shuffle each round's prompts from its seed (reproducible); False: in dataset order, cycling.",
        },
    )
    max_completion_length: int = field(
        default=256,
        metadata={"help": "Maximum length of a completion, in tokens."},
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature; also scales the logits of every likelihood BaNEL computes.",
        },
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "Nucleus sampling: cumulative probability of the tokens kept. Must be in (0, 1].",
        },
    )
    top_k: int = field(
        default=0,
        metadata={"help": "Top-k filtering of the proposal; 0 disables it."},
    )
    min_p: float | None = field(
        default=None,
        metadata={
            "help": "Minimum token probability, scaled by the probability of the most likely token.",
        },
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "Penalty on tokens already present in the prompt and completion."},
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra keyword arguments for transformers.GenerationConfig (vLLM's SamplingParams with use_vllm); "
            "they override the above.",
        },
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra keyword arguments for apply_chat_template on conversational prompts.",
        },
    )
    cache_implementation: str | None = field(
        default=None,
        metadata={"help": "KV cache implementation of generate (e.g. 'static'), for faster generation; as in GRPO."},
    )
    pad_to_multiple_of: int | str | None = field(
        default=None,
        metadata={
            "help": "Pad generation and negative-fit batches to a multiple of this, for accelerators that compile "
            "once per shape; 'auto': 128 on Neuron, else none."
        },
    )
    use_transformers_paged: bool = field(
        default=False,
        metadata={"help": "Refused if True: the posterior scores the left-padded batch that generate sampled."},
    )
    use_transformers_continuous_batching: bool = field(
        default=False,
        metadata={"help": "Refused if True: the posterior scores the left-padded batch that generate sampled."},
    )
