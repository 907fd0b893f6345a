"""BaNEL for TRL: post-train a generative model from failed attempts only, under a budget of reward evaluations."""

from .callbacks import BanelCallback
from .config import BanelConfig
from .hub import push_posterior_to_hub
from .ledger import RewardLedger
from .posterior import BanelPosterior, PosteriorAcceptanceError
from .regions import RejectionRegion
from .trainer import BanelTrainer


__version__ = "0.1.0"

__all__ = [
    "BanelCallback",
    "BanelConfig",
    "BanelPosterior",
    "BanelTrainer",
    "PosteriorAcceptanceError",
    "RejectionRegion",
    "RewardLedger",
    "push_posterior_to_hub",
]
