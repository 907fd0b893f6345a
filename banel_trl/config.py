"""Configuration of the [`BanelTrainer`]."""

import enum
import math
import numbers
import types
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType


THRESHOLD_TYPES = ("calibrated", "filter_factor")
NEGATIVE_SAMPLES = ("round", "all")
REFERENCE_MODELS = ("posterior", "proposal")

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


def _plain(value: Any) -> Any:
    """An enum's value (`"steps"` for `IntervalStrategy.STEPS`), to show a setting as the user wrote it."""
    return value.value if isinstance(value, enum.Enum) else value


def _type_error(name: str, value: Any, expected: str, fix: str) -> ValueError:
    return ValueError(f"`{name}` must be {expected}, got {value!r} of type {type(value).__name__}: {fix}.")


def _checked_integer(name: str, value: Any) -> int:
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
    raise _type_error(name, value, "an integer", fix)


def _checked_real(name: str, value: Any) -> float:
    """`value` if it is a finite real number (an `int` or `float`; a numpy scalar becomes a `float`)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _type_error(name, value, "a number", _NUMBER_FIX if isinstance(value, str) else "pass a number")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value}.")
    return value if isinstance(value, int | float) else float(value)


@dataclass
class BanelConfig(TrainingArguments):
    r"""
    Configuration class for the [`BanelTrainer`].

    BaNEL spends a hard budget of reward evaluations (NREs) in rounds. Each round samples candidates from the current
    posterior, pays one NRE per accepted and never-seen candidate, fits a fresh LoRA negative model `p_phi_k` on the
    failures, and adds the rejection region `R_k = {x : log p_phi_k(x) - log p_ref_k(x) > threshold_k}`. The reference
    `p_ref_k` is `p_theta` for round 0 and, from round 1 on with `reference_model="posterior"` (the default), a LoRA
    fit the same way on unevaluated samples of the posterior the failures came from (with `"proposal"`, `p_theta`).

    The optimisation arguments inherited from [`~transformers.TrainingArguments`] (`learning_rate`,
    `num_train_epochs`, `per_device_train_batch_size`, `gradient_accumulation_steps`, `lr_scheduler_type`, `optim`,
    ...) configure the maximum-likelihood fit of each round's negative model: `num_train_epochs` is the number of
    epochs per round, the knob that trades compute for NREs. Names shared with [`~trl.GRPOConfig`] keep their meaning.
    How the defaults were chosen, with the measurements behind them: docs/results/defaults.md.

    Parameters:
        > Budget and rounds

        max_reward_evaluations (`int`, *optional*, defaults to `7500`):
            Hard cap on the number of reward evaluations (NREs) of the whole run. No code path exceeds it; rejected and
            already-evaluated candidates cost nothing.
        samples_per_round (`int`, *optional*, defaults to `3750`):
            NREs spent per round (the paper's `m`): each round evaluates this many accepted, never-seen candidates
            before fitting its negative model. The number of rounds sets the sampling cost: with calibrated thresholds
            the posterior accepts about `(1 - first_region_rejection_rate) * (1 - target_rejection_rate) ** (k - 1)`
            of the proposals after `k` rounds, and a round ends early once acceptance falls below
            `1 / max_sampling_attempts`. The default spends the default budget in two rounds: one that fits the first
            region on samples of `p_theta`, one that evaluates the posterior it defines.
        num_rounds (`int`, *optional*):
            Number of rounds. Defaults to `ceil(max_reward_evaluations / samples_per_round)`.
        success_threshold (`float`, *optional*, defaults to `1.0`):
            A sample succeeds when its weighted reward reaches this value. Successes are recorded and reported, never
            trained on.
        reward_weights (`list[float]`, *optional*):
            Weights of the reward functions, as in GRPO. Defaults to 1 for each.

        > Model

        model_init_kwargs (`dict[str, Any]`, *optional*):
            Keyword arguments for [`~transformers.AutoModelForCausalLM.from_pretrained`], used when the `model`
            argument of the [`BanelTrainer`] is a string.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Whether to allow models and tokenizers that ship custom code.

        > Generation (the proposal `p_theta`)

        num_generations (`int`, *optional*, defaults to `8`):
            Completions sampled per prompt in a generation batch.
        generation_batch_size (`int`, *optional*, defaults to `64`):
            Candidates proposed per call to `generate`. Must be divisible by `num_generations`.
        max_completion_length (`int`, *optional*, defaults to `256`):
            Maximum length of a completion, in tokens.
        temperature, top_p, top_k, min_p, repetition_penalty, generation_kwargs, chat_template_kwargs:
            As in [`~trl.GRPOConfig`]. `temperature` also scales the logits of every likelihood BaNEL computes, so the
            negative models compare against the proposal actually sampled.
        max_sampling_attempts (`int`, *optional*, defaults to `10000`):
            Bound on rejection sampling: at most this many candidates are proposed per requested sample, in total over
            the samples requested (a round's evaluations, or a call to `generate`). When the posterior accepts less
            than one in this many, the round ends early (or `generate` raises) with the acceptance rate. Keep it well
            above `1 / acceptance`, the mean cost of an accepted sample, which the rejection rates set (see
            `samples_per_round`).

        > Negative models and rejection regions

        negative_samples (`str`, *optional*, defaults to `"round"`):
            Failures the negative model of round `k` is fit on: `"round"` (this round's only, i.e. samples of the
            current posterior) or `"all"` (every failure so far). `"round"` matches the samples the reference is fit on
            (`reference_model="posterior"`); against `p_theta` (`reference_model="proposal"`), `"all"` discriminated
            better.
        reference_model (`str`, *optional*, defaults to `"posterior"`):
            What the negative model of round `k` is compared with. `"proposal"`: `p_theta`, the paper's ratio
            `p_theta(x) / p_phi_k(x)`. `"posterior"`: from round 1 on, a second LoRA `p_ref_k`, fit the same way on
            as many fresh samples of the posterior the negatives came from; these samples are never evaluated (no NRE,
            only generations, and none that the ledger knows to be a success). A LoRA fit on posterior samples learns a
            smooth version of the posterior's shape, which against `p_theta` makes the region reject where the earlier
            regions kept the successes; `p_ref_k` learns the same shape, so `p_phi_k / p_ref_k` keeps what the failures
            teach (docs/concepts.md). Round 0's negatives are samples of `p_theta` itself, its own exact reference.
        reference_min_successes (`int`, *optional*, defaults to `10`):
            With `reference_model="posterior"`, a round from round 1 on adds its region only if its evaluated samples
            held at least this many successes. Its failures and the reference's samples come from the same posterior
            and differ by the successes alone: without enough of them the region fits noise, rejects successes as often
            as failures, and divides the acceptance by `1 / (1 - target_rejection_rate)`. A round without a region
            keeps its evaluations, which count against the budget.
        warm_start_negative_model (`bool`, *optional*, defaults to `False`):
            Initialise each round's LoRA adapter from the previous round's instead of afresh (at `p_theta`).
        threshold_type (`str`, *optional*, defaults to `"calibrated"`):
            `"calibrated"`: the threshold of region `k` is the `1 - target_rejection_rate` quantile of the log-ratios
            of failures held out of its fit, so that fraction of fresh failures lands inside the region whatever the
            scale of the log-ratios. `"filter_factor"`: reject when `p_phi_k(x) > filter_factor * p_ref_k(x)` (the
            paper's form when `p_ref_k` is `p_theta`).
        target_rejection_rate (`float`, *optional*, defaults to `0.9`):
            With `threshold_type="calibrated"`, the fraction of fresh failures (of the posterior the region was fit
            on) each region after the first rejects. Higher concentrates faster when the regions discriminate, but
            each region divides the acceptance by `1 / (1 - target_rejection_rate)`: for runs of more than two rounds,
            lower it (0.5) or raise `max_sampling_attempts`.
        first_region_rejection_rate (`float` or `None`, *optional*, defaults to `0.995`):
            With `threshold_type="calibrated"`, the fraction of fresh failures the first region rejects (`None`: the
            same as `target_rejection_rate`). The first region, fit on samples of `p_theta`, is a typicality filter: a
            deep cut keeps successes that are atypical samples of `p_theta` and rejects typical-looking ones, so use
            0.5 when successes may look typical. The posterior then accepts about `1 - first_region_rejection_rate` of
            the proposals, which `max_sampling_attempts` must allow.
        calibration_fraction (`float`, *optional*, defaults to `0.2`):
            With `threshold_type="calibrated"`, the share of each round's failures held out of the fit to set the
            threshold.
        filter_factor (`float`, *optional*, defaults to `1.0`):
            With `threshold_type="filter_factor"`, the paper's `1/tau`.
        length_normalize (`bool`, *optional*, defaults to `False`):
            Compare per-token (length-normalised) log-likelihoods instead of sequence log-likelihoods.
        scoring_batch_size (`int`, *optional*, defaults to `64`):
            Rows per forward pass when scoring candidates under `p_theta` and the regions (a candidate takes one row
            per model it is scored under; one a region rejects is not scored under the later ones).

        > Distillation (the paper's Algorithm 2)

        distill_posterior (`bool`, *optional*, defaults to `False`):
            After each round, fit a LoRA proposal `q_{k+1}` by maximum likelihood on unevaluated samples of the
            posterior (no NRE) and sample the next round from it. Round `k+1`'s negative model starts from `q_{k+1}`
            and its region is `log p_phi - log q_{k+1} > threshold`: each round is a round 0 against the model that
            drew its samples (`reference_model` does not apply), the acceptance stays near `1 - rejection rate`
            instead of multiplying down, and the run ends with one generator, a plain PEFT adapter (saved at the top
            of `output_dir` by `save_model`). Regions already distilled into the proposal stop rejecting unless
            `keep_distilled_regions`.
        distillation_samples (`int`, *optional*, defaults to `6000`):
            Unevaluated posterior samples each distillation is fit on (generations only, no NRE). Too few blur away the
            successes of a posterior that holds few of them (docs/results/addition_attack.md).
        distillation_epochs (`float`, *optional*):
            Epochs of each distillation fit. Defaults to `num_train_epochs`.
        distillation_warm_start (`bool`, *optional*, defaults to `True`):
            Start `q_{k+1}` from `q_k` (the posterior is `q_k` minus a region: a small change) instead of from
            `p_theta`.
        keep_distilled_regions (`bool`, *optional*, defaults to `False`):
            Keep rejecting with the regions already distilled into the proposal: exact filters on top of an
            approximate proposal, at the price of their acceptance.

        > Logging

        log_completions (`bool`, *optional*, defaults to `False`):
            Log a sample of evaluated completions with their rewards each round.
        num_completions_to_print (`int`, *optional*, defaults to `8`):
            Number of completions logged when `log_completions=True`.

    > [!NOTE]
    > These parameters have default values different from [`~transformers.TrainingArguments`]:
    > - `learning_rate`: Defaults to `1e-3` instead of `5e-5`.
    > - `num_train_epochs`: Defaults to `5.0` instead of `3.0`.
    > - `per_device_train_batch_size`: Defaults to `64` instead of `8`.
    > - `logging_steps`: Defaults to `10` instead of `500`.
    > - `save_strategy`: Defaults to `"no"` instead of `"steps"`.
    > - `remove_unused_columns`: Defaults to `False` instead of `True`.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + [
        "model_init_kwargs",
        "generation_kwargs",
        "chat_template_kwargs",
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
    samples_per_round: int = field(
        default=3750,
        metadata={"help": "NREs spent per round (accepted, never-seen candidates evaluated before each fit)."},
    )
    num_rounds: int | None = field(
        default=None,
        metadata={"help": "Number of rounds. Defaults to ceil(max_reward_evaluations / samples_per_round)."},
    )
    success_threshold: float = field(
        default=1.0,
        metadata={"help": "A sample succeeds when its weighted reward reaches this value."},
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weights of the reward functions. Defaults to 1 for each."},
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

    # Generation
    num_generations: int = field(
        default=8,
        metadata={"help": "Completions sampled per prompt in a generation batch."},
    )
    generation_batch_size: int = field(
        default=64,
        metadata={"help": "Candidates proposed per call to generate. Must be divisible by num_generations."},
    )
    max_completion_length: int = field(
        default=256,
        metadata={"help": "Maximum length of a completion, in tokens."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature; also scales the logits of every likelihood BaNEL computes."},
    )
    top_p: float = field(
        default=1.0,
        metadata={"help": "Nucleus sampling: cumulative probability of the tokens kept. Must be in (0, 1]."},
    )
    top_k: int = field(
        default=0,
        metadata={"help": "Top-k filtering of the proposal; 0 disables it."},
    )
    min_p: float | None = field(
        default=None,
        metadata={"help": "Minimum token probability, scaled by the probability of the most likely token."},
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "Penalty on tokens already present in the prompt and completion."},
    )
    generation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra keyword arguments for transformers.GenerationConfig; they override the above."},
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra keyword arguments for apply_chat_template on conversational prompts."},
    )
    max_sampling_attempts: int = field(
        default=10000,
        metadata={
            "help": "At most this many candidates are proposed per requested sample (in total over the samples "
            "requested) before the round ends early or generate raises. Keep it above 1 / acceptance."
        },
    )

    # Negative models and rejection regions
    negative_samples: str = field(
        default="round",
        metadata={
            "help": "Failures each negative model is fit on: 'round' (this round's, the samples the reference is fit "
            "on too) or 'all' (all so far)."
        },
    )
    reference_model: str = field(
        default="posterior",
        metadata={
            "help": "What each negative model is compared with: 'posterior' (from round 1 on, a LoRA fit on as many "
            "unevaluated samples of the posterior the negatives came from) or 'proposal' (p_theta, the paper's form)."
        },
    )
    reference_min_successes: int = field(
        default=10,
        metadata={
            "help": "With reference_model='posterior', a round from round 1 on adds its region only if it found at "
            "least this many successes: without them its region fits noise that only slows sampling."
        },
    )
    warm_start_negative_model: bool = field(
        default=False,
        metadata={"help": "Initialise each round's adapter from the previous round's instead of at p_theta."},
    )
    threshold_type: str = field(
        default="calibrated",
        metadata={
            "help": "'calibrated': threshold = quantile of held-out failures' log-ratios (scale-free); "
            "'filter_factor': reject when p_phi_k(x) > filter_factor * p_ref_k(x) (the paper's form, with p_theta)."
        },
    )
    target_rejection_rate: float = field(
        default=0.9,
        metadata={
            "help": "Calibrated thresholds: fraction of fresh failures each region after the first rejects, in "
            "(0, 1). Each region divides the acceptance by 1 / (1 - rate): lower it for runs of more than two rounds."
        },
    )
    first_region_rejection_rate: float | None = field(
        default=0.995,
        metadata={
            "help": "Calibrated thresholds: fraction of fresh failures the first region (fit on p_theta's own "
            "samples) rejects, in (0, 1); None: target_rejection_rate. A deep cut keeps only successes that are "
            "atypical samples of p_theta: use 0.5 when they may look typical."
        },
    )
    calibration_fraction: float = field(
        default=0.2,
        metadata={"help": "Calibrated thresholds: share of a round's failures held out of the fit, in (0, 1)."},
    )
    filter_factor: float = field(
        default=1.0,
        metadata={"help": "filter_factor thresholds: reject when p_phi_k(x) > filter_factor * p_ref_k(x); > 0."},
    )
    length_normalize: bool = field(
        default=False,
        metadata={"help": "Compare per-token log-likelihoods instead of sequence log-likelihoods."},
    )
    scoring_batch_size: int = field(
        default=64,
        metadata={"help": "Rows per forward pass when scoring candidates under p_theta and all regions."},
    )

    # Distillation (the paper's Algorithm 2)
    distill_posterior: bool = field(
        default=False,
        metadata={
            "help": "After each round, fit a LoRA proposal on unevaluated posterior samples and sample the next round "
            "from it (the paper's Algorithm 2): acceptance stops multiplying down, and the run ends with one adapter."
        },
    )
    distillation_samples: int = field(
        default=6000,
        metadata={
            "help": "Unevaluated posterior samples each distillation is fit on (no NRE). Too few blur away the "
            "successes of a posterior that holds few of them."
        },
    )
    distillation_epochs: float | None = field(
        default=None,
        metadata={"help": "Epochs of each distillation fit. Defaults to num_train_epochs."},
    )
    distillation_warm_start: bool = field(
        default=True,
        metadata={"help": "Start each distilled proposal from the previous one instead of from p_theta."},
    )
    keep_distilled_regions: bool = field(
        default=False,
        metadata={
            "help": "Keep rejecting with the regions already distilled into the proposal (exact filters, at the price "
            "of their acceptance) instead of only the newest one."
        },
    )

    # Logging
    log_completions: bool = field(
        default=False,
        metadata={"help": "Log a sample of evaluated completions with their rewards each round."},
    )
    num_completions_to_print: int = field(
        default=8,
        metadata={"help": "Number of completions logged when log_completions is True."},
    )

    def __post_init__(self):
        # Before TrainingArguments' checks: they compare values (a string fails there with a TypeError) and require an
        # eval strategy for options that BaNEL refuses altogether.
        self._check_types()
        self._refuse_evaluation()
        super().__post_init__()
        positive_ints = (
            "max_reward_evaluations",
            "samples_per_round",
            "num_generations",
            "generation_batch_size",
            "max_completion_length",
            "max_sampling_attempts",
            "scoring_batch_size",
        )
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.samples_per_round > self.max_reward_evaluations:
            raise ValueError(
                f"`max_reward_evaluations` ({self.max_reward_evaluations}) is smaller than one round "
                f"(`samples_per_round`={self.samples_per_round}): lower `samples_per_round` or raise the budget."
            )
        if self.num_rounds is None:
            self.num_rounds = math.ceil(self.max_reward_evaluations / self.samples_per_round)
        elif self.num_rounds < 1:
            raise ValueError(f"`num_rounds` must be a positive integer, got {self.num_rounds}.")
        if self.generation_batch_size % self.num_generations != 0:
            raise ValueError(
                f"`generation_batch_size` ({self.generation_batch_size}) must be divisible by `num_generations` "
                f"({self.num_generations})."
            )
        if self.negative_samples not in NEGATIVE_SAMPLES:
            raise ValueError(f"`negative_samples` must be one of {NEGATIVE_SAMPLES}, got {self.negative_samples!r}.")
        if self.reference_model not in REFERENCE_MODELS:
            raise ValueError(f"`reference_model` must be one of {REFERENCE_MODELS}, got {self.reference_model!r}.")
        if self.reference_min_successes < 0:
            raise ValueError(f"`reference_min_successes` must be >= 0, got {self.reference_min_successes}.")
        if self.threshold_type not in THRESHOLD_TYPES:
            raise ValueError(f"`threshold_type` must be one of {THRESHOLD_TYPES}, got {self.threshold_type!r}.")
        self._check_distillation()
        if self.first_region_rejection_rate is None:
            self.first_region_rejection_rate = self.target_rejection_rate
        for name in ("target_rejection_rate", "first_region_rejection_rate", "calibration_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in (0, 1), got {getattr(self, name)}.")
        if not self.filter_factor > 0.0:
            raise ValueError(f"`filter_factor` must be > 0, got {self.filter_factor}.")
        if not self.temperature > 0.0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0, got {self.top_k}.")

    def _check_distillation(self) -> None:
        """Fill in and check the distillation settings (see `distill_posterior`)."""
        if self.distillation_epochs is None:
            self.distillation_epochs = self.num_train_epochs
        if self.distillation_samples < 2:
            raise ValueError(f"`distillation_samples` must be at least 2, got {self.distillation_samples}.")
        if not self.distillation_epochs > 0:
            raise ValueError(f"`distillation_epochs` must be > 0, got {self.distillation_epochs}.")

    def _check_types(self) -> None:
        """
        Refuse a value of the wrong type for a number or flag of BanelConfig (the fields this class declares), naming
        the field, the value and its type, before a comparison fails with a `TypeError` or a wrong value is used.
        """
        for name, annotation in BanelConfig.__annotations__.items():
            kinds = annotation.__args__ if isinstance(annotation, types.UnionType) else (annotation,)
            value = getattr(self, name)
            if value is None and type(None) in kinds:
                continue
            if int in kinds:
                setattr(self, name, _checked_integer(name, value))
            elif float in kinds:
                setattr(self, name, _checked_real(name, value))
            elif bool in kinds and not isinstance(value, bool):
                raise _type_error(name, value, "True or False", "pass a bool (in YAML, true or false without quotes)")
            elif list[float] in kinds:
                if not isinstance(value, list | tuple):
                    raise _type_error(name, value, "a list of numbers", "pass one number per reward function")
                setattr(self, name, [_checked_real(f"{name}[{i}]", weight) for i, weight in enumerate(value)])

    def _refuse_evaluation(self) -> None:
        """
        Refuse the Trainer options with which `Trainer.train`, that fits each round's negative model, would call
        `evaluate` on its own: BaNEL's `evaluate` pays reward calls, outside the budget and the ledger.
        """
        offending = {name: off for name, off in EVALUATION_OPTIONS.items() if getattr(self, name) != off}
        offending |= {name: off for name, (on, off) in EVALUATION_VALUES.items() if getattr(self, name) in on}
        if offending:
            settings = ", ".join(f"`{name}={_plain(getattr(self, name))!r}`" for name in offending)
            fixes = ", ".join(f"`{name}={off!r}`" for name, off in offending.items())
            raise ValueError(
                f"BaNEL does not evaluate during training, but {settings} would make the Trainer call `evaluate` "
                "during each round's negative fit, and each evaluation pays reward calls outside the budget "
                f"(`max_reward_evaluations`) and the ledger. Set {fixes}, and call `trainer.evaluate()` after "
                "`train()` to measure the posterior's success rate."
            )
