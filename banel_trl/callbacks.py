"""Callbacks that also hear about BaNEL rounds."""

from transformers import TrainerCallback


class BanelCallback(TrainerCallback):
    """
    A [`~transformers.TrainerCallback`] with one more event, called by [`BanelTrainer`] after every round, once the
    round's region is added to the posterior (a round may add none, see `reference_min_successes`: then
    `posterior.regions[-1].round` is not `metrics["round"]`). Every standard event is still called during each round's
    negative fit.
    """

    def on_round_end(self, args, state, control, trainer=None, metrics=None, **kwargs):
        """`trainer` is the [`BanelTrainer`]; `metrics` the round's logged figures (NREs, successes, acceptance...)."""
