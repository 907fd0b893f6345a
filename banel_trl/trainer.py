"""The BaNEL trainer: post-training from failed attempts only, under a hard budget of reward evaluations."""

import logging
import os
import time
from collections.abc import Callable

from datasets import Dataset
from peft import PeftConfig, PeftModel, get_peft_model
from transformers import (
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import TrainOutput, speed_metrics
from trl.data_utils import is_conversational

from .callbacks import BanelCallback, is_per_fit
from .collect import RoundCollector
from .config import BanelConfig
from .data import prompt_dataset
from .distillation import DistilledProposal
from .distributed import on_main_process
from .evaluation import success_metrics
from .fitting import ModelFitter
from .hub import PAPER, TAGS, write_model_card
from .ledger import RewardLedger
from .manifest import FORCE, open_run_folder, run_manifest
from .metrics import log_round_completions, round_metrics
from .models import (
    check_negative_model,
    default_peft_config,
    load_proposal,
    load_tokenizer,
    refuse_grpo_only_arguments,
    region_adapter_name,
    save_adapter_as_model,
)
from .posterior import BanelPosterior
from .region_policy import RegionPolicy
from .regions import BASE_ADAPTER, RejectionRegion
from .rewards import RewardEvaluator, RewardFunc, check_reward_weights, load_reward_funcs, reward_func_name
from .sampling import (
    DISTILLATION_SEED_OFFSET,
    EVALUATION_SEED_OFFSET,
    REFERENCE_SEED_OFFSET,
    CandidateSampler,
    generation_config,
)
from .vllm_generation import VLLMSampler


logger = logging.getLogger(__name__)


class BanelTrainer(Trainer):
    r"""
    Trainer for BaNEL (Bayesian Negative Evidence Learning), from [BaNEL: Exploration Posteriors for Generative
    Modeling Using Only Negative Rewards](https://huggingface.co/papers/2510.09596).

    BaNEL post-trains a generator where successes are so rare that policy gradients see none, while spending as few
    reward evaluations (NREs) as possible. The proposal `p_theta` (the `model`) stays frozen. Each round samples the
    current posterior, pays for the accepted and never-seen candidates, fits a new LoRA negative model `p_phi_k` on
    the failures by maximum likelihood, and adds the rejection region `R_k = {x : log p_phi_k(x) - log p_ref_k(x) >
    threshold_k}`, where `p_ref_k` is `p_theta` for round 0 and, from round 1 on, a LoRA fit the same way on
    unevaluated samples of the posterior the failures came from (`reference_model`). The result is
    [`BanelPosterior`]: `p_theta` conditioned on avoiding every region.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from banel_trl import BanelConfig, BanelTrainer

    >>> def is_correct(completions, answer, **kwargs):
    ...     return [float(c.strip() == a) for c, a in zip(completions, answer)]

    >>> dataset = Dataset.from_dict({"prompt": ["2+2="], "answer": ["4"]})
    >>> trainer = BanelTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct",
    ...     reward_funcs=is_correct,
    ...     args=BanelConfig("out", max_reward_evaluations=1000, samples_per_round=200),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    >>> trainer.successes, trainer.num_reward_evaluations
    ```

    Args:
        model (`str` or [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            The proposal `p_theta`, kept frozen: a model id or local path (loaded with `args.model_init_kwargs`), or a
            causal LM. A [`~peft.PeftModel`] is merged into its base first: its adapter is part of `p_theta`.
        reward_funcs (`RewardFunc | list[RewardFunc]`):
            As in [`~trl.GRPOTrainer`]: callables (sync or async) called as
            `f(prompts=..., completions=..., completion_ids=..., trainer_state=..., **other_dataset_columns)` that
            return one float (or None) per completion, or sequence-classification reward models (instances or ids).
            Several functions are combined as a weighted sum (`args.reward_weights`); functions that return None for a
            sample are left out of its sum, and a sample for which all return None (or NaN) has no reward. A sample
            succeeds when its reward reaches `args.success_threshold`; every other sample, including one with no
            reward, is a failure. Either way the call was made: it costs one NRE and is recorded in the ledger.
        args ([`BanelConfig`], *optional*):
            Configuration. If `None`, a default configuration is used.
        train_dataset ([`~datasets.Dataset`]):
            Prompts, in a `"prompt"` column, standard (text) or conversational (messages). Other columns are passed to
            the reward functions. For an unconditional generator, use a dataset of empty prompts (`""`): generation
            then starts from the BOS token.
        eval_dataset ([`~datasets.Dataset`], *optional*):
            Prompts for [`~BanelTrainer.evaluate`], which measures the posterior's success rate. Its reward calls are
            evaluation, outside the training budget and the ledger.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer; loaded from the model when `None`. Without a pad token, the EOS token is used.
        reward_processing_classes ([`~transformers.PreTrainedTokenizerBase`] or `list`, *optional*):
            Tokenizers of reward models, as in [`~trl.GRPOTrainer`].
        callbacks (list of [`~transformers.TrainerCallback`], *optional*):
            Trainer callbacks. A [`BanelCallback`] also has `on_round_end(args, state, control, trainer, metrics)`
            called after every BaNEL round.
        optimizers (`tuple`, *optional*, defaults to `(None, None)`):
            Must stay `(None, None)`: each round trains new adapter parameters, so the optimizer is created per round
            from `args` (`optim`, `learning_rate`, `lr_scheduler_type`, ...).
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            As in [`~trl.GRPOTrainer`]: quantizes the frozen proposal loaded from `model` (a string), e.g. 4-bit for
            QLoRA-style negative models on top of it.
        peft_config ([`~peft.PeftConfig`], *optional*):
            LoRA configuration of the negative models, one adapter per round. Defaults to rank 16 on all linear layers.
        tools, rollout_func, environment_factory:
            GRPO's agentic generation hooks. BaNEL samples `p_theta` itself and scores exactly what it sampled, so
            they are refused when given.
    """

    _tag_names = TAGS
    _name = "BaNEL"
    _paper = PAPER

    def __init__(
        self,
        model: str | PreTrainedModel | PeftModel,
        reward_funcs: RewardFunc | list[RewardFunc],
        args: BanelConfig | None = None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        reward_processing_classes: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        quantization_config: BitsAndBytesConfig | None = None,
        peft_config: PeftConfig | None = None,
        tools: list | None = None,
        rollout_func: Callable | None = None,
        environment_factory: Callable | None = None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = BanelConfig(f"{model_name.split('/')[-1]}-BaNEL")
        if not isinstance(args, BanelConfig):
            raise ValueError(f"`args` must be a BanelConfig, got {type(args).__name__}.")
        refuse_grpo_only_arguments(
            optimizers, tools=tools, rollout_func=rollout_func, environment_factory=environment_factory
        )
        train_dataset = prompt_dataset(train_dataset, "train_dataset")
        if eval_dataset is not None:
            eval_dataset = prompt_dataset(eval_dataset, "eval_dataset", named=True)

        # PEFT initialises adapters randomly: seed first, as GRPOTrainer does, for reproducible runs.
        set_seed(args.seed)
        model = load_proposal(model, args, quantization_config)
        check_negative_model(model, args)
        processing_class = load_tokenizer(processing_class, model, args)

        self.peft_config = peft_config or default_peft_config(model)
        model = get_peft_model(model, self.peft_config, adapter_name=region_adapter_name(0))

        self.reward_funcs, self.reward_processing_classes = load_reward_funcs(
            reward_funcs, reward_processing_classes, args.model_init_kwargs
        )
        self.reward_weights = check_reward_weights(args.reward_weights, len(self.reward_funcs))

        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
        )
        # The step flow and progress bar of one `Trainer.train` call belong to each fit's own Trainer (`ModelFitter`).
        for callback in [callback for callback in self.callback_handler.callbacks if is_per_fit(callback)]:
            if not isinstance(callback, PrinterCallback):  # prints the rounds' logs when tqdm is off
                self.remove_callback(callback)
        self._set_up_sampling(train_dataset, eval_dataset)
        self.ledger = RewardLedger.replica([])  # empty until `train()` opens the run's
        self.fitter = ModelFitter(
            self.model, args, self.peft_config, processing_class, self.state, self.callback_handler
        )
        self.region_policy = RegionPolicy(args, self.fitter, self.posterior, self.sampler, self.accelerator)
        self.proposal = DistilledProposal(self.fitter, self.posterior)

    def _set_up_sampling(self, train_dataset: Dataset, eval_dataset: Dataset | None) -> None:
        """
        The posterior over the model, the sampler of its candidates and the reward functions' evaluator (reward models
        placed by Accelerate); prompts that leave no room for a completion are refused.
        """
        for i, reward_func in enumerate(self.reward_funcs):
            if isinstance(reward_func, PreTrainedModel):
                self.reward_funcs[i] = self.accelerator.prepare_model(reward_func, evaluation_mode=True)
        args, processing_class = self.args, self.processing_class
        self.generation_config = generation_config(self.model, processing_class, args)
        vllm_sampler = VLLMSampler(self.model, self.accelerator, processing_class, args) if args.use_vllm else None
        self.posterior = BanelPosterior(
            self.model,
            temperature=args.temperature,
            scoring_batch_size=args.per_device_eval_batch_size,
            max_sampling_attempts=args.max_sampling_attempts,
            generation_config=self.generation_config,
            disable_tqdm=args.disable_tqdm,
            proposal_sampler=vllm_sampler,
        )
        # Each round restarts its prompt stream from the round's seed (`CandidateSampler.reseed`).
        self.sampler = CandidateSampler(
            self.posterior,
            processing_class,
            self.generation_config,
            args.num_generations,
            args.generation_batch_size,
            args.chat_template_kwargs,
            shuffle_dataset=args.shuffle_dataset,
            pad_to_multiple_of=args.pad_to_multiple_of,
            dataset=train_dataset,
            accelerator=self.accelerator,
            full_determinism=args.full_determinism,
        )
        self.rewards = RewardEvaluator(
            self.reward_funcs,
            self.reward_processing_classes,
            self.reward_weights,
            args.success_threshold,
            processing_class,
            is_conversational(train_dataset[0]),
            self.accelerator.device,
        )
        context = getattr(self.model.config, "max_position_embeddings", None)
        datasets = {"train_dataset": train_dataset, "eval_dataset": eval_dataset}
        self.sampler.check_prompt_lengths(datasets, args.max_completion_length, context)

    # ------------------------------------------------------------------ state

    @property
    def num_reward_evaluations(self) -> int:
        """Reward evaluations paid so far (including those restored from the ledger)."""
        return len(self.ledger)

    @property
    def successes(self) -> list[dict]:
        """Every evaluated sample that reached the success threshold: ledger records (prompt, completion, reward...)."""
        return [r for r in self.ledger.records if r["success"]]

    def _open_ledger(self, force: bool = False) -> None:
        """
        Open the ledger and reload the regions of finished rounds and the metrics logged from `output_dir`, once it
        is checked to hold this run (`open_run_folder`). Only the main process reads (and locks) the files; it sends
        the ledger's lines, the regions' weights and the metrics to the other processes.
        """

        def read_output_dir():
            self.ledger.close()
            names = [reward_func_name(f) for f in self.reward_funcs]
            manifest = run_manifest(self.model, self.processing_class, names, self.args, self.peft_config)
            folder = open_run_folder(self.args.output_dir, manifest, force, load_weights=not self.posterior.regions)
            self.ledger = folder.ledger
            return self.ledger.lines, folder.regions, folder.weights, folder.log_history, folder.proposal

        lines, regions, weights, log_history, proposal = on_main_process(self.accelerator, read_output_dir)
        if not self.accelerator.is_main_process:
            self.ledger = RewardLedger.replica(lines)
        self.state.log_history = self.state.log_history or log_history  # a new process: the earlier rounds' metrics
        self.state.global_step = max((entry.get("step", 0) for entry in self.state.log_history), default=0)
        if self.posterior.regions and regions != self.posterior.regions and self.args.should_save:
            self._save_posterior()  # this process's save failed before: save again what it fit
        # A new process: the saved regions' adapters, and the proposal distilled after the last saved round.
        self.posterior.restore(regions if weights else [], weights, proposal, self.peft_config)
        if len(self.ledger) or regions:
            logger.warning(
                f"Resuming run in {self.args.output_dir}: {len(self.ledger)} paid evaluations, "
                f"{len(self.posterior.regions)} regions."
            )

    # ------------------------------------------------------------------ the BaNEL loop

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """
        Run BaNEL. A run always resumes from `output_dir` when it holds a ledger: paid evaluations are reused, never
        paid again, the regions of finished rounds are reloaded, and an interrupted round samples again from its seed.
        A resume that contradicts the run recorded in `output_dir` (`banel_run.json`: model, tokenizer, rewards,
        sampling and fit settings) is refused, naming every difference; `resume_from_checkpoint="force"` resumes with
        the new settings. Other values of `resume_from_checkpoint` are accepted for Trainer scripts, without effect.

        With several processes (`accelerate launch`), every process samples its share; the main process alone pays
        for the rewards and writes the ledger, every process receives the results, and the fits are data-parallel.
        """
        args = self.args
        fit_losses, start_time = [], time.time()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        try:
            self._open_ledger(force=resume_from_checkpoint == FORCE)
            for k in self._rounds_to_run():
                stats = self._collect_round(k)  # 1-2: sample the posterior, pay for accepted never-seen candidates
                evidence = self.region_policy.evidence(self.ledger, k)  # 3: its failures, split once (fit, held out)
                num_failures = len(evidence.fit) + len(evidence.held_out)
                if num_failures < 2:
                    self._end_round(k, stats, num_failures)
                    logger.warning(f"Round {k}: {num_failures} failures to learn from; ending the run.")
                    break
                region, loss = None, None
                changed = self.region_policy.review(self.ledger, k)  # the paid evidence keeps, relaxes or retracts
                if not changed and self.region_policy.has_evidence(self.ledger, k):
                    reference_samples = self._posterior_samples(k, REFERENCE_SEED_OFFSET, len(evidence.fit))
                    region, loss = self.region_policy.fit(self.ledger, k, reference_samples)  # 3-4: p_phi_k, tau_k
                    self.posterior.add_region(region)
                    fit_losses.append(loss)
                    if args.distill_posterior:  # Algorithm 2: the next proposal, fit on samples of this posterior
                        samples = self._posterior_samples(k, DISTILLATION_SEED_OFFSET, args.distillation_samples)
                        self.proposal.distil(k, samples, args.seed + k + DISTILLATION_SEED_OFFSET)
                self._end_round(k, stats, num_failures, region, loss, save=changed or region is not None)
                if not changed and self._fell_short(k, stats):
                    break  # the posterior accepts too little to go on (a change raised its acceptance again)
        finally:
            self.ledger.close()  # releases the lock, whatever was raised; the records stay readable
        return self._end_run(fit_losses, start_time)

    def _rounds_to_run(self):
        """The rounds after the last one the run folder holds, until the budget or the run's `max_steps` is spent."""
        # A round that added no region is read back from the ledger; one that changed a region saved the change.
        first_round = max((region.last_round for region in self.posterior.regions), default=-1) + 1
        for k in range(first_round, self.args.num_rounds):
            if self.num_reward_evaluations >= self.args.max_reward_evaluations and not self.ledger.samples_of_round(k):
                return  # the budget is spent and every round that sampled is done
            if 0 < self.args.max_steps <= self.state.global_step:
                logger.warning(
                    f"Ending the run before round {k}: its fits took all {self.args.max_steps} `max_steps`."
                )
                return
            yield k

    def _posterior_samples(self, k: int, stream: int, num_samples: int) -> list[dict]:
        """
        The one draw of round `k`'s unevaluated posterior samples (no NRE), from their own seed `stream`: the
        reference's (from round 1 on, in the exact loop: the posterior the failures came from, known successes left
        out, so none is trained on) or the distillation's (the posterior with region `k`).
        """
        args = self.args
        if stream == REFERENCE_SEED_OFFSET and not self.region_policy.needs_reference(k):
            return []  # the failures' reference is the proposal that drew them
        exclude = self.ledger.is_known_success if stream == REFERENCE_SEED_OFFSET else None
        seed = args.seed + k + stream
        samples = self.sampler.posterior_samples(
            seed, num_samples, args.max_sampling_attempts, exclude, args.disable_tqdm
        )
        if stream == REFERENCE_SEED_OFFSET and len(samples) < num_samples:
            outcome = "the reference model is fit on those" if samples else f"region {k} is compared with p_theta"
            logger.warning(f"Round {k}: {len(samples)} of {num_samples} reference samples were accepted; {outcome}.")
        return samples

    def _fell_short(self, k: int, stats: dict) -> bool:
        """Whether round `k` could not spend its budget (`stats` from [`RoundCollector.collect`]), warning if so."""
        if stats["evaluated"] >= stats["budget"]:
            return False
        logger.warning(
            f"Ending the run after round {k}, which could not spend its budget: a further region would only lower the "
            f"acceptance rate ({stats['accepted'] / max(stats['proposed'], 1):.2e}). {self.num_reward_evaluations} "
            f"of {self.args.max_reward_evaluations} evaluations are spent; to go on, call `train()` again with a "
            "higher `max_sampling_attempts`."
        )
        return True

    def _end_run(self, fit_losses: list[float], start_time: float) -> TrainOutput:
        """Log the run's summary, as `Trainer.train` ends with, and call `on_train_end` once for the whole run."""
        metrics = {"num_reward_evaluations": self.num_reward_evaluations, "num_successes": len(self.successes)}
        mean_loss = sum(fit_losses) / len(fit_losses) if fit_losses else None
        summary = speed_metrics("train", start_time) | ({"train_loss": mean_loss} if fit_losses else {})
        self.log(summary | metrics)
        self._save_state()
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, mean_loss, metrics)

    def _collect_round(self, k: int) -> dict:
        """Steps 1-2 of round `k`: every process proposes, the main one pays and sends the others its ledger lines."""
        num_lines = len(self.ledger.lines)
        self.sampler.reseed(self.args.seed + k, own_stream=True)
        collector = RoundCollector(self.sampler, self.ledger, self.rewards, self.args, self.accelerator)
        stats = collector.collect(k, self.state)
        lines = on_main_process(self.accelerator, lambda: self.ledger.lines[num_lines:])
        if not self.accelerator.is_main_process:
            self.ledger.extend(lines)
        return stats

    # ------------------------------------------------------------------ logging, evaluation, saving

    def _end_round(
        self,
        k: int,
        stats: dict,
        num_failures: int,
        region: RejectionRegion | None = None,
        fit_loss: float | None = None,
        save: bool = False,
    ) -> None:
        """Save the posterior the round changed, log the round's figures and tell the callbacks."""
        if save and self.args.should_save:
            self._save_posterior()
        # The regions that reject (a retracted one does not), and the figures of the rewards, with what they logged.
        num_regions = sum(not region.retracted for region in self.posterior.regions)
        metrics = round_metrics(self.ledger, k, stats, self.args.max_reward_evaluations, num_regions, self.rewards)
        metrics["negatives"] = num_failures
        if region is not None:  # a round that added no region has no fit to report
            metrics.update(negative_loss=fit_loss, threshold=region.threshold)
        self.log(metrics)
        self._save_state()
        if self.args.log_completions and self.is_world_process_zero():
            step, num_completions = self.state.global_step, self.args.num_completions_to_print
            log_round_completions(self.ledger, k, self.rewards, step, num_completions)
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, BanelCallback):
                callback.on_round_end(self.args, self.state, self.control, trainer=self, metrics=metrics)

    def evaluate(self, eval_dataset: Dataset | None = None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """
        Success rate of the posterior: `num_generations_eval` accepted samples for every prompt of `eval_dataset` (or
        of the trainer's; a dict of datasets is measured per name). These reward calls measure the result: they are
        outside the training budget and are not written to the ledger. With several processes, each one samples its
        share of the prompts and the main process calls the rewards.
        """
        dataset = prompt_dataset(
            self.eval_dataset if eval_dataset is None else eval_dataset, "eval_dataset", named=True
        )
        if isinstance(dataset, dict):  # as `Trainer.evaluate`: each dataset's metrics under its name
            named = [self.evaluate(data, ignore_keys, f"{metric_key_prefix}_{name}") for name, data in dataset.items()]
            return {key: value for metrics in named for key, value in metrics.items()}
        self.sampler.reseed(self.args.seed + EVALUATION_SEED_OFFSET, own_stream=True)  # each process its own samples
        measure = dict(trainer_state=self.state, num_generations=self.args.num_generations_eval)
        metrics = success_metrics(self.accelerator, self.sampler, self.rewards, dataset, metric_key_prefix, **measure)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _save_state(self) -> None:
        """The logged figures (per round, for `banel-trl report`), in `trainer_state.json` next to the ledger."""
        if self.args.should_save:
            self.state.save_to_json(os.path.join(self.args.output_dir, TRAINER_STATE_NAME))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """
        Save the posterior (every region's adapter and the thresholds) and the tokenizer. With `distill_posterior`,
        the last distilled proposal is also saved at the top of the folder as a plain PEFT adapter, which
        `AutoPeftModelForCausalLM.from_pretrained(output_dir)` loads and samples without banel_trl.
        """
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self._save_posterior(output_dir)
            self.processing_class.save_pretrained(output_dir)
            if self.posterior.proposal_adapter != BASE_ADAPTER:
                save_adapter_as_model(self.model, self.posterior.proposal_adapter, output_dir)

    def _save_posterior(self, output_dir: str | None = None) -> None:
        """Save the posterior, recording the ledger its regions were fit on (checked when the run resumes)."""
        self.posterior.save_pretrained(output_dir or self.args.output_dir, ledger=self.ledger.fingerprint())

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """
        Write the model card `README.md` into `output_dir`, in TRL's style: the method and its paper, the reward
        evaluations used, each round's successes and success rate, and the per-round plot (`banel_report.png`).
        [`~transformers.Trainer.push_to_hub`] calls it before uploading. `model_name` defaults to the last part of
        `hub_model_id` or `output_dir`; `dataset_name` is the prompts' Hub id; `tags` are added to the card's.
        """
        if not self.is_world_process_zero():
            return
        write_model_card(
            self.args.output_dir,
            model_name=model_name,
            hub_model_id=self.hub_model_id or self.args.hub_model_id,
            dataset_name=dataset_name,
            tags=[tags] if isinstance(tags, str) else tags,
            max_reward_evaluations=self.args.max_reward_evaluations,
            trainer_name=self._name,
            paper=self._paper,
        )
