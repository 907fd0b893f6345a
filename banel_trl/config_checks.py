"""
Checking and filling in the values of a [`BanelConfig`]: numbers and flags of the right type, the sizes BaNEL derives
when a (GRPO) config leaves them unset, and the values of GRPO's options that BaNEL cannot honour, refused with the
reason (docs/migrating_from_grpo.md lists every GRPOConfig field and what BaNEL does with it).
"""

import enum
import json
import logging
import math
import numbers
import os
import types
from typing import Any

from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType


logger = logging.getLogger(__name__)


# BaNEL's options that take one of a few values.
CHOICES = {"negative_model": ("lora", "copy", "scratch")}

# Options with which `Trainer.train`, which fits each round's negative model, would call `evaluate` itself (or that
# only act on its results), each with the value that turns it off. BaNEL's `evaluate` pays reward calls.
EVALUATION_OPTIONS = {
    "eval_strategy": IntervalStrategy.NO.value,
    "eval_steps": None,
    "eval_delay": 0,
    "eval_on_start": False,
    "load_best_model_at_end": False,
    "metric_for_best_model": None,
    "greater_is_better": None,
}
# Values of other options that need evaluation metrics: a save strategy and LR schedulers stepped on them.
EVALUATION_VALUES = {
    "save_strategy": ((SaveStrategy.BEST.value,), SaveStrategy.NO.value),
    "lr_scheduler_type": ((SchedulerType.REDUCE_ON_PLATEAU.value, SchedulerType.GREEDY.value), "linear"),
}


_NUMBER_FIX = "pass a number, not a string (in YAML, write it without quotes)"


def plain(value: Any) -> Any:
    """An enum's value (`"steps"` for `IntervalStrategy.STEPS`), to show a setting as the user wrote it."""
    return value.value if isinstance(value, enum.Enum) else value


def type_error(name: str, value: Any, expected: str, fix: str) -> ValueError:
    return ValueError(f"`{name}` must be {expected}, got {value!r} of type {type(value).__name__}: {fix}.")


def checked_integer(name: str, value: Any) -> int:
    """
    `value` as an `int`. An integral float (`20.0`, `1e4`) is exact and accepted; a fractional one is refused, never
    rounded: a budget of `20.5` must not pay 21 reward evaluations.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        fix = f"counts are whole numbers, pass {math.floor(value)} or {math.ceil(value)}"
    elif isinstance(value, str):
        fix = _NUMBER_FIX
    else:
        fix = "pass an integer"
    raise type_error(name, value, "an integer", fix)


def checked_real(name: str, value: Any) -> float:
    """`value` if it is a finite real number (an `int` or `float`; a numpy scalar becomes a `float`)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise type_error(name, value, "a number", _NUMBER_FIX if isinstance(value, str) else "pass a number")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value}.")
    return value if isinstance(value, int | float) else float(value)


def check_types(args, annotations: dict[str, Any]) -> None:
    """
    Refuse a value of the wrong type for a number or flag of `args` among the fields `annotations` declares
    (BanelConfig's own), naming the field, the value and its type, before a comparison fails with a `TypeError` or a
    wrong value is used; integral floats become ints and numbers floats.
    """
    for name, annotation in annotations.items():
        kinds = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
        value = getattr(args, name)
        if (value is None and type(None) in kinds) or (isinstance(value, str) and str in kinds):
            continue
        if int in kinds:
            setattr(args, name, checked_integer(name, value))
        elif float in kinds:
            setattr(args, name, checked_real(name, value))
        elif bool in kinds and not isinstance(value, bool):
            raise type_error(name, value, "True or False", "pass a bool (in YAML, true or false without quotes)")
        elif list[float] in kinds:
            if not isinstance(value, list | tuple):
                raise type_error(name, value, "a list of numbers", "pass one number per reward function")
            setattr(args, name, [checked_real(f"{name}[{i}]", weight) for i, weight in enumerate(value)])


