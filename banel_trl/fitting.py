"""
Maximum-likelihood fits of a run's models (each round's negative model and reference, the distilled proposal): each fit
is a fresh inner [`~transformers.Trainer`] built from the run's arguments, whose events reach the run's callbacks.
"""

import copy
import dataclasses
import math
import warnings

import torch
from peft import PeftConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from .callbacks import RunEvents, is_per_fit
from .data import NegativesCollator
from .models import negative_model_like, proposal_copy
from .scoring import completion_log_probs


class LikelihoodTrainer(Trainer):
    """A [`~transformers.Trainer`] that fits its model's trainable parameters by maximum likelihood on completions."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: let the Trainer scale it

    def __init__(self, *args, temperature: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Negative log-likelihood per completion token of the examples, under the model's active adapter."""
        loss = -completion_log_probs(model, **inputs, temperature=self.temperature).sum()
        loss = loss / inputs["completion_mask"].sum().clamp(min=1)
        return (loss, None) if return_outputs else loss


class ModelFitter:
    """
    Fits the run's models, one fresh [`LikelihoodTrainer`] per fit, with the run's optimisation arguments: a LoRA
    adapter of the run's PEFT model, or a separate model (see `BanelConfig.negative_model`).

    The fits of a run share one step axis: the run's callbacks hear each fit's step and log events with
    `state.global_step` counted from the run's start ([`RunEvents`]), its logs go to the run's `log_history` with the
    round they belong to, and once the run has taken `max_steps` steps in all (when positive) the fits stop.

    Args:
        model ([`~peft.PeftModel`]):
            `p_theta` with the run's adapters.
        args ([`BanelConfig`]):
            The run's arguments: the fits take their TrainingArguments (`num_train_epochs`, `learning_rate`, ...).
        peft_config ([`~peft.PeftConfig`]):
            The LoRA of new adapters.
        processing_class ([`~transformers.PreTrainedTokenizerBase`]):
            The tokenizer, handed to the callbacks.
        run_state ([`~transformers.TrainerState`]):
            The run's state: its step axis and log history.
        run_callbacks ([`~transformers.trainer_callback.CallbackHandler`]):
            The run's callbacks: those that are not the machinery of one `Trainer.train` call hear the fits' events.
    """

    def __init__(
        self,
        model: PeftModel,
        args: TrainingArguments,
        peft_config: PeftConfig,
        processing_class: PreTrainedTokenizerBase,
        run_state,
        run_callbacks: CallbackHandler,
    ):
        self.model = model
        self.args = args
        self.peft_config = peft_config
        self.processing_class = processing_class
        self.run_state = run_state
        self.run_callbacks = run_callbacks
        self.collator = NegativesCollator(processing_class.pad_token_id, args.pad_to_multiple_of)

    @property
    def steps_left(self) -> bool:
        return not 0 < self.args.max_steps <= self.run_state.global_step

    def fit_adapter(
        self, name: str, examples: list[dict], seed: int, round_index: int, warm_start: str | None = None
    ) -> float:
        """
        Fit the LoRA adapter `name` (new, or a copy of the adapter `warm_start`) on `examples`, from `seed`; returns the
        training loss (NaN when the run's `max_steps` are spent: the adapter stays at its start).
        """
        trainer = self._trainer(self.model, examples, seed)  # seeds torch before the new adapter is initialised
        if name in self.model.peft_config:  # initialised afresh: a fit that raised may have left it half-trained
            self.delete_adapter(name)
        self.model.add_adapter(name, self.peft_config)
        if warm_start is not None:
            state = get_peft_model_state_dict(self.model, adapter_name=warm_start)
            set_peft_model_state_dict(self.model, state, adapter_name=name)
        self.model.set_adapter(name)  # only this adapter is trainable; p_theta and the other adapters stay frozen
        return self._train(trainer, round_index)

    def delete_adapter(self, name: str) -> None:
        """Delete the LoRA adapter `name`, quietly: PEFT warns when it is the active one, which the next fit sets."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"Adapter {name} was active")
            self.model.delete_adapter(name)

    def fit_separate_model(
        self, examples: list[dict], seed: int, round_index: int, kind: str, config_overrides: dict | None = None
    ) -> tuple[PreTrainedModel, float]:
        """
        A separate model fit on `examples` from `seed`: a full fine-tune of a copy of `p_theta` (`kind="copy"`), or
        `p_theta`'s architecture (with `config_overrides`) from random weights (`"scratch"`). Returns it, in eval mode,
        with the training loss.
        """
        trainer = self._trainer(self.model, examples, seed)  # seeds torch before the model is initialised
        model = proposal_copy(self.model) if kind == "copy" else negative_model_like(self.model, config_overrides)
        trainer.model = trainer.model_wrapped = model
        loss = self._train(trainer, round_index)
        return model.eval(), loss  # in eval mode once trained: no dropout when its region scores

    def _trainer(self, model: torch.nn.Module, examples: list[dict], seed: int) -> LikelihoodTrainer:
        """
        A fresh Trainer for one fit: the run's TrainingArguments with the fit's `seed`, no step cap of its own (the run
        counts `max_steps` over all its fits), and no checkpoint or logging integration of its own (the run saves
        itself after each round; its callbacks hear the fit's events).
        """
        values = {f.name: getattr(self.args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
        args = TrainingArguments(**{**values, "seed": seed, "max_steps": -1, "save_strategy": "no", "report_to": []})
        run_callbacks = [callback for callback in self.run_callbacks.callbacks if not is_per_fit(callback)]
        events = RunEvents(self.run_state, run_callbacks, self.args)
        return LikelihoodTrainer(
            model=model,
            args=args,
            data_collator=self.collator,
            train_dataset=examples,
            processing_class=self.processing_class,
            callbacks=[events],
            temperature=self.args.temperature,
        )

    def _train(self, trainer: LikelihoodTrainer, round_index: int) -> float:
        if not self.steps_left:
            return math.nan  # the run's `max_steps` are spent: the model stays at its start
        events = next(c for c in trainer.callback_handler.callbacks if isinstance(c, RunEvents))
        events.start(round_index)
        history = copy.copy(self.run_state.log_history)
        try:
            output = trainer.train()
        except BaseException:
            self.run_state.log_history = history  # without the failed fit's: a retry fits again
            self.run_state.global_step = events.steps_before
            raise
        return output.training_loss
