"""Callbacks that also hear about BaNEL rounds, and the events of one run made of many negative fits."""

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, ProgressCallback


# The machinery of one `Trainer.train` call: step flow (logging, stopping at its end) and progress bars. BaNEL calls
# `Trainer.train` once per negative fit; these see each fit as a training run of its own.
PER_FIT_CALLBACKS = ("DefaultFlowCallback", "ProgressCallback", "NotebookProgressCallback")
RUN_EVENTS = ("on_train_begin", "on_train_end")


def _per_fit(callback: TrainerCallback) -> bool:
    return isinstance(callback, DefaultFlowCallback | ProgressCallback) or type(callback).__name__ in PER_FIT_CALLBACKS


class BanelCallback(TrainerCallback):
    """
    A [`~transformers.TrainerCallback`] with one more event, called by [`BanelTrainer`] after every round, once the
    round's region is added to the posterior (a round may add none, see `reference_min_successes`: then
    `posterior.regions[-1].round` is not `metrics["round"]`). `on_train_begin` and `on_train_end` are called once per
    run; the step events are called during each negative fit, with `state.global_step` counting from the run's start.
    """

    def on_round_end(self, args, state, control, trainer=None, metrics=None, **kwargs):
        """`trainer` is the [`BanelTrainer`]; `metrics` the round's logged figures (NREs, successes, acceptance...)."""


class RunCallbackHandler(CallbackHandler):
    """
    The Trainer's callback handler for a BaNEL run, which calls `Trainer.train` once per negative fit. The callbacks
    see one run: `on_train_begin` and `on_train_end` once, and during a fit `state.global_step` counted from the run's
    start; a fit stops once the run has taken `max_steps` steps in all (when positive). The per-fit machinery (step
    flow and progress bars, `PER_FIT_CALLBACKS`) sees each fit as a run of its own.
    """

    in_fit: bool = False
    steps_before_fit: int = 0  # optimizer steps of the run's earlier fits
    max_steps: int = -1

    @classmethod
    def of(cls, handler: CallbackHandler, max_steps: int) -> "RunCallbackHandler":
        """`handler` as a RunCallbackHandler, with the same callbacks, models and optimizers."""
        handler.__class__ = cls
        handler.max_steps = max_steps
        return handler

    def call_event(self, event, args, state, control, **kwargs):
        per_fit = [callback for callback in self.callbacks if _per_fit(callback)]
        run = [callback for callback in self.callbacks if not _per_fit(callback)]
        if not self.in_fit:  # the run's own events, and those between fits (a round's log, `evaluate`)
            return self._call(run if event in RUN_EVENTS else self.callbacks, event, args, state, control, **kwargs)
        control = self._call(per_fit, event, args, state, control, **kwargs)
        if event in RUN_EVENTS:
            return control
        offset = 0 if event == "on_log" else self.steps_before_fit  # `BanelTrainer.log` offsets its step itself
        state.global_step += offset
        try:
            control = self._call(run, event, args, state, control, **kwargs)
        finally:
            state.global_step -= offset
        if event == "on_step_end" and 0 < self.max_steps <= self.steps_before_fit + state.global_step:
            control.should_training_stop = True  # the run's step budget is spent: this fit ends here
        return control

    def _call(self, callbacks: list[TrainerCallback], event, args, state, control, **kwargs):
        """`CallbackHandler.call_event` for `callbacks` only."""
        everyone, self.callbacks = self.callbacks, callbacks
        try:
            return super().call_event(event, args, state, control, **kwargs)
        finally:
            self.callbacks = everyone