def refuse_evaluation(args) -> None:
    """
    Refuse the Trainer options with which `Trainer.train`, that fits each round's negative model, would call
    `evaluate` on its own: BaNEL's `evaluate` pays reward calls, outside the budget and the ledger.
    """
    offending = {name: off for name, off in EVALUATION_OPTIONS.items() if getattr(args, name) != off}
    offending |= {name: off for name, (on, off) in EVALUATION_VALUES.items() if getattr(args, name) in on}
    if offending:
        settings = ", ".join(f"`{name}={plain(getattr(args, name))!r}`" for name in offending)
        fixes = ", ".join(f"`{name}={off!r}`" for name, off in offending.items())
        raise ValueError(
            f"BaNEL does not evaluate during training, but {settings} would make the Trainer call `evaluate` "
            "during each round's negative fit, and each evaluation pays reward calls outside the budget "
            f"(`max_reward_evaluations`) and the ledger. Set {fixes}, and call `trainer.evaluate()` after "
            "`train()` to measure the posterior's success rate."
        )


# The largest batch of candidates per call to `generate` when neither `generation_batch_size` nor
# `steps_per_generation` is set: GENERATION_BATCH_TOKENS completion tokens (4,096 completions of 16 tokens, 256 of the
# default 256), at most MAX_GENERATION_BATCH_SIZE candidates, in whole prompts of `num_generations`. A rejection loop
# proposes only what it needs ([`CandidateSampler.batch_size`]), so a large bound costs nothing where acceptance is
# high, and where it is low (5e-4) every batch is full: on the addition attacker's 12-token completions, 1.9x the
# accepted samples per second of GRPO's 64 (docs/results/performance.md, "Generation batch").
GENERATION_BATCH_TOKENS = 2**16
MAX_GENERATION_BATCH_SIZE = 4096
# Rounds a budget is split into when neither `samples_per_round` nor `num_rounds` is set: ten in the distilled loop,
# two in the exact loop (one that fits the first region on samples of `p_theta`, one that evaluates the posterior it
# defines); docs/results/addition_attack.md measures both. Each distillation is fit on this many unevaluated samples
# per NRE of a round, unless `distillation_samples` is set: its cost stays proportional to the budget.
DEFAULT_NUM_ROUNDS = {True: 10, False: 2}
DISTILLATION_SAMPLES_PER_EVALUATION = 8
MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize",)
NEURON_PAD_TO_MULTIPLE_OF = 128  # GRPO's `pad_to_multiple_of="auto"` on Neuron, which compiles once per input shape
PAGED_GENERATION = (
    "transformers' paged generation is continuous batching (`generate_batch`), which takes unpadded prompts and "
    "returns each request's tokens apart, while BaNEL's posterior proposes with `generate` on a left-padded batch and "
    "scores exactly those tokens against every region, and `generate(cache_implementation='paged')` drops the "
    "attention mask of such a batch"
)


def resolve_rounds(args) -> None:
    """
    Fill in `samples_per_round` and `num_rounds` from the budget: a budget alone is spent in `DEFAULT_NUM_ROUNDS`
    rounds of `ceil(max_reward_evaluations / num_rounds)`; a given `samples_per_round` sets `num_rounds` to
    `ceil(max_reward_evaluations / samples_per_round)`. Then `distillation_samples`, from `samples_per_round`.
    """
    budget = args.max_reward_evaluations
    if args.samples_per_round is None:
        num_rounds = args.num_rounds or DEFAULT_NUM_ROUNDS[bool(args.distill_posterior)]
        args.samples_per_round = math.ceil(budget / num_rounds)
    elif args.samples_per_round > budget:
        raise ValueError(
            f"`max_reward_evaluations` ({budget}) is smaller than one round (`samples_per_round`="
            f"{args.samples_per_round}): lower `samples_per_round` or raise the budget."
        )
    if args.num_rounds is None:
        args.num_rounds = math.ceil(budget / args.samples_per_round)
    if args.distillation_samples is None:
        args.distillation_samples = DISTILLATION_SAMPLES_PER_EVALUATION * args.samples_per_round


