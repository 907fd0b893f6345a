"""Steps 1-2 of a BaNEL round: sample the posterior and pay for accepted, never-seen candidates within the budget."""

import copy
import logging

from accelerate import Accelerator

from .config import BanelConfig
from .distributed import gather_to_all, on_main_process
from .ledger import RewardLedger, RoundReplay, sample_key
from .rejection import SamplingStats, sample_until
from .rewards import RewardEvaluator, RewardFunctionError
from .sampling import CandidateSampler


logger = logging.getLogger(__name__)


class RoundCollector:
    """
    Samples the posterior for a round and pays one reward evaluation (NRE) per accepted, never-seen candidate, until
    the round's share of the hard budget is spent: accepted candidates already paid for are recorded as free repeats,
    rejected ones cost nothing. Every evaluation is written to the ledger before it counts.

    With several processes, every process proposes and scores its own batches, from its own stream; the main process
    gathers them in rank order and alone pays, writes the ledger and decides when the round ends.

    Args:
        sampler ([`CandidateSampler`]):
            Draws the posterior's candidates; restarted from the round's seed (and rank) before
            [`~RoundCollector.collect`].
        ledger ([`RewardLedger`]):
            The run's ledger, written to by the main process.
        rewards ([`RewardEvaluator`]):
            The run's reward functions.
        args ([`BanelConfig`]):
            The run's `samples_per_round` (NREs of a round), `max_reward_evaluations` (the hard budget: no round pays
            beyond it) and `max_sampling_attempts` (proposals per evaluation after which a round ends early).
        accelerator ([`~accelerate.Accelerator`], *optional*):
            The processes that propose; one when `None`.
    """

    def __init__(
        self,
        sampler: CandidateSampler,
        ledger: RewardLedger,
        rewards: RewardEvaluator,
        args: BanelConfig,
        accelerator: Accelerator | None = None,
    ):
        self.sampler = sampler
        self.ledger = ledger
        self.rewards = rewards
        self.samples_per_round = args.samples_per_round
        self.max_reward_evaluations = args.max_reward_evaluations
        self.max_sampling_attempts = args.max_sampling_attempts
        self.disable_tqdm = args.disable_tqdm
        self.accelerator = accelerator

    def collect(self, k: int, trainer_state=None) -> dict:
        """
        Sample and pay round `k`; returns its figures (`budget`, `proposed`, `accepted`, `repeats`, `evaluated`) on
        every process.

        The sampler starts from the round's seed, so a round interrupted by a crash draws the same candidates again
        when the run resumes: the evaluations and repeats it had recorded are met again, in order, and reused instead
        of being paid or recorded twice (see [`RoundReplay`]). A round whose end is in the ledger is not sampled again.
        `trainer_state` is handed to the reward functions. What they log (`log_extra`, `log_metric`) from the round's
        first evaluation on stays in `rewards.logs` for [`round_metrics`] and [`log_round_completions`], until the
        next round is sampled: logs left from before (the previous round's, a batch that raised) are dropped.
        """
        if k in self.ledger.round_ends:
            return self.ledger.round_ends[k]
        num_lines = len(self.ledger.lines)
        budget = on_main_process(self.accelerator, self._start, k)
        main = self.accelerator is None or self.accelerator.is_main_process
        processes = 1 if self.accelerator is None else self.accelerator.num_processes

        def draw(stats: SamplingStats) -> tuple[int, int, int]:
            size = self.sampler.batch_size(stats, budget, processes)  # the counts are every process's
            examples, proposal = self.sampler.propose_batch(size)  # on every process, from its own stream
            batch = [(len(examples), int(proposal.accepted.sum()), self.sampler.accepted(examples, proposal))]
            batches = gather_to_all(self.accelerator, batch)
            return on_main_process(self.accelerator, self._pay, k, batches, budget - stats.kept, trainer_state)

        disable_tqdm = self.disable_tqdm or not main
        stats = sample_until(budget, self.max_sampling_attempts, draw, f"Round {k} evaluations", disable_tqdm)
        stats = on_main_process(self.accelerator, self._end, k, budget, stats)
        lines = on_main_process(self.accelerator, lambda: self.ledger.lines[num_lines:])
        if not main:  # the other processes' ledgers are replicas of the main one's
            self.ledger.extend(lines)
        return stats

    def _start(self, k: int) -> int:
        """The round's budget and what it recorded before an interruption (on the main process)."""
        self.rewards.pop_logs()
        paid_before = sum(1 for r in self.ledger.records if r["round"] < k)
        self.replay = self.ledger.replay(k)  # written before an interruption: met again, not paid again
        self.repeats = 0
        return min(self.samples_per_round, self.max_reward_evaluations - paid_before)

    def _pay(
        self, k: int, batches: list[tuple[int, int, list]], budget_left: int, trainer_state
    ) -> tuple[int, int, int]:
        """
        Pay for the never-seen candidates the processes accepted (`batches`, in rank order), within the `budget_left`
        of the round. Returns the batch's candidates proposed, accepted, and counted as the round's evaluations.
        """
        accepted = [
            (*candidate, self.ledger.lookup(candidate[0]["prompt"], candidate[2]))
            for _, _, candidates in batches
            for candidate in candidates
        ]
        counted, to_pay, abandoned = self._select_to_pay(k, accepted, self.replay, budget_left)
        if to_pay:
            self._evaluate_and_record(k, to_pay, trainer_state)
        self.repeats += self._record_repeats(k, accepted, counted, self.replay)
        num_proposed = sum(num_proposed for num_proposed, _, _ in batches)
        return num_proposed, sum(num_accepted for _, num_accepted, _ in batches), abandoned + len(counted)

    def _end(self, k: int, budget: int, sampled: SamplingStats) -> dict:
        """Close the round in the ledger with its figures, warning when it could not spend its budget."""
        stats = {
            "budget": budget,
            "proposed": sampled.proposed,
            "accepted": sampled.accepted,
            "repeats": self.repeats,
            # Recorded before the interruption and not met again: still the round's own.
            "evaluated": sampled.kept + self.replay.abandon(),
        }
        if stats["evaluated"] < budget:
            logger.warning(
                f"Round {k}: the posterior accepted {stats['accepted']} of {stats['proposed']} candidates "
                f"(acceptance rate {sampled.acceptance:.2e}), {stats['repeats']} of them already evaluated, so only "
                f"{stats['evaluated']} of the round's {budget} evaluations were spent within "
                f"{self.max_sampling_attempts} proposals per evaluation. Ending the round early. If acceptance is low, "
                "lower `target_rejection_rate` or raise `max_sampling_attempts`."
            )
        self.ledger.end_round(k, stats)
        check_reward_scale(self.ledger, k, self.rewards)
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
        pay_and_record(self.ledger, self.rewards, self.sampler.tokenizer, k, candidates, trainer_state)


