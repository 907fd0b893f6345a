"""Configuration of the [`BanelTrainer`]."""

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .config_checks import (
    check_types,
    check_values,
    refuse_evaluation,
    refuse_unsupported_grpo_values,
    resolve_generation_batch_size,
    resolve_pad_to_multiple_of,
    resolve_rounds,
    warn_about_checkpoints,
)
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
    "scoring_batch_size",
)


@dataclass
class BanelConfig(VLLMArguments, TrainingArguments):
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
            default budget). The number of rounds sets the sampling cost: with calibrated thresholds the posterior
            accepts about `(1 - first_region_rejection_rate) * (1 - target_rejection_rate) ** (k - 1)` of the
            proposals after `k` rounds, and a round ends early once acceptance falls below `1 / max_sampling_attempts`.
        num_rounds (`int`, *optional*):
            Number of rounds. Defaults to `ceil(max_reward_evaluations / samples_per_round)`, and when
            `samples_per_round` is not set either, to 2: one that fits the first region on samples of `p_theta`, one
            that evaluates the posterior it defines.
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

        num_generations (`int`, *optional*, defaults to `8`):
            Completions sampled per prompt in a generation batch.
        num_generations_eval (`int`, *optional*):
            Accepted samples per prompt that `evaluate()` draws and scores. Defaults to `num_generations`.
        generation_batch_size (`int`, *optional*):
            Candidates proposed per call to `generate`; must be divisible by `num_generations`. Defaults to
            `per_device_train_batch_size * world_size * steps_per_generation` when `steps_per_generation` is set (as in
            GRPO), else to the smallest multiple of `num_generations` that is at least 64.
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
        retraction_p_value (`float`, *optional*, defaults to `0.05`):
            A region stays only if the next round's paid samples, drawn with it, succeed more often than the paid
            samples it was fit on, drawn without it (one-sided Fisher exact test at this p-value); otherwise the next
            round retracts it (it stops rejecting) and adds no region of its own, since its samples came from the
            retracted posterior. When successes look like ordinary samples a region cannot tell them apart and cuts
            them with the failures; the paid evidence then sends the posterior back to where it did not lose.
            With `relaxed_rejection_rate` set, such a region is relaxed instead of retracted, and retracted only if the
            round after shows it lowered the success rate (the same test, the other way). `None` keeps every region
            as fit. The exact loop only: a distilled proposal has the region in its weights.
        relaxed_rejection_rate (`float` or `None`, *optional*, defaults to `0.95`):
            The shallower cut a region falls back to when the next round's paid samples do not show it helped (see
            `retraction_p_value`): it then rejects this share of the failures held out of its fit, scored with
            `relaxed_kappa`. A deep cut keeps atypical successes; a shallow one with `kappa` above 1 keeps successes
            that are merely less likely under the proposal, which a round's few successes cannot show. It is
            retracted instead if it scores the successes paid in the region's own round (never trained on) higher
            than those failures, so that it rejects them more (one-sided Mann-Whitney U test at `retraction_p_value`).
            `None` retracts such a region.
            With `threshold_type="filter_factor"` it is retracted.
        relaxed_kappa (`float`, *optional*, defaults to `2.0`):
            The `kappa` of a relaxed region's score (see `relaxed_rejection_rate`).
        negative_model (`str`, *optional*, defaults to `"lora"`):
            The form of each region's negative model `p_phi_k` (and of its reference `p_ref_k` from round 1 on, with
            `reference_model="posterior"`). `"lora"`: a LoRA adapter (`peft_config`) beside the frozen proposal, the
            cheapest in memory. The paper's negative model is a separate generative model: `"copy"` fine-tunes every
            weight of a copy of the proposal, `"scratch"` trains the proposal's architecture from random weights on
            the failures alone, so its ratio to `p_theta` is not a reweighting of `p_theta`'s own likelihood. Both hold
            a whole model per region in memory and save it whole in the posterior's folder. The exact loop only.
        negative_model_config (`dict[str, Any]` or `str`, *optional*):
            With `negative_model="scratch"`, overrides of `p_theta`'s config for a smaller negative model than a whole
            `p_theta` per region, e.g. `{"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 1024}`
            (JSON on the command line). It shares `p_theta`'s tokenizer, so `vocab_size` stays.
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
        kappa (`float`, *optional*, defaults to `1.0`):
            Exponent of the negative model in a region's score, `kappa * log p_phi_k(x) - log p_ref_k(x)` (the reviewed
            paper's `p_theta / p_phi^kappa`). Above 1 the score leans on `p_ref_k`'s own likelihood: the region then
            also rejects what the proposal finds typical (docs/results/addition_attack.md measures it).
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
        num_completions_to_print (`int` or `None`, *optional*, defaults to `8`):
            Number of completions logged when `log_completions=True`; `None`: all of the round's (GRPO's default).

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
            "ceil(max_reward_evaluations / num_rounds)."
        },
    )
    num_rounds: int | None = field(
        default=None,
        metadata={
            "help": "Number of rounds. Defaults to ceil(max_reward_evaluations / samples_per_round), or 2 when "
            "samples_per_round is not set either."
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
        metadata={"help": "Set p_theta's dropout to 0, so the negative fits learn the likelihoods the regions score."},
    )

    # Generation
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
            "help": "Candidates proposed per call to generate, a multiple of num_generations. Defaults to "
            "per_device_train_batch_size * world_size * steps_per_generation, or the smallest multiple >= 64."
        },
    )
    steps_per_generation: int | None = field(
        default=None,
        metadata={"help": "GRPO's way to size the generation batch (see generation_batch_size); both cannot be set."},
    )
    shuffle_dataset: bool = field(
        default=True,
        metadata={
            "help": "Shuffle each round's prompts from its seed (reproducible); False: in dataset order, cycling."
        },
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
        metadata={
            "help": "Extra keyword arguments for transformers.GenerationConfig (vLLM's SamplingParams with use_vllm); "
            "they override the above."
        },
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Extra keyword arguments for apply_chat_template on conversational prompts."},
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
    retraction_p_value: float | None = field(
        default=0.05,
        metadata={
            "help": "Retract a region unless the next round's paid samples succeed more often than those it was fit "
            "on (one-sided Fisher test at this p-value): it never costs what it cannot show. None: keep all regions."
        },
    )
    relaxed_rejection_rate: float | None = field(
        default=0.95,
        metadata={
            "help": "Relax a region the next round does not show to help to this shallower cut (scored with "
            "relaxed_kappa) instead of retracting it; it is retracted if it then shows a loss. None: retract it."
        },
    )
    relaxed_kappa: float = field(
        default=2.0,
        metadata={"help": "The kappa of a relaxed region's score (see relaxed_rejection_rate); > 0."},
    )
    negative_model: str = field(
        default="lora",
        metadata={
            "help": "Each region's negative model: 'lora', an adapter beside the frozen proposal; 'copy', a full "
            "fine-tune of a copy of it; 'scratch', its architecture trained from random weights on the failures."
        },
    )
    negative_model_config: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "With negative_model='scratch', overrides of p_theta's config: a smaller negative model."},
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
    kappa: float = field(
        default=1.0,
        metadata={
            "help": "Exponent of p_phi in a region's score kappa * log p_phi - log p_ref (the paper's p_phi^kappa)."
        },
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
    num_completions_to_print: int | None = field(
        default=8,
        metadata={"help": "Number of completions logged when log_completions is True; None: all of the round's."},
    )

    def __post_init__(self):
        # Before TrainingArguments' checks: they compare values (a string fails there with a TypeError) and require an
        # eval strategy for options that BaNEL refuses altogether.
        check_types(self, {**VLLMArguments.__annotations__, **BanelConfig.__annotations__})
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
        self._check_distillation()
        self.check_vllm_arguments()
        check_values(self)

    def _check_distillation(self) -> None:
        """Fill in and check the distillation settings (see `distill_posterior`)."""
        if self.distillation_epochs is None:
            self.distillation_epochs = self.num_train_epochs
        if self.distillation_samples < 2:
            raise ValueError(f"`distillation_samples` must be at least 2, got {self.distillation_samples}.")
        if not self.distillation_epochs > 0:
            raise ValueError(f"`distillation_epochs` must be > 0, got {self.distillation_epochs}.")