def resolve_generation_batch_size(args) -> None:
    """
    Fill in `generation_batch_size`: from `steps_per_generation` as GRPO does (`per_device_train_batch_size *
    world_size * steps_per_generation`), or else the largest batch of `GENERATION_BATCH_TOKENS` completion tokens
    (at most `MAX_GENERATION_BATCH_SIZE` candidates, a multiple of `num_generations`). Refuse both set (as GRPO), and a
    batch that would split a prompt's completions.
    """
    num_generations = args.num_generations
    largest = min(GENERATION_BATCH_TOKENS // max(args.max_completion_length, 1), MAX_GENERATION_BATCH_SIZE)
    default = max(largest // num_generations, 1) * num_generations
    if args.steps_per_generation is None and args.generation_batch_size is None:
        args.generation_batch_size = default
        return
    if args.steps_per_generation is None:
        source, fix = "`generation_batch_size`", f"Set it to a multiple of {num_generations}"
    elif args.generation_batch_size is not None:
        raise ValueError(
            f"`generation_batch_size` ({args.generation_batch_size}) and `steps_per_generation` "
            f"({args.steps_per_generation}) cannot both be set, as in GRPO: `steps_per_generation` sets "
            "`generation_batch_size = per_device_train_batch_size * world_size * steps_per_generation`. Remove one."
        )
    else:
        args.generation_batch_size = args.per_device_train_batch_size * args.world_size * args.steps_per_generation
        source = (
            f"`per_device_train_batch_size * world_size * steps_per_generation` = {args.per_device_train_batch_size} "
            f"* {args.world_size} * {args.steps_per_generation}"
        )
        fix = (
            "Choose `per_device_train_batch_size` and `steps_per_generation` so that the product is a multiple of "
            f"{num_generations}"
        )
    if args.generation_batch_size % num_generations != 0:
        raise ValueError(
            f"{source} ({args.generation_batch_size}) must be divisible by `num_generations` ({num_generations}): a "
            f"batch proposes `num_generations` completions for each of its prompts. {fix}, or leave "
            f"`generation_batch_size` and `steps_per_generation` unset: the batch is then {default}, sized for "
            f"`max_completion_length`={args.max_completion_length}."
        )


def resolve_pad_to_multiple_of(args) -> None:
    """GRPO's `pad_to_multiple_of`: `"auto"` is 128 on Neuron and `None` elsewhere; a string from the CLI is parsed."""
    value = args.pad_to_multiple_of
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            value = NEURON_PAD_TO_MULTIPLE_OF if args.device.type == "neuron" else None
        elif text in ("none", "null", ""):
            value = None
        elif text.isdigit():
            value = int(text)
        else:
            raise ValueError(f"`pad_to_multiple_of` must be a positive integer, 'auto' or None, got {value!r}.")
    if value is not None and value < 1:
        raise ValueError(f"`pad_to_multiple_of` must be a positive integer, got {value}.")
    args.pad_to_multiple_of = value


def refuse_unsupported_grpo_values(args) -> None:
    """Refuse the values of GRPO options that BaNEL cannot honour, each with the reason and the fix."""
    if args.multi_objective_aggregation == "normalize_then_sum":
        raise ValueError(
            "`multi_objective_aggregation='normalize_then_sum'` is not supported: it normalises each reward across "
            "the group of completions of a prompt, which would make a sample's success depend on the samples drawn "
            "with it. BaNEL judges each sample alone: a success is a weighted sum of its rewards (`reward_weights`) "
            "that reaches `success_threshold`. Use 'sum_then_normalize', GRPO's default."
        )
    if args.multi_objective_aggregation not in MULTI_OBJECTIVE_AGGREGATIONS:
        raise ValueError(
            f"`multi_objective_aggregation` must be one of {MULTI_OBJECTIVE_AGGREGATIONS}, got "
            f"{args.multi_objective_aggregation!r}."
        )
    paged = [
        name for name in ("use_transformers_paged", "use_transformers_continuous_batching") if getattr(args, name)
    ]
    paged += ["cache_implementation='paged'"] if args.cache_implementation == "paged" else []
    if paged:
        raise ValueError(
            f"{', '.join(f'`{name}`' for name in paged)} is not supported: {PAGED_GENERATION}. Remove it; "
            "`generation_batch_size` sets how many candidates one call to `generate` proposes."
        )


def warn_about_checkpoints(args) -> None:
    """
    Warn that a `save_strategy` writes no Trainer checkpoint: a BaNEL run saves itself (ledger, regions) to
    `output_dir` after every round and resumes from there, replaying an unfinished fit, so a checkpoint taken within
    a negative fit would hold nothing a resume uses.
    """
    if args.save_strategy != SaveStrategy.NO:
        logger.warning(
            f"`save_strategy={args.save_strategy.value!r}` writes no checkpoint: BaNEL saves the run (ledger, regions) "
            "to `output_dir` after every round, and `train()` resumes from there."
        )


def check_values(args) -> None:
    """Refuse the values of BaNEL's own options outside their choices or ranges, naming the option."""
    for name, choices in CHOICES.items():
        if getattr(args, name) not in choices:
            raise ValueError(f"`{name}` must be one of {choices}, got {getattr(args, name)!r}.")
    if args.negative_model != "lora" and args.distill_posterior:
        raise ValueError(
            f"`negative_model={args.negative_model!r}` needs the exact loop: the distilled loop starts each negative "
            "model from the distilled proposal, a LoRA adapter. Set `distill_posterior=False` or `negative_model='lora'`."
        )
    if args.negative_model_config is not None and args.negative_model != "scratch":
        raise ValueError(
            "`negative_model_config` sets the architecture of a negative model trained from scratch: set "
            f"`negative_model='scratch'` (now {args.negative_model!r}) or drop it."
        )
    for name in ["target_rejection_rate", "first_region_rejection_rate"]:
        if getattr(args, name) is not None and not 0.0 < getattr(args, name) < 1.0:
            raise ValueError(f"`{name}` must be in (0, 1), got {getattr(args, name)}.")
    if args.do_eval and args.max_eval_reward_evaluations is None:
        raise ValueError(
            "`do_eval` measures the posterior with the reward functions after training, which costs reward calls: "
            "set `max_eval_reward_evaluations`, their own budget (or drop `do_eval`)."
        )
    if args.max_eval_reward_evaluations is not None and args.max_eval_reward_evaluations < 0:
        raise ValueError(
            f"`max_eval_reward_evaluations` must be >= 0 or None, got {args.max_eval_reward_evaluations}."
        )
    if args.distillation_samples < 2:
        raise ValueError(f"`distillation_samples` must be at least 2, got {args.distillation_samples}.")
    if not args.temperature > 0.0:
        raise ValueError(f"`temperature` must be > 0, got {args.temperature}.")
    if not 0.0 < args.top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1], got {args.top_p}.")
    if args.top_k < 0:
        raise ValueError(f"`top_k` must be >= 0, got {args.top_k}.")


# Bytes an unevaluated distillation sample takes while its fit runs (its token ids as Python ints, the collated rows),
# per token of prompt and completion: a generous bound, to refuse a `distillation_samples` that cannot fit in memory.
BYTES_PER_SAMPLE_TOKEN = 128
PROMPT_TOKENS_ALLOWANCE = 64
# Candidates a distillation stage proposes at most per sample wanted, all held in memory until the stage ends (see
# `DistilledProposal`).
STAGE_PROPOSALS = 5


def parse_negative_model_config(args) -> None:
    """
    Parse `negative_model_config` (JSON on the command line) into a dict of config attributes, before
    TrainingArguments would raise a bare `JSONDecodeError`; refuse anything else, naming the option and the fix.
    """
    value = args.negative_model_config
    fix = 'pass a dict of p_theta config attributes, e.g. `{"num_hidden_layers": 2}` (JSON on the command line)'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"`negative_model_config` is not valid JSON ({error}): {fix}.") from None
    if value is not None and not (isinstance(value, dict) and all(isinstance(key, str) for key in value)):
        raise ValueError(f"`negative_model_config` must be a dict, got {value!r}: {fix}.")
    args.negative_model_config = value


def check_distillation_memory(args) -> None:
    """Refuse `distillation_samples` that would not fit in this machine's memory, before anything is paid."""
    if not args.distill_posterior:
        return
    tokens = args.distillation_samples * STAGE_PROPOSALS * (args.max_completion_length + PROMPT_TOKENS_ALLOWANCE)
    needed = tokens * BYTES_PER_SAMPLE_TOKEN
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available:
        raise ValueError(
            f"`distillation_samples={args.distillation_samples}` would hold about {needed / 2**30:.0f} GiB of "
            f"candidates in memory for each distillation, more than this machine's {available / 2**30:.0f} GiB: "
            "lower it."
        )
