"""The one rejection-sampling loop: draw batches of candidates until enough are kept, or the posterior accepts too little."""

import math
from collections.abc import Callable
from dataclasses import dataclass

from transformers.utils.logging import tqdm


class PosteriorAcceptanceError(RuntimeError):
    """Raised when rejection sampling hits its attempt cap: the posterior accepts (almost) nothing."""


def acceptance_too_low(accepted: int, proposed: int, max_sampling_attempts: int) -> bool:
    """
    Whether `accepted` of `proposed` candidates puts the acceptance rate below `1 / max_sampling_attempts` with about
    95% confidence (the Poisson upper bound `accepted + 3 + 2 sqrt(accepted)`: the rule of three at zero). The loop
    gives up on it after a few multiples of `max_sampling_attempts` proposals, instead of spending its whole allowance
    on a posterior that accepts (almost) nothing, such as one with a corrupt threshold.
    """
    return proposed > max_sampling_attempts * (accepted + 3 + 2 * math.sqrt(accepted))


@dataclass
class SamplingStats:
    """What a rejection-sampling loop drew: candidates proposed, accepted by the posterior, and kept by its caller."""

    proposed: int = 0
    accepted: int = 0
    kept: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / max(self.proposed, 1)


def sample_until(
    num_wanted: int,
    max_sampling_attempts: int,
    draw: Callable[[SamplingStats], tuple[int, int, int]],
    description: str,
    disable_tqdm: bool = False,
    give_up_on_low_acceptance: bool = True,
) -> SamplingStats:
    """
    Call `draw(stats)` until `num_wanted` candidates are kept. Each call proposes a batch and returns how many
    candidates it proposed, how many the posterior accepted and how many of those the caller kept (a round keeps the
    ones it pays for, `generate` one per requested row). Stops early, with fewer kept, once `max_sampling_attempts`
    candidates per wanted one have been proposed in all, or once the acceptance rate of the kept ones is below 1 in
    `max_sampling_attempts` with 95% confidence ([`acceptance_too_low`], unless `give_up_on_low_acceptance=False`: a
    distillation stage draws its whole allowance whatever it keeps). The bound is on the total, not per sample:
    at acceptance `a` a sample takes a geometric number of attempts with mean `1 / a`, and a per-sample bound would
    fail some of many wanted samples long before the total is out of proportion.

    The decisions depend only on the counts `draw` returns: with several processes, each process that runs the loop
    with the same counts (the main process's, broadcast) stops at the same batch.
    """
    stats = SamplingStats()
    progress = tqdm(total=num_wanted, desc=description, leave=False, disable=disable_tqdm)
    try:
        while stats.kept < num_wanted and stats.proposed < max_sampling_attempts * num_wanted:
            if give_up_on_low_acceptance and acceptance_too_low(stats.kept, stats.proposed, max_sampling_attempts):
                break
            proposed, accepted, kept = draw(stats)
            stats.proposed, stats.accepted, stats.kept = (
                stats.proposed + proposed,
                stats.accepted + accepted,
                stats.kept + kept,
            )
            progress.update(min(stats.kept, num_wanted) - progress.n)
            progress.set_postfix(acceptance=f"{stats.acceptance:.2e}", refresh=False)
    finally:
        progress.close()
    return stats
