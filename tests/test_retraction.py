"""
`retraction_p_value` and `relaxed_rejection_rate`: a region stays only if the paid samples drawn with it succeed more
often than without it; otherwise it is relaxed to a shallower cut, or retracted.
"""

import json
import os
import types

import pytest

from banel_trl import BanelPosterior
from banel_trl.collect import review_newest_region
from banel_trl.hub import generate_banel_model_card
from banel_trl.regions import POSTERIOR_CONFIG_NAME, RejectionRegion
from banel_trl.report import write_report

from .test_trainer import CountingReward


def paid(successes: int, failures: int) -> list[dict]:
    return [{"success": True}] * successes + [{"success": False}] * failures


def review(
    rounds: list[tuple[int, int]], region: RejectionRegion, k: int, scores=([], [0.0]), **settings
) -> tuple[bool, list]:
    """
    `review_newest_region` of round `k` with `rounds[j]` = (successes, failures) paid in round j, and a relaxed cut
    that scores the region's round's successes and its held-out failures `scores`: (changed, relaxed).
    """
    ledger = types.SimpleNamespace(paid_in_round=lambda j: paid(*rounds[j]))
    defaults = dict(retraction_p_value=0.05, distill_posterior=False, relaxed_rejection_rate=0.9, relaxed_kappa=2.0)
    args = types.SimpleNamespace(**{**defaults, "threshold_type": "calibrated", **settings})
    relaxed = []
    return review_newest_region(ledger, [region], k, args, lambda r: relaxed.append(r) or scores), relaxed


@pytest.mark.parametrize(
    "round_0, round_1, changed",
    [
        ((0, 50), (0, 50), True),  # no evidence either way: the region has not shown it helps
        ((1, 49), (3, 47), True),  # more, but within chance (p = 0.31)
        ((1, 49), (10, 40), False),  # p = 0.004
        ((10, 40), (1, 49), True),  # the region cut the successes
    ],
)
@pytest.mark.parametrize("relaxed_rejection_rate", [0.9, None])
def test_the_paid_evidence_keeps_relaxes_or_retracts_the_previous_region(
    round_0, round_1, changed, relaxed_rejection_rate
):
    region = RejectionRegion("region_0", 0.1, round=0)
    settings = {"relaxed_rejection_rate": relaxed_rejection_rate}
    relaxed = [region] if changed and relaxed_rejection_rate else []
    assert review([round_0, round_1], region, 1, **settings) == (changed, relaxed)
    assert region.retracted is (changed and relaxed_rejection_rate is None)
    assert region.reviewed_round == (1 if changed else None)
    # A resumed round decides the same without changing the region again; only the previous round's region is judged;
    # the exact loop only; None keeps every region as fit; a filter-factor threshold cannot be relaxed.
    assert review([round_0, round_1], region, 1, **settings) == (changed, [])
    assert review([round_0, round_1, round_1], RejectionRegion("region_0", 0.1, round=0), 2) == (False, [])
    for other in ({"retraction_p_value": None}, {"distill_posterior": True}):
        fresh = RejectionRegion("region_0", 0.1, round=0)
        assert review([round_0, round_1], fresh, 1, **other) == (False, [])
        assert not fresh.retracted and fresh.reviewed_round is None
    fresh = RejectionRegion("region_0", 0.1, round=0)
    assert review([round_0, round_1], fresh, 1, threshold_type="filter_factor") == (changed, [])
    assert fresh.retracted is changed


FAILURE_SCORES = [i / 100 for i in range(100)]  # the relaxed scores of 100 held-out failures


@pytest.mark.parametrize(
    "success_scores, retracted",
    [
        ([], False),  # no success to judge the relaxed cut by
        ([0.995, 0.996, 0.997], True),  # 3 successes above every failure: p = 1 / C(103, 3)
        ([1.5], True),  # one success above every failure is evidence already: p = 1 / 101
        ([0.945], False),  # one below five failures is not: p = 6 / 101
        ([i / 10 + 0.005 for i in range(10)], False),  # ranked among the failures: no evidence either way
        ([-1.0, -0.5], False),  # below every failure: the cut keeps them
    ],
)
def test_a_relaxed_cut_that_scores_the_successes_of_its_round_above_the_failures_is_retracted(
    success_scores, retracted
):
    # A count beyond the threshold could not tell 3 successes from chance at a 90% cut (0.9^3 = 0.73): their ranks do.
    region = RejectionRegion("region_0", 0.1, round=0)
    assert review([(30, 3720), (30, 3720)], region, 1, (success_scores, FAILURE_SCORES)) == (True, [region])
    assert region.retracted is retracted and region.reviewed_round == 1


@pytest.mark.parametrize(
    "round_2, retracted",
    [
        ((0, 50), True),  # p = 0.004: the relaxed region cut the successes of round 0
        ((6, 44), False),  # fewer, within chance (p = 0.24)
        ((40, 10), False),  # more
    ],
)
def test_a_relaxed_region_is_retracted_only_when_the_next_round_shows_a_loss(round_2, retracted):
    region = RejectionRegion("region_0", 0.1, round=0, reviewed_round=1)
    rounds = [(10, 40), (0, 50), round_2]
    assert review(rounds, region, 2) == (retracted, [])
    assert region.retracted is retracted and region.reviewed_round == (2 if retracted else 1)
    assert review(rounds + [(0, 50)], region, 3) == (False, [])  # judged once, by the round after it changed


