"""Configuration of the [`BanelTrainer`]."""

import math
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments


THRESHOLD_TYPES = ("calibrated", "filter_factor")
NEGATIVE_SAMPLES = ("round", "all")
REFERENCE_MODELS = ("posterior", "proposal")


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
        if self.eval_strategy != "no":
            raise ValueError(
                "BaNEL does not evaluate during the negative fits: evaluation costs reward calls. Leave "
                "`eval_strategy='no'` and call `trainer.evaluate()` when you want the posterior's success rate."
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
        if self.reward_weights is not None and not all(math.isfinite(w) for w in self.reward_weights):
            raise ValueError(f"`reward_weights` must be finite numbers, got {self.reward_weights}.")
        if not math.isfinite(self.success_threshold):
            raise ValueError(f"`success_threshold` must be a finite number, got {self.success_threshold}.")
