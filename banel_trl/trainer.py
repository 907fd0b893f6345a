"""The BaNEL trainer: post-training from failed attempts only, under a hard budget of reward evaluations."""

import logging
import os
import time
from collections.abc import Callable

from datasets import Dataset
from peft import PeftConfig, PeftModel
from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import TrainOutput, speed_metrics
from trl.data_utils import is_conversational

from .callbacks import BanelCallback, is_per_fit
from .collect import RoundCollector, round_fell_short
from .config import BanelConfig
from .data import prompt_dataset
from .distillation import DistilledProposal
from .evaluation import evaluate_posterior
from .fitting import ModelFitter
from .hub import PAPER, TAGS, push_trainer_to_hub, write_model_card
from .ledger import RewardLedger
from .manifest import FORCE, open_run, run_manifest
from .metrics import log_round_completions, reward_metrics, round_metrics
from .models import load_model_stack, refuse_grpo_only_arguments, save_adapter_as_model
from .region_policy import RegionPolicy
from .regions import BASE_ADAPTER
from .rewards import RewardEvaluator, RewardFunc, check_reward_weights, load_reward_funcs, reward_func_name
from .sampling import EVALUATION_SEED_OFFSET, CandidateSampler
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
    unevaluated samples of the posterior the failures came from. The result is [`BanelPosterior`]: `p_theta`
    conditioned on avoiding every region. The round's parts are composed objects: a [`RoundCollector`] pays, a
    [`RegionPolicy`] turns failures into regions and reviews them, a [`ModelFitter`] runs each fit as a fresh inner
    Trainer, and with `distill_posterior` a [`DistilledProposal`] distils each round's posterior (Algorithm 2).

    Example:

    ```python
    >>> trainer = BanelTrainer(
    ...     model="Qwen/Qwen2.5-0.5B-Instruct",
    ...     reward_funcs=is_correct,  # TRL's contract: (completions, **columns) -> list[float]
    ...     args=BanelConfig("out", max_reward_evaluations=1000),
    ...     train_dataset=Dataset.from_dict({"prompt": ["2+2="], "answer": ["4"]}),
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
            Prompts for [`~BanelTrainer.evaluate`], which measures the posterior's success rate on its own budget.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer; loaded from the model when `None`. Without a pad token, the EOS token is used.
        reward_processing_classes ([`~transformers.PreTrainedTokenizerBase`] or `list`, *optional*):
            Tokenizers of reward models, as in [`~trl.GRPOTrainer`].
        callbacks (list of [`~transformers.TrainerCallback`], *optional*):
            Trainer callbacks. A [`BanelCallback`] also has `on_round_end(args, state, control, trainer, metrics)`
            called after every BaNEL round.
        optimizers (`tuple`, *optional*, defaults to `(None, None)`):
            Must stay `(None, None)`: each fit trains new parameters with an optimizer made from `args`.
        quantization_config ([`~transformers.BitsAndBytesConfig`], *optional*):
            As in [`~trl.GRPOTrainer`]: quantizes the frozen proposal loaded from `model` (QLoRA-style regions).
        peft_config ([`~peft.PeftConfig`], *optional*):
            LoRA of the negative models, one adapter per round. Defaults to rank 16 on all linear layers.
        tools, rollout_func, environment_factory:
            GRPO's agentic generation hooks, refused: BaNEL scores exactly what it sampled from `p_theta`.
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

        model, processing_class, self.peft_config = load_model_stack(
            model, args, quantization_config, processing_class, peft_config
        )

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
        # The step flow and progress bar of one `Trainer.train` call belong to each fit's own Trainer (`ModelFitter`);
        # a PrinterCallback stays, to print the rounds' logs when tqdm is off.
        for callback in [
            c for c in self.callback_handler.callbacks if is_per_fit(c) and not isinstance(c, PrinterCallback)
        ]:
            self.remove_callback(callback)
        self._set_up_sampling(train_dataset, eval_dataset)
        self.ledger = RewardLedger.replica([])  # empty until `train()` opens the run's
        self.fitter = ModelFitter(
            self.model, args, self.peft_config, processing_class, self.state, self.callback_handler
        )
        self.region_policy = RegionPolicy(args, self.fitter, self.posterior, self.sampler, self.accelerator)
        self.proposal = DistilledProposal(args, self.fitter, self.sampler)

    def _set_up_sampling(self, train_dataset: Dataset, eval_dataset: Dataset | None) -> None:
        """
        The posterior over the model, the sampler of its candidates and the reward functions' evaluator (reward models
        placed by Accelerate); prompts that leave no room for a completion are refused.
        """
        for i, reward_func in enumerate(self.reward_funcs):
            if isinstance(reward_func, PreTrainedModel):
                self.reward_funcs[i] = self.accelerator.prepare_model(reward_func, evaluation_mode=True)
        args, processing_class = self.args, self.processing_class
        vllm_sampler = VLLMSampler(self.model, self.accelerator, processing_class, args) if args.use_vllm else None
        self.sampler = CandidateSampler.for_run(
            self.model, processing_class, args, train_dataset, self.accelerator, vllm_sampler
        )
        self.posterior, self.generation_config = self.sampler.posterior, self.sampler.generation_config
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
        """Open the run in `output_dir` (see [`open_run`]): its ledger, the finished rounds' regions and metrics."""
        self.ledger.close()
        names = [reward_func_name(f) for f in self.reward_funcs]
        manifest = run_manifest(self.model, self.processing_class, names, self.args, self.peft_config)
        folder = open_run(self.accelerator, self.args.output_dir, manifest, force, load=not self.posterior.regions)
        self.ledger = folder.ledger
        self.state.log_history = self.state.log_history or folder.log_history  # a new process: the earlier rounds'
        self.state.global_step = max((entry.get("step", 0) for entry in self.state.log_history), default=0)
        if self.posterior.regions and folder.regions != self.posterior.regions and self.args.should_save:
            self._save_posterior()  # this process's save failed before: save again what it fit
        # A new process: the saved regions' adapters, and the proposal distilled after the last saved round.
        self.posterior.restore(
            folder.regions if folder.weights else [], folder.weights, folder.proposal, self.peft_config
        )
        if len(self.ledger) or folder.regions:
            logger.warning(
                f"Resuming run in {self.args.output_dir}: {len(self.ledger)} paid evaluations, "
                f"{len(self.posterior.regions)} regions."
            )

    # ------------------------------------------------------------------ the BaNEL loop

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """
        Run BaNEL (the paper's Algorithm 1, or 2 with `distill_posterior`). A run always resumes from `output_dir` when
        it holds a ledger: paid evaluations are never paid again, the regions of finished rounds are reloaded, and an
        interrupted round samples again from its seed. A resume that contradicts the run recorded in `output_dir`
        (`banel_run.json`) is refused, naming every difference; `resume_from_checkpoint="force"` resumes with the new
        settings (other values are accepted for Trainer scripts, without effect). With several processes, every
        process samples its share; the main process alone pays and writes the ledger; the fits are data-parallel.
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
                if changed and args.distill_posterior:  # the proposal distilled from the changed region is replaced
                    stats = {**stats, "distillation": self.proposal.revise(self.posterior.regions[-1])}
                if not changed and self.region_policy.has_evidence(self.ledger, k):
                    region, loss = self.region_policy.fit(self.ledger, k)  # 3-4: fit p_phi_k (and p_ref_k), tau_k
                    self.posterior.add_region(region)
                    fit_losses.append(loss)
                    if args.distill_posterior:  # Algorithm 2: the next proposal, fit on samples of this posterior
                        stats = {**stats, "distillation": self.proposal.distil(k)}
                self._end_round(k, stats, num_failures, region, loss, save=changed or region is not None)
                if not changed and round_fell_short(
                    k, stats, self.num_reward_evaluations, args.max_reward_evaluations
                ):
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

    def _end_run(self, fit_losses: list[float], start_time: float) -> TrainOutput:
        """Log the run's summary, as `Trainer.train` ends with, and call `on_train_end` once for the whole run."""
        metrics = {"num_reward_evaluations": self.num_reward_evaluations, "num_successes": len(self.successes)}
        mean_loss = sum(fit_losses) / len(fit_losses) if fit_losses else None
        summary = speed_metrics("train", start_time) | ({"train_loss": mean_loss} if fit_losses else {})
        # As GRPO's last log: the reward figures of the last round's paid samples.
        last_round = max((r["round"] for r in self.ledger.records), default=None)
        self.log(summary | reward_metrics(self.ledger.paid_in_round(last_round), self.rewards.names) | metrics)
        self._save_state()
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, mean_loss, metrics)

    def _collect_round(self, k: int) -> dict:
        """Steps 1-2 of round `k`, from the round's seed: every process proposes, the main one pays."""
        self.sampler.reseed(self.args.seed + k, own_stream=True)
        return RoundCollector(self.sampler, self.ledger, self.rewards, self.args, self.accelerator).collect(
            k, self.state
        )

    # ------------------------------------------------------------------ logging, evaluation, saving

    def _end_round(self, k: int, stats: dict, num_failures: int, region=None, fit_loss=None, save=False) -> None:
        """Save the posterior the round changed, log the round's figures and tell the callbacks."""
        if save and self.args.should_save:
            self._save_posterior()
        # The regions that reject (a retracted one does not), and the figures of the rewards, with what they logged.
        num_regions = sum(not region.retracted for region in self.posterior.regions)
        metrics = round_metrics(self.ledger, k, stats, self.args.max_reward_evaluations, num_regions, self.rewards)
        metrics.update(negatives=num_failures, **stats.get("distillation", {}))
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
        of the trainer's; a dict of datasets is measured per name). Its reward calls come from their own budget,
        `max_eval_reward_evaluations` over the run, and are written to `banel_eval_ledger.jsonl` before they count; a
        sample whose reward the run knows (from training or an earlier evaluation) is not paid again, and the hits are
        added to `successes.jsonl`. With several processes, each one samples its share and the main process pays.
        """
        dataset = prompt_dataset(
            self.eval_dataset if eval_dataset is None else eval_dataset, "eval_dataset", named=True
        )
        if isinstance(dataset, dict):  # as `Trainer.evaluate`: each dataset's metrics under its name
            named = [self.evaluate(data, ignore_keys, f"{metric_key_prefix}_{name}") for name, data in dataset.items()]
            return {key: value for metrics in named for key, value in metrics.items()}
        self.sampler.reseed(self.args.seed + EVALUATION_SEED_OFFSET, own_stream=True)  # each process its own samples
        parts = (self.args, self.sampler, self.rewards, self.ledger, dataset, metric_key_prefix, self.state)
        metrics = evaluate_posterior(*parts, self.accelerator)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _save_state(self) -> None:  # the logged figures (per round, for `banel-trl report`)
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

    def push_to_hub(
        self,
        commit_message="End of training",
        blocking=True,
        token=None,
        revision=None,
        include_run_records=False,
        **kwargs,
    ):
        """
        As [`~transformers.Trainer.push_to_hub`]: the posterior (adapters, thresholds, the distilled adapter), the
        tokenizer and a model card. The run's ledgers and `successes.jsonl` (every paid completion and every success)
        are uploaded only with `include_run_records=True`; the card says which.
        """
        return push_trainer_to_hub(self, commit_message, blocking, token, revision, include_run_records, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags: str | list[str] | None = None, **kwargs):
        """The model card `README.md` in `output_dir`, in TRL's style (see [`write_model_card`]); `push_to_hub` calls it."""
        if not self.is_world_process_zero():
            return
        write_model_card(
            self.args.output_dir,
            model_name=model_name,
            hub_model_id=self.hub_model_id or self.args.hub_model_id,
            dataset_name=dataset_name,
            tags=[tags] if isinstance(tags, str) else tags,
            max_reward_evaluations=self.args.max_reward_evaluations,
            run_records_uploaded=kwargs.get("run_records_uploaded", True),
            trainer_name=self._name,
            paper=self._paper,
        )