def never_succeeds(completions, **kwargs):
    return [0.0] * len(completions)


@pytest.mark.parametrize("relaxed_rejection_rate", [None, 0.9])
def test_a_region_the_next_round_does_not_show_to_help_is_retracted_or_relaxed_in_the_run_and_when_saved(
    train_toy, make_proposal, tokenizer, make_config, caplog, relaxed_rejection_rate
):
    args = make_config(
        first_region_rejection_rate=0.9,
        target_rejection_rate=0.5,
        retraction_p_value=0.05,
        relaxed_rejection_rate=relaxed_rejection_rate,
    )
    counting = CountingReward(never_succeeds)
    trainer = train_toy(args, counting, logger="banel_trl.collect")
    first, last = trainer.posterior.regions
    # Round 1 found no more successes with region 0 than round 0 without it: it retracts or relaxes region 0 and adds
    # none; round 2 samples without it (or with the relaxed cut) and adds its own region (the last: no round judges it).
    change = "relaxes" if relaxed_rejection_rate else "retracts"
    assert f"Round 1 {change} the region of round 0: its paid samples succeeded 0 times in 50" in caplog.text
    assert (first.round, first.reviewed_round, last.round, last.retracted) == (0, 1, 2, False)
    assert first.retracted is (relaxed_rejection_rate is None)
    rounds = [log for log in trainer.state.log_history if "acceptance_rate" in log]
    assert rounds[1]["acceptance_rate"] < 1.0 and "threshold" not in rounds[1]
    assert len(counting.calls) == len(set(counting.calls)) == 150
    with open(os.path.join(args.output_dir, POSTERIOR_CONFIG_NAME)) as file:
        saved = json.load(file)["regions"]
    posterior = BanelPosterior.from_pretrained(args.output_dir, make_proposal())
    card = generate_banel_model_card(args.output_dir, "run", "user/run", base_model="toy").content
    report, _ = write_report(args.output_dir, posterior, tokenizer)
    with open(report) as file:
        text = file.read()
    if relaxed_rejection_rate:
        # The relaxed cut, scored at kappa 2, rejects 90% of region 0's held-out failures instead of none.
        assert saved[0]["kappa"] == 2.0 and saved[0]["threshold"] == first.threshold
        assert 0.0 < rounds[2]["acceptance_rate"] < 0.5 and [log["regions"] for log in rounds] == [1, 1, 2]
        assert [region.round for region in posterior.active_regions] == [0, 2]
        assert "| Rejection regions | 2 (1 relaxed) |" in card and "relaxed, kappa 2: rejects" in text
    else:
        assert rounds[2]["acceptance_rate"] == 1.0 and [log["regions"] for log in rounds] == [1, 0, 1]
        assert [region["retracted"] for region in saved] == [True, False]
        assert [region.round for region in posterior.active_regions] == [2]
        assert "| Rejection regions | 1 (1 more retracted) |" in card and "retracted: it rejects nothing" in text
    # A resumed run takes the same decisions from the ledger, and pays nothing again.
    assert train_toy(args, counting).posterior.regions == [first, last]
    assert len(counting.calls) == 150


class FirstPaidSucceed:
    """A reward under which only the first `num_successes` completions it is paid for succeed."""

    __name__ = "first_paid_succeed"

    def __init__(self, num_successes: int):
        self.num_successes = num_successes
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        first = len(self.calls)
        self.calls.extend(completions)
        return [float(first + i < self.num_successes) for i in range(len(completions))]


def test_a_relaxed_region_that_loses_successes_is_retracted_and_a_resumed_run_goes_on_after_the_change(
    train_toy, make_config
):
    # Round 0 pays 10 successes in 50, rounds 1 and 2 none: round 1 relaxes region 0 (no gain), round 2 retracts the
    # relaxed region (a loss, p < 0.001). The run is then resumed for a round 3, which samples p_theta again and adds
    # its own region: rounds 1 and 2 are not fit again.
    settings = dict(first_region_rejection_rate=0.9, target_rejection_rate=0.5, relaxed_rejection_rate=0.5)
    reward = FirstPaidSucceed(10)

    def train(num_rounds):
        args = make_config(max_reward_evaluations=200, num_rounds=num_rounds, retraction_p_value=0.05, **settings)
        return train_toy(args, reward).posterior.regions

    assert [(r.round, r.reviewed_round, r.retracted, r.kappa) for r in train(3)] == [(0, 2, True, 2.0)]
    regions = train(4)
    assert [(r.round, r.reviewed_round, r.retracted) for r in regions] == [(0, 2, True), (3, None, False)]
    assert len(reward.calls) == len(set(reward.calls)) == 200


def test_a_region_retracted_before_regions_recorded_their_review_is_counted_as_retracted_not_relaxed(tmp_path):
    # A posterior saved by an earlier version: `retracted` without `reviewed_round` (the retraction was its next round's).
    regions = [
        {"adapter_name": "region_0", "threshold": 0.1, "round": 0, "retracted": True},
        {"adapter_name": "region_1", "threshold": 0.1, "round": 2},
    ]
    with open(tmp_path / POSTERIOR_CONFIG_NAME, "w") as file:
        json.dump({"regions": regions, "base_model_name_or_path": "toy"}, file)
    assert RejectionRegion(**regions[0]).last_round == 1
    card = generate_banel_model_card(str(tmp_path), "run", "user/run").content
    assert "| Rejection regions | 1 (1 more retracted) |" in card