def pay_and_record(
    ledger: RewardLedger,
    rewards: RewardEvaluator,
    tokenizer,
    k: int,
    candidates: list[tuple[dict, list[int]]],
    trainer_state,
) -> None:
    """
    Call the reward functions once on the batch `candidates` `(example, completion_ids)` and write every result to
    `ledger` (as round `k`'s) before it counts. The records are built before the call, from copies of the candidates
    as sampled, so that they hold what was paid for whatever the functions do with their inputs (they get copies too:
    see [`call_reward_funcs`]).
    """
    records = [
        {
            "round": k,
            "prompt": copy.deepcopy(example["prompt"]),
            "completion": tokenizer.decode(completion_ids, skip_special_tokens=True),
            "completion_ids": list(completion_ids),
        }
        for example, completion_ids in candidates
    ]

    def paid(i: int, row: list[float | None]) -> dict:
        reward = rewards.reward(row)
        return {**records[i], "rewards": row, "reward": reward, "success": rewards.is_success(reward)}

    examples, completion_ids = [example for example, _ in candidates], [ids for _, ids in candidates]
    try:
        rows = dict(enumerate(rewards(examples, completion_ids, trainer_state)))
    except RewardFunctionError as error:
        # The samples whose rewards are all usable were paid for: record them before stopping.
        ledger.append([paid(i, row) for i, row in error.rows.items()])
        raise
    ledger.append([paid(i, row) for i, row in rows.items()])


def check_reward_scale(ledger: RewardLedger, k: int, rewards: RewardEvaluator) -> None:
    """
    Warn when round `k`'s paid samples suggest that `success_threshold` does not fit the reward: all of them succeed
    (nothing to learn from), or, before any success of the run, a graded reward (more than two distinct values)
    stays below the threshold throughout; and, as GRPO does, when every reward function returned None for a sample
    (these two once per run, as `rewards.warned` records).
    """
    records = ledger.paid_in_round(k)
    values = [r["reward"] for r in records if r["reward"] is not None]
    threshold = rewards.success_threshold
    unrewarded = [r for r in records if r["reward"] is None]
    if unrewarded and "no_reward" not in rewards.warned:
        rewards.warned.add("no_reward")
        logger.warning(
            f"Round {k}: {len(unrewarded)} of {len(records)} paid samples have no reward: every reward function "
            f"returned None (or NaN) for them, e.g. prompt {unrewarded[0]['prompt']!r}, completion "
            f"{unrewarded[0]['completion']!r}. They count as failures. Please ensure that at least one reward "
            "function returns a valid reward."
        )
    if records and all(r["success"] for r in records):
        logger.warning(
            f"Round {k}: all {len(records)} paid samples are successes (rewards from {min(values)} to "
            f"{max(values)}, `success_threshold`={threshold}): nothing to learn from, since failures are what BaNEL "
            "trains on. Is `success_threshold` too low for this reward?"
        )
    graded = len(set(values)) > 2 and not any(r["success"] for r in ledger.records)
    if graded and "graded_reward" not in rewards.warned:
        rewards.warned.add("graded_reward")
        logger.warning(
            f"Round {k}: no success yet, and the reward is graded ({len(set(values))} distinct values) with every "
            f"value below `success_threshold`={threshold}: the highest seen is {max(values)}. A graded reward needs "
            "`success_threshold` set to the score that counts as a success; if that is the current one, ignore this."
        )


def round_fell_short(k: int, stats: dict, num_evaluations: int, max_reward_evaluations: int) -> bool:
    """Whether round `k` could not spend its budget (`stats` from [`RoundCollector.collect`]), warning if so."""
    if stats["evaluated"] >= stats["budget"]:
        return False
    logger.warning(
        f"Ending the run after round {k}, which could not spend its budget: a further region would only lower the "
        f"acceptance rate ({stats['accepted'] / max(stats['proposed'], 1):.2e}). {num_evaluations} of "
        f"{max_reward_evaluations} evaluations are spent; to go on, call `train()` again with a higher "
        "`max_sampling_attempts`."
    )
    return True
