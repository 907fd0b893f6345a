"""
Steps 3-4 of a BaNEL round, and the paper's Algorithm 2: the maximum-likelihood fits of LoRA adapters (each round's
negative model and reference, the distilled proposal) with `Trainer.train`, and the unevaluated posterior samples
the references and distillations are fit on.
"""

import copy
import logging
import math

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import set_seed
from transformers.trainer_utils import SaveStrategy

from .collect import negative_examples
from .distributed import gather_to_all, on_main_process, rank_share
from .models import (
    negative_model_like,
    proposal_adapter_name,
    proposal_copy,
    reference_adapter_name,
    reference_model_name,
    region_adapter_name,
    region_model_name,
)
from .regions import BASE_ADAPTER, RejectionRegion
from .thresholds import calibrated_threshold, hold_out_calibration


logger = logging.getLogger(__name__)

RANK_SEED_OFFSET = 3_000_017  # process r samples from the round's seed + r * this (process 0: the round's seed)
REFERENCE_SEED_OFFSET = 1_000_003  # reference samples of round k come from their own stream, not round k's
DISTILLATION_SEED_OFFSET = 2_000_003  # and so do the samples round k's posterior is distilled from
EVALUATION_SEED_OFFSET = 4_000_037  # and `evaluate`'s


class AdapterFits:
    """
    The fits of a [`BanelTrainer`], which it inherits from (before [`~transformers.Trainer`], whose `train` runs each
    fit, once per fit, under the run's callback events: see [`RunCallbackHandler`]). They use the trainer's model,
    PEFT config, posterior, sampler, ledger, collator and arguments, and seed every draw from the run's seed (see
    [`~AdapterFits._seed_stream`]), so that a resumed run fits what the uninterrupted run did.
    """

    def _seed_stream(self, seed: int, own_stream: bool = False) -> None:
        """
        Seed torch and the prompt stream: round `k` (its sampling, and again its fit) from `args.seed + k` alone, so
        that a resumed run draws what the uninterrupted run would have; its side samples from offsets of it. With
        `own_stream`, each process samples from its own seed (the main process's is the single-process one).
        """
        seed += RANK_SEED_OFFSET * self.accelerator.process_index if own_stream else 0
        set_seed(seed, deterministic=self.args.full_determinism)
        self.sampler.restart(self.train_dataset, seed)

    def _fit_region(self, k: int, negatives: list[dict]) -> tuple[RejectionRegion, float]:
        """
        Fit a new `p_phi_k` (a LoRA, or a separate model: see `negative_model`) on `negatives` by maximum likelihood
        with the Trainer, and with `reference_model="posterior"` (from round 1 on) a `p_ref_k` of the same form on as
        many unevaluated samples of the same posterior; then set the region's threshold.
        """
        args = self.args
        self._seed_stream(args.seed + k)  # the fits do not depend on how the round was sampled
        calibration = []
        if args.threshold_type == "calibrated":
            negatives, calibration = hold_out_calibration(negatives, k, args.calibration_fraction, args.seed + k)
        separate = args.negative_model != "lora"
        fit = self._fit_separate_model if separate else self._fit_adapter
        name, proposal = (region_model_name if separate else region_adapter_name)(k), self.posterior.proposal_adapter
        regions = self.posterior.regions  # warm start from the newest: the round before may have added no region
        warm_start = regions[-1].adapter_name if args.warm_start_negative_model and regions else None
        if proposal != BASE_ADAPTER:
            warm_start = proposal  # Algorithm 2: p_phi_k starts from the distilled proposal that drew its negatives
        loss = fit(name, negatives, warm_start)
        reference = proposal  # the negatives are samples of the proposal, cut by its regions (none once distilled)
        if args.reference_model == "posterior" and k > 0 and not args.distill_posterior:
            # The negatives are samples of the posterior, which a LoRA cannot represent exactly: fit against p_theta,
            # p_phi_k would learn the posterior's own shape and reject where the earlier regions kept the successes.
            # A reference fit the same way on unlabeled samples of that posterior learns the same shape, so the
            # ratio of the two keeps only what the failures teach.
            examples = self._reference_examples(k, len(negatives))
            if examples:
                reference = (reference_model_name if separate else reference_adapter_name)(k)
                set_seed(args.seed + k, deterministic=args.full_determinism)
                fit(reference, examples)

        region = RejectionRegion(name, math.log(args.filter_factor), k, reference, proposal, separate=separate)
        if args.threshold_type == "calibrated":
            rate = args.first_region_rejection_rate if k == 0 else args.target_rejection_rate
            batch = {key: value.to(self.accelerator.device) for key, value in self.data_collator(calibration).items()}
            region.threshold = on_main_process(
                self.accelerator, calibrated_threshold, self.posterior, region, batch, rate, args.learning_rate
            )
        return region, loss

    def _relax_region(self, region: RejectionRegion) -> tuple[list[float], list[float]]:
        """
        Cut `region` back to `relaxed_rejection_rate` of the failures held out of its fit (drawn again from the
        ledger, as when it was fit), scored with `relaxed_kappa` (see `BanelConfig.relaxed_rejection_rate`). Returns
        the relaxed scores of the successes paid in the region's round and of those held-out failures: the successes
        were never trained on, so they tell whether the cut rejects successes more than failures.
        """
        args = self.args
        negatives = negative_examples(self.ledger, self.sampler, region.round, args.negative_samples)
        _, calibration = hold_out_calibration(
            negatives, region.round, args.calibration_fraction, args.seed + region.round
        )
        successes = [
            {"prompt_ids": self.sampler.prompt_ids(r["prompt"]), "completion_ids": r["completion_ids"]}
            for r in self.ledger.paid_in_round(region.round)
            if r["success"]
        ]
        region.kappa = args.relaxed_kappa
        failure_scores, success_scores = on_main_process(
            self.accelerator, self._region_scores, region, [calibration, successes]
        )
        region.threshold = torch.quantile(torch.tensor(failure_scores), 1.0 - args.relaxed_rejection_rate).item()
        return success_scores, failure_scores

    def _region_scores(self, region: RejectionRegion, groups: list[list[dict]]) -> list[list[float]]:
        """The scores (log-ratios) of each group of examples under `region` alone."""
        device = self.accelerator.device
        scores = []
        for examples in groups:
            batch = {key: value.to(device) for key, value in self.data_collator(examples).items()} if examples else {}
            values = self.posterior.log_ratios(**batch, regions=[region])[:, 0] if examples else torch.empty(0)
            scores.append(values.float().cpu().tolist())
        return scores

    def _fit_adapter(
        self, name: str, examples: list[dict], warm_start: str | None = None, epochs: float | None = None
    ) -> float:
        """
        Fit the LoRA adapter `name` (new, or a copy of `warm_start`) on `examples` with `Trainer.train`, for `epochs`
        (`num_train_epochs` when `None`).
        """
        if name in self.model.peft_config and all(name not in r.adapter_names for r in self.posterior.regions):
            self.model.delete_adapter(name)  # initialised afresh: a fit that raised may have left it half-trained
        if name not in self.model.peft_config:
            self.model.add_adapter(name, self.peft_config)
        if warm_start is not None:
            state = get_peft_model_state_dict(self.model, adapter_name=warm_start)
            set_peft_model_state_dict(self.model, state, adapter_name=name)
        self.model.set_adapter(name)  # only this adapter is trainable; p_theta and the regions stay frozen
        return self._train_on(examples, epochs)

    def _fit_separate_model(self, name: str, examples: list[dict], warm_start: str | None = None) -> float:
        """
        Fit the separate negative model `name` on `examples` with `Trainer.train`, the Trainer's model for the fit: a
        copy of `p_theta` or of the separate model `warm_start`, or `p_theta`'s architecture from random weights
        (see `negative_model`).
        """
        models, proposal = self.posterior.negative_models, self.model
        if warm_start is not None:
            model = copy.deepcopy(models[warm_start]).requires_grad_(True)
        elif self.args.negative_model == "copy":
            model = proposal_copy(proposal)
        else:
            model = negative_model_like(proposal, self.args.negative_model_config)
        self.model = model
        try:
            loss = self._train_on(examples)
        finally:
            self.model = self.model_wrapped = proposal
        models[name] = model.eval()
        return loss

    def _train_on(self, examples: list[dict], epochs: float | None = None) -> float:
        """Fit the Trainer's model (its trainable parameters) on `examples` for `epochs` with `Trainer.train`."""
        if 0 < self.args.max_steps <= self.callback_handler.steps_before_fit:
            return math.nan  # the run's `max_steps` are spent: the model stays at its start (the proposal's)
        self._fit_examples = examples
        self.optimizer, self.lr_scheduler = None, None  # new parameters every fit: new optimizer
        self.model_wrapped = self.model  # re-wrap so distributed wrappers see this fit's trainable parameters
        # The fit's epochs. The run counts `max_steps` over all its fits and saves itself after each round: the fit
        # has no step cap of its own and writes no Trainer checkpoint (a resume replays an unfinished fit).
        settings = {"num_train_epochs": epochs or self.args.num_train_epochs, "max_steps": -1}
        settings["save_strategy"] = SaveStrategy.NO
        previous = {name: getattr(self.args, name) for name in settings}
        history, handler = self.state.log_history, self.callback_handler
        vars(self.args).update(settings)
        handler.in_fit = True
        try:
            output = super().train()
        except BaseException:
            self.state.log_history = history  # without the failed fit's: a retry fits again
            raise
        finally:
            handler.in_fit = False
            vars(self.args).update(previous)
        self.state.log_history = history + self.state.log_history
        handler.steps_before_fit += self.state.global_step
        self.state.global_step = handler.steps_before_fit  # the run's steps, never going back between fits
        return output.training_loss

    def _reference_examples(self, k: int, num_examples: int) -> list[dict]:
        """
        `num_examples` fresh samples of the posterior before region `k`, never evaluated (no NRE), from their own seed.
        A sample the ledger knows to be a success is left out, so no known success is trained on.
        """
        examples = self._posterior_samples(k + REFERENCE_SEED_OFFSET, num_examples, exclude_known_successes=True)
        outcome = "the reference model is fit on those" if examples else f"region {k} is compared with p_theta"
        if len(examples) < num_examples:
            logger.warning(f"Round {k}: {len(examples)} of {num_examples} reference samples were accepted; {outcome}.")
        return examples

    def _distil(self, k: int) -> None:
        """
        The paper's Algorithm 2: fit the proposal of round `k + 1` by maximum likelihood on `distillation_samples`
        fresh samples of the posterior after region `k` (never evaluated: no NRE, and no reward is consulted), and
        sample from it from now on; the regions fit on the earlier proposal stop rejecting (`keep_distilled_regions`).
        """
        args = self.args
        examples = self._posterior_samples(k + DISTILLATION_SEED_OFFSET, args.distillation_samples)
        if len(examples) < 2:
            raise RuntimeError(
                f"Round {k}: the posterior accepted {len(examples)} samples to distil within {args.max_sampling_attempts} "
                "proposals each: lower `target_rejection_rate` or raise `max_sampling_attempts`."
            )
        name, previous = proposal_adapter_name(k + 1), self.posterior.proposal_adapter
        warm_start = previous if args.distillation_warm_start and previous != BASE_ADAPTER else None
        set_seed(args.seed + k + DISTILLATION_SEED_OFFSET, deterministic=args.full_determinism)
        self._fit_adapter(name, examples, warm_start, epochs=args.distillation_epochs)
        self.posterior.proposal_adapter = name

    def _posterior_samples(self, seed: int, num_samples: int, exclude_known_successes: bool = False) -> list[dict]:
        """
        Up to `num_samples` unevaluated samples of the posterior from `args.seed + seed`: each process draws its share
        from its own stream, and every process gets them all, in rank order.
        """
        self._seed_stream(self.args.seed + seed, own_stream=True)
        exclude = self.ledger.is_known_success if exclude_known_successes else None
        share = rank_share(self.accelerator, num_samples)
        disable_tqdm = self.args.disable_tqdm or not self.accelerator.is_local_main_process
        samples = self.sampler.sample_accepted(share, self.args.max_sampling_attempts, exclude, disable_tqdm)
        samples = gather_to_all(self.accelerator, samples)[:num_samples]
        return [{"prompt_ids": self.sampler.prompt_ids(prompt), "completion_ids": ids} for prompt, ids in samples]
