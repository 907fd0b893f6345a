"""Steps 1-2 of a BaNEL round: sample the posterior and pay for accepted, never-seen candidates within the budget."""

import copy
import logging

from transformers.utils.logging import tqdm

from .config import BanelConfig
from .ledger import RewardLedger, RoundReplay, sample_key
from .posterior import acceptance_too_low
from .rewards import RewardEvaluator, RewardFunctionError
from .sampling import CandidateSampler


logger = logging.getLogger(__name__)


class RoundCollector:
    """
    Samples the posterior for a round and pays one reward evaluation (NRE) per accepted, never-seen candidate, until
    the round's share of the hard budget is spent: accepted candidates already paid for are recorded as free repeats,
    rejected ones cost nothing. Every evaluation is written to the ledger before it counts.

    Args:
        sampler ([`CandidateSampler`]):
            Draws the posterior's candidates; restarted from the round's seed before [`~RoundCollector.collect`].
        ledger ([`RewardLedger`]):
            The run's ledger, written to.
        rewards ([`RewardEvaluator`]):
            The run's reward functions.
        args ([`BanelConfig`]):
            The run's `samples_per_round` (NREs of a round), `max_reward_evaluations` (the hard budget: no round pays
            beyond it) and `max_sampling_attempts` (proposals per evaluation after which a round ends early).
    """

    def __init__(
        self,
        sampler: CandidateSampler,
        ledger: RewardLedger,
        rewards: RewardEvaluator,
        args: BanelConfig,
    ):
        self.sampler = sampler
        self.ledger = ledger
        self.rewards = rewards
        self.samples_per_round = args.samples_per_round
        self.max_reward_evaluations = args.max_reward_evaluations
        self.max_sampling_attempts = args.max_sampling_attempts
        self.disable_tqdm = args.disable_tqdm

    def collect(self, k: int, trainer_state=None) -> dict:
        """
        Sample and pay round `k`; returns its figures (`budget`, `proposed`, `accepted`, `repeats`, `evaluated`).

        The sampler starts from the round's seed, so a round interrupted by a crash draws the same candidates again
        when the run resumes: the evaluations and repeats it had recorded are met again, in order, and reused instead
        of being paid or recorded twice (see [`RoundReplay`]). A round whose end is in the ledger is not sampled again.
        `trainer_state` is handed to the reward functions.
        """
        ledger = self.ledger
        if k in ledger.round_ends:
            return ledger.round_ends[k]
        paid_before = sum(1 for r in ledger.records if r["round"] < k)
        budget = min(self.samples_per_round, self.max_reward_evaluations - paid_before)
        replay = ledger.replay(k)  # written before an interruption: met again, not paid again
        stats = {"budget": budget, "proposed": 0, "accepted": 0, "repeats": 0, "evaluated": 0}
        max_proposed = self.max_sampling_attempts * max(budget, 1)
        progress = tqdm(total=budget, desc=f"Round {k} evaluations", leave=False, disable=self.disable_tqdm)
        while stats["evaluated"] < budget and stats["proposed"] < max_proposed:
            if acceptance_too_low(stats["evaluated"], stats["proposed"], self.max_sampling_attempts):
                break  # new candidates come at under 1 in max_sampling_attempts proposals: give up early
            examples, proposal = self.sampler.propose_batch()
            stats["proposed"] += len(examples)
            stats["accepted"] += int(proposal.accepted.sum())
            accepted = [
                (*candidate, ledger.lookup(candidate[0]["prompt"], candidate[2]))
                for candidate in self.sampler.accepted(examples, proposal)
            ]
            counted, to_pay, abandoned = self._select_to_pay(k, accepted, replay, budget - stats["evaluated"])
            if to_pay:
                self._evaluate_and_record(k, to_pay, trainer_state)
            stats["evaluated"] += abandoned + len(counted)
            stats["repeats"] += self._record_repeats(k, accepted, counted, replay)
            progress.update(min(stats["evaluated"], budget) - progress.n)
            progress.set_postfix(acceptance=f"{stats['accepted'] / stats['proposed']:.2e}", refresh=False)
        progress.close()
        stats["evaluated"] += replay.abandon()  # recorded before the interruption, not met again: still this round's
        if stats["evaluated"] < budget:
            logger.warning(
                f"Round {k}: the posterior accepted {stats['accepted']} of {stats['proposed']} candidates "
                f"(acceptance rate {stats['accepted'] / max(stats['proposed'], 1):.2e}), {stats['repeats']} of them "
                f"already evaluated, so only {stats['evaluated']} of the round's {budget} evaluations were spent "
                f"within {self.max_sampling_attempts} proposals per evaluation. Ending the round early. If acceptance "
                "is low, lower `target_rejection_rate` or raise `max_sampling_attempts`."
            )
        ledger.end_round(k, stats)
        return stats

    def _select_to_pay(
        self, k: int, accepted: list[tuple], replay: RoundReplay, budget_left: int
    ) -> tuple[set[str], list[tuple[dict, list[int]]], int]:
        """
        Sort a batch's accepted candidates `(example, completion_ids, completion, ledger record or None)`: an
        evaluation paid before an interruption and met again counts and is not paid; a candidate never paid is paid
        while the round's budget allows; anything else is a free repeat. Returns the keys of the candidates that count
        as this batch's evaluations, the candidates to pay, and the number of evaluations recorded before an
        interruption that the round stops waiting for (they still count as its own).
        """
        counted, to_pay, unseen = set(), [], False
        for example, completion_ids, completion, record in accepted:
            key = sample_key(example["prompt"], completion)
            if key in counted:
                continue  # drawn twice in this batch: a free repeat
            if replay.meets(record):
                counted.add(key)
            elif record is None:
                unseen = True
                # The hard cap: never beyond the round's share, counting what it has yet to meet again.
                if len(counted) + len(replay.pending) < budget_left:
                    counted.add(key)
                    to_pay.append((example, completion_ids))
        if not (unseen and replay.pending):
            return counted, to_pay, 0
        logger.warning(
            f"Round {k} resumed, but its sampling did not draw again the {len(replay.pending)} evaluations it had "
            "paid for before the interruption (non-deterministic sampling, or a changed configuration?). They stay "
            "part of the round, which goes on with new candidates."
        )
        return counted, to_pay, replay.abandon()

    def _record_repeats(self, k: int, accepted: list[tuple], counted: set[str], replay: RoundReplay) -> int:
        """
        Record as free repeats the accepted candidates whose reward is known now, except the first occurrence of each
        candidate counted as an evaluation of this batch. Returns how many the batch had.
        """
        repeats, first_occurrences = [], set(counted)
        for example, _, completion, _ in accepted:
            key = sample_key(example["prompt"], completion)
            record = self.ledger.lookup(example["prompt"], completion)
            if key in first_occurrences:
                first_occurrences.remove(key)  # the evaluation itself
            elif record is not None and record["index"] not in replay.pending:
                repeats.append(record["index"])
        self.ledger.append_repeats(k, replay.unwritten_repeats(repeats))
        return len(repeats)

    def _evaluate_and_record(self, k: int, candidates: list[tuple[dict, list[int]]], trainer_state) -> None:
        """
        Call the reward functions once on the batch and write every result to the ledger before it counts. The
        records are built before the call, from copies of the candidates as sampled, so that they hold what was paid
        for whatever the functions do with their inputs (they get copies too: see [`call_reward_funcs`]).
        """
        records = [self._record(k, example, completion_ids) for example, completion_ids in candidates]
        examples = [example for example, _ in candidates]
        completion_ids = [ids for _, ids in candidates]
        try:
            rows = dict(enumerate(self.rewards(examples, completion_ids, trainer_state)))
        except RewardFunctionError as error:
            # The samples whose rewards are all usable were paid for: record them before stopping the run.
            self.ledger.append([self._paid(records[i], row) for i, row in error.rows.items()])
            raise
        self.ledger.append([self._paid(records[i], row) for i, row in rows.items()])

    def _record(self, k: int, example: dict, completion_ids: list[int]) -> dict:
        """The ledger record of an evaluation about to be paid, without its rewards."""
        return {
            "round": k,
            "prompt": copy.deepcopy(example["prompt"]),
            "completion": self.sampler.tokenizer.decode(completion_ids, skip_special_tokens=True),
            "completion_ids": list(completion_ids),
        }

    def _paid(self, record: dict, rewards: list[float | None]) -> dict:
        """`record` with the rewards it was paid for: one per function, their weighted sum and whether it succeeds."""
        reward = self.rewards.reward(rewards)
        return {**record, "rewards": rewards, "reward": reward, "success": self.rewards.is_success(reward)}


