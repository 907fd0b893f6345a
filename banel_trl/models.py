"""The model stack: the frozen proposal `p_theta`, its tokenizer, and the LoRA adapters BaNEL fits on top of it."""

import copy
import logging
import os
import shutil
import tempfile

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)
from trl.trainer.utils import disable_dropout_in_model


logger = logging.getLogger(__name__)


def region_adapter_name(round_index: int) -> str:
    """The adapter of round `round_index`'s negative model `p_phi_k`."""
    return f"region_{round_index}"


def reference_adapter_name(round_index: int) -> str:
    """The adapter of round `round_index`'s reference `p_ref_k`, when it is a model of the posterior."""
    return f"reference_{round_index}"


def region_model_name(round_index: int) -> str:
    """The separate negative model `p_phi_k` of round `round_index` (see `BanelConfig.negative_model`)."""
    return f"negative_model_{round_index}"


def reference_model_name(round_index: int) -> str:
    """The separate reference `p_ref_k` of round `round_index`, when it is a model of the posterior."""
    return f"reference_model_{round_index}"


def negative_model_like(model: PeftModel, overrides: dict | None = None) -> PreTrainedModel:
    """
    A separate model of the architecture of `model`'s base `p_theta` (with the config `overrides` of
    `BanelConfig.negative_model_config`), from random weights (seeded by the caller), in its dtype, on its device,
    trainable.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = scratch_model_config(base.config, overrides or {})
    separate = AutoModelForCausalLM.from_config(config, dtype=base.dtype)
    return separate.to(base.device).requires_grad_(True)


def scratch_model_config(config: PretrainedConfig, overrides: dict) -> PretrainedConfig:
    """
    `p_theta`'s `config` with `overrides` (see `BanelConfig.negative_model_config`), checked by building the model on
    the meta device. Fewer layers get as many `layer_types` when `p_theta`'s are all of one type. An override that is
    not an attribute of the config, changes the vocabulary, or that the config refuses is refused, naming the option.
    """
    option = f"`negative_model_config={overrides}`"
    unknown = [key for key in overrides if not hasattr(config, key)]
    if unknown:
        raise ValueError(f"{option}: {unknown} are not attributes of p_theta's {type(config).__name__}.")
    for key, value in overrides.items():
        current = getattr(config, key)
        integer = isinstance(current, int) and not isinstance(current, bool)
        if integer and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{option}: `{key}` must be a positive integer, as in p_theta's config ({current}).")
    if "vocab_size" in overrides:
        raise ValueError(f"{option}: the negative model scores p_theta's tokens; drop `vocab_size`.")
    values = {**config.to_dict(), **overrides}
    values.pop("quantization_config", None)  # a model trained from scratch is not quantized
    layer_types = values.get("layer_types")
    if (
        "num_hidden_layers" in overrides
        and "layer_types" not in overrides
        and layer_types
        and len(set(layer_types)) == 1
    ):
        values["layer_types"] = layer_types[:1] * overrides["num_hidden_layers"]
    try:
        scratch = type(config).from_dict(values)
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(scratch)
    except Exception as error:
        raise ValueError(f"{option} gives no {type(config).__name__} model: {error}") from None
    return scratch


def check_negative_model(model: PreTrainedModel, args) -> None:
    """Refuse a `negative_model` that `p_theta` cannot give (see `BanelConfig.negative_model`), naming the fix."""
    if args.negative_model == "copy" and getattr(model, "hf_quantizer", None) is not None:
        raise ValueError(
            "`negative_model='copy'` fine-tunes every weight of a copy of p_theta, which is quantized here. Use "
            "`negative_model='scratch'` (a smaller model: `negative_model_config`) or `'lora'`."
        )
    if args.negative_model_config is not None:
        scratch_model_config(model.config, args.negative_model_config)


def proposal_copy(model: PeftModel) -> PreTrainedModel:
    """`p_theta` as a separate, trainable model: a copy of `model` with its LoRA adapters unloaded by PEFT."""
    return copy.deepcopy(model).unload().requires_grad_(True)


def proposal_adapter_name(round_index: int) -> str:
    """The adapter of the proposal distilled for round `round_index` (see `BanelConfig.distill_posterior`)."""
    return f"proposal_{round_index}"


# Model types with Mamba layers, whose `out_proj` and `conv1d` PEFT's LoRA refuses to wrap.
MAMBA_MODEL_TYPES = ("falcon_h1", "mamba", "mamba2", "falcon_mamba", "nemotron_h")


def default_peft_config(model: PreTrainedModel) -> LoraConfig:
    """The negative model's LoRA when none is given: every linear layer PEFT can wrap in `model`, rank 16."""
    is_mamba = getattr(model.config, "model_type", None) in MAMBA_MODEL_TYPES
    return LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules="all-linear",
        exclude_modules=["out_proj", "conv1d"] if is_mamba else None,
        task_type="CAUSAL_LM",
    )


