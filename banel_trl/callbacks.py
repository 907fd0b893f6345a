"""Callbacks that also hear about BaNEL rounds, and the events of a run's many fits on the run's one step axis."""

from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback


# The machinery of one `Trainer.train` call: step flow (logging, stopping at its end), progress bars and log printing.
# Each fit's own Trainer has them; the run's callbacks hear the fits' other events.
PER_FIT_CALLBACKS = (DefaultFlowCallback, ProgressCallback, PrinterCallback)
RUN_EVENTS = ("on_init_end", "on_train_begin", "on_train_end")


def is_per_fit(callback: TrainerCallback) -> bool:
    return isinstance(callback, PER_FIT_CALLBACKS) or type(callback).__name__ == "NotebookProgressCallback"


class BanelCallback(TrainerCallback):
    """
    A [`~transformers.TrainerCallback`] with one more event, called by [`BanelTrainer`] after every round, once the
    round's region is added to the posterior (a round may add none: then `posterior.regions[-1].round` is not
    `metrics["round"]`). `on_train_begin` and `on_train_end` are called once per run; the step events are called during
    each negative fit, with `state.global_step` counting from the run's start.
    """

    def on_round_end(self, args, state, control, trainer=None, metrics=None, **kwargs):
        """`trainer` is the [`BanelTrainer`]; `metrics` the round's logged figures (NREs, successes, acceptance...)."""


class RunEvents(TrainerCallback):
    """
    A callback of one fit's Trainer that passes the fit's events on to the run's callbacks, with the run's `args` and
    `state`: `state.global_step` counts the run's steps (those of its earlier fits, then this fit's), the fit's logs are
    added to the run's `log_history` with the round they belong to, and the fit stops once the run has taken its
    `max_steps` in all (when positive). `on_train_begin` and `on_train_end` stay the fit's: the run has its own.
    """

    def __init__(self, run_state, run_callbacks: list[TrainerCallback], run_args):
        self.run_state = run_state
        self.run_callbacks = run_callbacks
        self.run_args = run_args
        self.steps_before = run_state.global_step
        self.round_index = None

    def start(self, round_index: int) -> None:
        """Count the fit's steps from the run's current step, its logs as round `round_index`'s."""
        self.steps_before, self.round_index = self.run_state.global_step, round_index

    def _forward(self, event: str, state, control, **kwargs):
        self.run_state.global_step = self.steps_before + state.global_step
        self.run_state.epoch = state.epoch
        for callback in self.run_callbacks:
            result = getattr(callback, event)(self.run_args, self.run_state, control, **kwargs)
            control = result if result is not None else control
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = {**(logs or {}), "round": self.round_index}
        self.run_state.log_history.append({**logs, "step": self.steps_before + state.global_step})
        return self._forward("on_log", state, control, logs=logs, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        control = self._forward("on_step_end", state, control, **kwargs)
        if 0 < self.run_args.max_steps <= self.run_state.global_step:
            control.should_training_stop = True  # the run's step budget is spent: this fit ends here
        return control


def _forwarding(event: str):
    def handler(self, args, state, control, **kwargs):
        return self._forward(event, state, control, **kwargs)

    return handler


for _event in dir(TrainerCallback):
    if _event.startswith("on_") and _event not in RUN_EVENTS and _event not in vars(RunEvents):
        setattr(RunEvents, _event, _forwarding(_event))