def round_metrics(ledger: RewardLedger, k: int, stats: dict, max_reward_evaluations: int, num_regions: int) -> dict:
    """The figures logged for round `k`: NREs, successes, the success rate of its paid samples, its acceptance."""
    this_round = ledger.paid_in_round(k)
    successes = sum(r["success"] for r in this_round)
    return {
        "round": k,
        "nre/used": len(ledger),
        "nre/left": max_reward_evaluations - len(ledger),
        "successes/total": sum(r["success"] for r in ledger.records),
        "successes/round": successes,
        "success_rate": successes / max(len(this_round), 1),
        "acceptance_rate": stats["accepted"] / max(stats["proposed"], 1),
        "repeats": stats["repeats"],
        "regions": num_regions,
    }


def region_has_evidence(ledger: RewardLedger, k: int, args: BanelConfig) -> bool:
    """
    Whether round `k` found enough successes for a region scored against a reference fit on the same posterior, the
    successes being all that tells its failures from the reference's samples (`reference_min_successes`). Regions
    scored against the model that drew their samples (`p_theta` in round 0, a distilled proposal, or
    `reference_model="proposal"`) need none.
    """
    if args.reference_model != "posterior" or k == 0 or args.distill_posterior:
        return True
    num_successes = sum(r["success"] for r in ledger.paid_in_round(k))
    if num_successes >= args.reference_min_successes:
        return True
    logger.warning(
        f"Round {k} adds no region: it found {num_successes} success(es), fewer than `reference_min_successes`="
        f"{args.reference_min_successes}, and they are all that would tell its failures from the reference's "
        "samples, so the region would be fitting noise. Its evaluations stay in the ledger; the posterior is "
        "unchanged."
    )
    return False


def negative_examples(ledger: RewardLedger, sampler: CandidateSampler, k: int, negative_samples: str) -> list[dict]:
    """
    The failures the negative model of round `k` is fit on: its own (`negative_samples="round"`) or every round's so
    far (`"all"`), paid evaluations and free repeats; successes are excluded by construction.
    """
    rounds = [k] if negative_samples == "round" else range(k + 1)
    return [
        {"prompt_ids": sampler.prompt_ids(r["prompt"]), "completion_ids": r["completion_ids"], "round": round_index}
        for round_index in rounds
        for r in ledger.samples_of_round(round_index)
        if not r["success"]
    ]