def load_proposal(
    model: str | PreTrainedModel | PeftModel, args, quantization_config: BitsAndBytesConfig | None = None
) -> PreTrainedModel:
    """
    The proposal `p_theta`, frozen: `model` itself, or loaded from a model id or path with the [`BanelConfig`]'s
    `model_init_kwargs` and `quantization_config` (float32 unless asked otherwise, as GRPOTrainer). A
    [`~peft.PeftModel`] is merged into its base first: its adapter is part of `p_theta`. With `disable_dropout`, its
    dropout is set to 0, as GRPOTrainer does: the negative fits run in training mode on top of it.
    """
    if isinstance(model, str):
        init_kwargs = {key: value for key, value in (args.model_init_kwargs or {}).items() if value is not None}
        init_kwargs.setdefault("dtype", torch.float32)
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        if quantization_config is not None:
            init_kwargs["quantization_config"] = quantization_config
        model = AutoModelForCausalLM.from_pretrained(model, **init_kwargs)
    elif args.model_init_kwargs is not None or quantization_config is not None:
        logger.warning("`model_init_kwargs` and `quantization_config` are ignored: the model is already instantiated.")
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if args.disable_dropout:
        disable_dropout_in_model(model)
    return model


def load_tokenizer(tokenizer: PreTrainedTokenizerBase | None, model: PreTrainedModel, args) -> PreTrainedTokenizerBase:
    """
    The proposal's tokenizer (loaded from the model when `None`), set up for generation: left padding, and the EOS
    token as pad token when it has none.
    """
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ValueError("The tokenizer has neither a pad token nor an EOS token: set `tokenizer.pad_token`.")
    tokenizer.padding_side = "left"
    return tokenizer


def load_model_stack(
    model, args, quantization_config, tokenizer: PreTrainedTokenizerBase | None, peft_config: PeftConfig | None
) -> tuple[PeftModel, PreTrainedTokenizerBase, PeftConfig]:
    """
    The run's model stack: `p_theta` (see [`load_proposal`]) checked against `negative_model`, its tokenizer, and the
    PEFT model that carries the run's adapters (`peft_config`, by default [`default_peft_config`]). Seeds first, as
    GRPOTrainer does: PEFT initialises adapters randomly.
    """
    set_seed(args.seed)
    model = load_proposal(model, args, quantization_config)
    check_negative_model(model, args)
    tokenizer = load_tokenizer(tokenizer, model, args)
    peft_config = peft_config or default_peft_config(model)
    return get_peft_model(model, peft_config, adapter_name=region_adapter_name(0)), tokenizer, peft_config


def refuse_grpo_only_arguments(optimizers: tuple, **hooks) -> None:
    """
    Refuse `optimizers` (each round trains new adapter parameters) and GRPO's agentic generation hooks (`tools`,
    `rollout_func`, `environment_factory`) when given.
    """
    if optimizers != (None, None):
        raise ValueError(
            "BanelTrainer creates a new optimizer every round, for that round's new adapter: pass `optim`, "
            "`optim_args`, `learning_rate` and `lr_scheduler_type` in BanelConfig instead of `optimizers`."
        )
    given = sorted(name for name, value in hooks.items() if value is not None)
    if given:
        raise ValueError(
            f"BanelTrainer does not take GRPO's {', '.join(f'`{name}`' for name in given)}: BaNEL samples `p_theta` "
            "itself and must score exactly what it sampled, so generation cannot go through tools, a custom rollout "
            "or an environment. Drop these arguments; put the environment's judgement in a reward function."
        )


def save_adapter_as_model(model: PeftModel, adapter_name: str, directory: str) -> None:
    """
    Save the LoRA adapter `adapter_name` of `model` as a standalone PEFT model at the top of `directory`
    (`adapter_config.json`, `adapter_model.safetensors`), written by PEFT itself: `AutoPeftModelForCausalLM`, a
    `pipeline` or an inference server that loads LoRA adapters sample it without banel_trl.
    """
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as staging:
        model.save_pretrained(staging, selected_adapters=[adapter_name])
        saved = os.path.join(staging, adapter_name) if adapter_name != "default" else staging
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.move(os.path.join(saved, name), os.path.join(directory, name))
