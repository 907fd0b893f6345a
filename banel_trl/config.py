"""Configuration of the [`BanelTrainer`]."""

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .config_checks import (
    check_distillation_memory,
    check_types,
    check_values,
    parse_negative_model_config,
    refuse_evaluation,
    refuse_unsupported_grpo_values,
    resolve_generation_batch_size,
    resolve_pad_to_multiple_of,
    resolve_rounds,
    warn_about_checkpoints,
)
from .generation_arguments import GenerationArguments
from .vllm_generation import VLLMArguments


# Counts that must be at least 1 when set (those that may be None are filled in from the others).
POSITIVE_INTS = (
    "max_reward_evaluations",
    "samples_per_round",
    "num_rounds",
    "num_generations",
    "num_generations_eval",
    "generation_batch_size",
    "steps_per_generation",
    "max_completion_length",
    "max_sampling_attempts",
    "per_device_eval_batch_size",
    "distillation_samples",
)


@dataclass
class BanelConfig(VLLMArguments, GenerationArguments, TrainingArguments):
    r"""
    Configuration class for the [`BanelTrainer`].

    BaNEL spends a hard budget of reward evaluations (NREs) in rounds. Each round samples candidates from the current
    posterior, pays one NRE per accepted and never-seen candidate, fits a fresh LoRA negative model `p_phi_k` on the
    failures, and adds the rejection region `R_k = {x : log p_phi_k(x) - log p_ref_k(x) > threshold_k}`. The reference
    `p_ref_k` is `p_theta` for round 0 and, from round 1 on, a LoRA fit the same way on unevaluated samples of the
    posterior the failures came from; the next round's paid samples keep, relax or retract each region (see
    [`RegionPolicy`], whose constants are the method's).

    The optimisation arguments inherited from [`~transformers.TrainingArguments`] (`learning_rate`,
    `num_train_epochs`, `per_device_train_batch_size`, `gradient_accumulation_steps`, `lr_scheduler_type`, `optim`,
    ...) configure the maximum-likelihood fit of each round's negative model: `num_train_epochs` is the number of
    epochs per round, the knob that trades compute for NREs. Names shared with [`~trl.GRPOConfig`] keep their meaning
    or take the BaNEL one below; docs/migrating_from_grpo.md lists every GRPOConfig field and what BaNEL does with it.
    How the defaults were chosen, with the measurements behind them: docs/results/defaults.md.

    Parameters:
        > Budget and rounds

        max_reward_evaluations (`int`, *optional*, defaults to `7500`):
            Hard cap on the number of reward evaluations (NREs) of the whole run. No code path exceeds it; rejected and
            already-evaluated candidates cost nothing.
        samples_per_round (`int`, *optional*):
            NREs spent per round (the paper's `m`): each round evaluates this many accepted, never-seen candidates
            before fitting its negative model. Defaults to `ceil(max_reward_evaluations / num_rounds)` (3750 for the
            default budget; 750 with `distill_posterior`). In the exact loop the number of rounds sets the sampling
            cost: with calibrated thresholds the posterior accepts about `(1 - first_region_rejection_rate) * (1 -
            target_rejection_rate) ** (k - 1)` of the proposals after `k` rounds, and a round ends early once
            acceptance falls below `1 / max_sampling_attempts`.
        num_rounds (`int`, *optional*):
            Number of rounds. Defaults to `ceil(max_reward_evaluations / samples_per_round)`, and when
            `samples_per_round` is not set either, to 2: one that fits the first region on samples of `p_theta`, one
            that evaluates the posterior it defines (10 with `distill_posterior`, whose rounds sample at acceptance 1).
        max_eval_reward_evaluations (`int`, *optional*):
            Hard cap on the reward evaluations of `evaluate()` over the whole run, apart from `max_reward_evaluations`:
            each is written to `banel_eval_ledger.jsonl` before it counts, and a sample whose reward the run already
            knows (from training or an earlier evaluation) costs nothing. `None`: `evaluate()` refuses to call the
            reward functions (for BaNEL's users an evaluation costs what a training evaluation costs).
        success_threshold (`float`, *optional*, defaults to `1.0`):
            A sample succeeds when its weighted reward reaches this value. Successes are recorded and reported, never
            trained on.
        reward_weights (`list[float]`, *optional*):
            Weights of the reward functions, as in GRPO. Defaults to 1 for each.
        multi_objective_aggregation (`str`, *optional*, defaults to `"sum_then_normalize"`):
            How several rewards combine, as in GRPO: a sample's reward is the weighted sum of its rewards, a success
            when it reaches `success_threshold`. GRPO's `"normalize_then_sum"` is refused: normalising each reward
            across a prompt's group would make a sample's success depend on the samples drawn with it.

        > Model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for [`~transformers.AutoModelForCausalLM.from_pretrained`], used when the `model`
            argument of the [`BanelTrainer`] is a string.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to allow models and tokenizers that ship custom code.
        disable_dropout (`bool`, *optional*, defaults to `False`):
            Set the dropout of `p_theta` to 0 (TRL's `disable_dropout_in_model`), so that the negative fits, which run
            in training mode, learn from the same likelihoods the regions are scored with (without dropout). The LoRA
            adapters' own dropout is `peft_config.lora_dropout`.

        > Generation (the proposal `p_theta`)

        num_generations, num_generations_eval, generation_batch_size, steps_per_generation, shuffle_dataset,
        max_completion_length, temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs,
        chat_template_kwargs, cache_implementation, pad_to_multiple_of:
            GRPOConfig's sampling arguments, with their meaning there (see [`GenerationArguments`]).
        max_sampling_attempts (`int`, *optional*, defaults to `10000`):
            Bound on rejection sampling: at most this many candidates are proposed per requested sample, in total over
            the samples requested (a round's evaluations, or a call to `generate`). When the posterior accepts less
            than one in this many, the round ends early (or `generate` raises) with the acceptance rate. Keep it well
            above `1 / acceptance`, the mean cost of an accepted sample, which the rejection rates set (see
            `samples_per_round`).
        use_vllm, vllm_mode, vllm_model_impl, vllm_server_*, vllm_group_port, vllm_gpu_memory_utilization,
        vllm_max_model_length, vllm_tensor_parallel_size:
            As in [`~trl.GRPOConfig`]: vLLM draws the candidates, the regions score them with transformers (see
            [`VLLMArguments`]). `generation_kwargs` are then vLLM `SamplingParams`, as in GRPO.

        > Rejection regions

        target_rejection_rate (`float`, *optional*, defaults to `0.9`):
            The share of fresh failures each region after the first rejects: its threshold is the `1 -
            target_rejection_rate` quantile of the log-ratios of failures held out of its fit, whatever their scale.
            In the exact loop each region divides the acceptance by `1 / (1 - target_rejection_rate)`: for more than
            two rounds, lower it (0.5) or raise `max_sampling_attempts`.
        first_region_rejection_rate (`float` or `None`, *optional*, defaults to `0.995`):
            The share of fresh failures the first region rejects (`None`: `target_rejection_rate`). The first region,
            fit on samples of `p_theta`, is a typicality filter: a deep cut keeps successes that are atypical samples
            of `p_theta` and rejects typical-looking ones, so use 0.5 when successes may look typical. The posterior
            then accepts about `1 - first_region_rejection_rate` of the proposals, which `max_sampling_attempts` must
            allow.
        negative_model (`str`, *optional*, defaults to `"lora"`):
            The form of each region's negative model `p_phi_k` and of its reference `p_ref_k`. `"lora"`: a LoRA adapter
            (`peft_config`) beside the frozen proposal, the cheapest in memory. The paper's negative model is a
            separate generative model: `"copy"` fine-tunes every weight of a copy of the proposal, `"scratch"` trains
            the proposal's architecture from random weights on the failures alone. Both hold a whole model per region
            in memory and save it whole in the posterior's folder. The exact loop only.
        negative_model_config (`dict[str, Any]` or `str`, *optional*):
            With `negative_model="scratch"`, overrides of `p_theta`'s config for a smaller negative model than a whole
            `p_theta` per region, e.g. `{"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 1024}`
            (JSON on the command line). It shares `p_theta`'s tokenizer, so `vocab_size` stays.

        > Distillation (the paper's Algorithm 2)

        distill_posterior (`bool`, *optional*, defaults to `False`):
            After each round, fit a LoRA proposal `q_{k+1}` by maximum likelihood on unevaluated samples of the
            posterior (no NRE), reached in stages at most 20 proposals per sample, and sample the next round from it.
            Round `k+1`'s negative model starts from `q_{k+1}` and its region is `log p_phi - log q_{k+1} >
            threshold`: each round is a round 0 against the model that drew its samples, every round samples at
            acceptance 1, and the run ends with one generator, a plain PEFT adapter (saved at the top of `output_dir`
            by `save_model`). `False`: the exact loop (the paper's Algorithm 1), whose result is `p_theta` cut by every
            region, sampled by rejection ([`BanelPosterior`]); docs/results/addition_attack.md compares the two.
        distillation_samples (`int`, *optional*):
            Unevaluated posterior samples each distillation is fit on for `num_train_epochs` (generations only, no
            NRE). Defaults to 8 per NRE of a round (6,000 for rounds of 750). Too few blur the successes away.

        > Logging

        log_completions (`bool`, *optional*, defaults to `False`):
            Log a sample of evaluated completions with their rewards each round.
        num_completions_to_print (`int` or `None`, *optional*, defaults to `8`):
            Number of completions logged when `log_completions=True`; `None`: all of the round's (GRPO's default).

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `learning_rate`: Defaults to `1e-3` instead of `5e-5`.
    > - `num_train_epochs`: Defaults to `5.0` instead of `3.0`.
    > - `per_device_train_batch_size`: Defaults to `64` instead of `8`.
    > - `per_device_eval_batch_size`: Defaults to `64` instead of `8`: the rows per forward pass when scoring
    >   candidates under `p_theta` and the regions (one row per model a candidate is scored under).
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `save_strategy`: Defaults to `"no"` instead of `"steps"`.
    > - `remove_unused_columns`: Defaults to `False` instead of `True`.
    """

    # The settings that decide what a run samples, pays for and fits: its manifest records them, and a resume that
    # changes one is not the same run (`max_sampling_attempts`, `num_rounds`, logging and saving may change).
    _RECORDED_FIELDS = [
        "learning_rate",
        "num_train_epochs",
        "per_device_train_batch_size",
        "samples_per_round",
        "success_threshold",
        "reward_weights",
        "disable_dropout",
        "target_rejection_rate",
        "first_region_rejection_rate",
        "negative_model",
        "negative_model_config",
        "distill_posterior",
        "distillation_samples",
        "num_generations",
        "generation_batch_size",
        "shuffle_dataset",
        "max_completion_length",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "generation_kwargs",
        "chat_template_kwargs",
        "seed",
        "world_size",  # each process samples its own stream: another number of processes draws other candidates
        "max_steps",
        "gradient_accumulation_steps",
        "optim",
        "lr_scheduler_type",
        "weight_decay",
        "warmup_steps",
        "max_grad_norm",
        "full_determinism",
    ]
    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + [
        "model_init_kwargs",
        "generation_kwargs",
        "chat_template_kwargs",
        "negative_model_config",
    ]

    # Defaults of TrainingArguments that BaNEL changes: each round fits a small LoRA on a few hundred sequences.
    learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Learning rate of the negative model's LoRA fit, per round."},
    )
    num_train_epochs: float = field(
        default=5.0,
        metadata={"help": "Epochs of the negative model's fit per round: more compute, same NREs."},
    )
    per_device_train_batch_size: int = field(
        default=64,
        metadata={"help": "Batch size per device of the negative model's fit."},
    )
    per_device_eval_batch_size: int = field(
        default=64,
        metadata={"help": "Rows per forward pass when scoring candidates under p_theta and the regions."},
    )
    logging_steps: float = field(
        default=10,
        metadata={"help": "Log every X optimisation steps of the negative fit (rounds are always logged)."},
    )
    save_strategy: str = field(
        default="no",
        metadata={
            "help": "Checkpointing of the Trainer's inner loop. BaNEL saves its own state every round (ledger and "
            "posterior in `output_dir`), which is what resuming uses, so the default is `'no'`."
        },
    )
    remove_unused_columns: bool | None = field(
        default=False,
        metadata={"help": "Keep every dataset column: they are passed to the reward functions, as in GRPO."},
    )

    # Budget and rounds
    max_reward_evaluations: int = field(
        default=7500,
        metadata={"help": "Hard cap on reward evaluations (NREs) over the whole run."},
    )
    samples_per_round: int | None = field(
        default=None,
        metadata={
            "help": "NREs spent per round (accepted, never-seen candidates evaluated before each fit). Defaults to "
            "ceil(max_reward_evaluations / num_rounds).",
        },
    )
    num_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Number of rounds. Defaults to ceil(max_reward_evaluations / samples_per_round), or 2 when "
            "samples_per_round is not set either (10 with distill_posterior)."
        },
    )
    max_eval_reward_evaluations: int | None = field(
        default=None,
        metadata={
            "help": "Budget of evaluate()'s reward calls over the run, apart from the training budget (its own "
            "ledger). None: evaluate() refuses to call the reward functions."
        },
    )
    success_threshold: float = field(
        default=1.0,
        metadata={"help": "A sample succeeds when its weighted reward reaches this value."},
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of the reward functions. Defaults to 1 for each."},
    )
    multi_objective_aggregation: str = field(
        default="sum_then_normalize",
        metadata={
            "help": "Only 'sum_then_normalize': a success is a weighted sum of rewards reaching success_threshold; "
            "'normalize_then_sum' would make a sample's success depend on the other samples of its prompt."
        },
    )

    # Model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for AutoModelForCausalLM.from_pretrained when `model` is a string."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow models and tokenizers that ship custom code."},
    )
    disable_dropout: bool = field(
        default=False,
        metadata={
            "help": "Set p_theta's dropout to 0, so the negative fits learn the likelihoods the regions score.",
        },
    )

    # Generation: GenerationArguments, and the bound on rejection sampling
    max_sampling_attempts: int = field(
        default=10000,
        metadata={
            "help": "At most this many candidates are proposed per requested sample (in total over the samples "
            "requested) before the round ends early or generate raises. Keep it above 1 / acceptance."
        },
    )

    # Rejection regions
    target_rejection_rate: float = field(
        default=0.9,
        metadata={
            "help": "Fraction of fresh failures each region after the first rejects, in (0, 1). In the exact loop "
            "each region divides the acceptance by 1 / (1 - rate): lower it for more than two rounds.",
        },
    )
    first_region_rejection_rate: float | None = field(
        default=0.995,
        metadata={
            "help": "Fraction of fresh failures the first region (fit on p_theta's own samples) rejects, in (0, 1); "
            "None: target_rejection_rate. A deep cut keeps only successes that are atypical samples of p_theta: use "
            "0.5 when they may look typical.",
        },
    )
    negative_model: str = field(
        default="lora",
        metadata={
            "help": "Each region's negative model: 'lora', an adapter beside the frozen proposal; 'copy', a full "
            "fine-tune of a copy of it; 'scratch', its architecture trained from random weights on the failures.",
        },
    )
    negative_model_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "With negative_model='scratch', overrides of p_theta's config: a smaller negative model.",
        },
    )

    # Distillation (the paper's Algorithm 2)
    distill_posterior: bool = field(
        default=False,
        metadata={
            "help": "After each round, fit a LoRA proposal on unevaluated posterior samples and sample the next round "
            "from it (the paper's Algorithm 2): the run ends with one adapter. False: the exact loop (Algorithm 1).",
        },
    )
    distillation_samples: int | None = field(
        default=None,
        metadata={
            "help": "Unevaluated posterior samples each distillation is fit on (no NRE). Defaults to 8 per NRE of a "
            "round. Too few blur away the successes of a posterior that holds few of them.",
        },
    )

    # Logging
    log_completions: bool = field(
        default=False,
        metadata={"help": "Log a sample of evaluated completions with their rewards each round."},
    )
    num_completions_to_print: int | None = field(
        default=8,
        metadata={"help": "Number of completions logged when log_completions is True; None: all of the round's."},
    )

    def __post_init__(self):
        # Before TrainingArguments' checks: they compare values (a string fails there with a TypeError) and require an
        # eval strategy for options that BaNEL refuses altogether.
        parse_negative_model_config(self)
        check_types(
            self,
            {**VLLMArguments.__annotations__, **GenerationArguments.__annotations__, **BanelConfig.__annotations__},
        )
        refuse_evaluation(self)
        super().__post_init__()
        for name in POSITIVE_INTS:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        resolve_rounds(self)
        resolve_generation_batch_size(self)
        resolve_pad_to_multiple_of(self)
        refuse_unsupported_grpo_values(self)
        warn_about_checkpoints(self)
        if self.first_region_rejection_rate is None:
            self.first_region_rejection_rate = self.target_rejection_rate
        self.check_vllm_arguments()
        check_values(self)
        check_distillation_memory(self)
