"""
The review of a region by later paid evidence ([`RegionPolicy.review`]): a region stays only if the paid samples drawn
with it succeed more often than without it; otherwise it is relaxed to a shallower cut, or retracted.
"""

import json
import os
import types

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from banel_trl import BanelPosterior
from banel_trl.hub import generate_banel_model_card
from banel_trl.region_policy import RegionPolicy, RoundEvidence, relaxed_acceptance
from banel_trl.regions import BASE_ADAPTER, POSTERIOR_CONFIG_NAME, RejectionRegion
from banel_trl.report import write_report
from banel_trl.thresholds import region_scores

from .test_trainer import CountingReward


FAILURE_SCORES = [i / 100 for i in range(100)]  # the relaxed scores of 100 held-out failures


def paid(successes: int, failures: int) -> list[dict]:
    return [{"success": True}] * successes + [{"success": False}] * failures


@pytest.fixture
def scored_as_given(shipped_policy, monkeypatch):
    """
    The review at the shipped `review_p_value`, where the examples of a round's evidence are their relaxed scores
    already (no model is scored): `review(rounds, region, k, scores, **args)` reviews `region` in round `k` with
    `rounds[j]` = (successes, failures) paid in round j, and `scores` = (the relaxed scores of the successes paid in
    the region's round, those of its held-out failures). Returns whether the round changed the region.
    """
    monkeypatch.setattr(RegionPolicy, "_batch", lambda self, examples: examples)
    monkeypatch.setattr(
        "banel_trl.region_policy.region_scores", lambda posterior, region, batch: torch.tensor(batch).double()
    )

    def review(rounds, region, k, scores=([], FAILURE_SCORES), review_p_value=RegionPolicy.review_p_value, **args):
        defaults = dict(distill_posterior=False, first_region_rejection_rate=0.995, target_rejection_rate=0.9)
        policy = RegionPolicy(
            types.SimpleNamespace(**{**defaults, **args}), None, types.SimpleNamespace(regions=[region]), None
        )
        policy.review_p_value = review_p_value
        successes, held_out = scores
        policy._evidence[region.round] = RoundEvidence([], list(held_out), list(successes))
        ledger = types.SimpleNamespace(paid_in_round=lambda j: paid(*rounds[j]))
        return policy.review(ledger, k)

    return review


@given(st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True))
def test_a_relaxed_cut_is_never_deeper_than_the_cut_it_replaces(rejection_rate):
    kept = relaxed_acceptance(rejection_rate)
    assert kept is None or 1.0 - rejection_rate <= kept < 0.5


def test_the_default_first_cut_relaxes_to_keep_ten_times_more_and_deep_enough_cuts_retract():
    assert relaxed_acceptance(0.995) == pytest.approx(0.05)
    assert relaxed_acceptance(0.9) is None  # would keep all of them: no shallower cut that still rejects most
    assert relaxed_acceptance(0.5) is None


@pytest.mark.parametrize(
    "round_0, round_1, changed",
    [
        ((0, 50), (0, 50), True),  # no evidence either way: the region has not shown it helps
        ((1, 49), (3, 47), True),  # more, but within chance (p = 0.31)
        ((1, 49), (10, 40), False),  # p = 0.004
        ((10, 40), (1, 49), True),  # the region cut the successes
    ],
)
@pytest.mark.parametrize("first_region_rejection_rate, relaxes", [(0.995, True), (0.9, False)])
def test_the_paid_evidence_keeps_relaxes_or_retracts_the_previous_region(
    scored_as_given, round_0, round_1, changed, first_region_rejection_rate, relaxes
):
    review = scored_as_given
    settings = {"first_region_rejection_rate": first_region_rejection_rate}
    region = RejectionRegion("region_0", 0.1, round=0)
    assert review([round_0, round_1], region, 1, **settings) is changed
    assert region.retracted is (changed and not relaxes)
    assert region.relaxed is (changed and relaxes)
    assert region.reviewed_round == (1 if changed else None)
    if changed and relaxes:
        # Keeps ten times the held-out failures the cut at 0.995 kept, scored at the relaxed kappa.
        assert region.kappa == RegionPolicy.relaxed_kappa
        assert region.threshold == pytest.approx(torch.quantile(torch.tensor(FAILURE_SCORES).double(), 0.05).item())
    else:
        assert (region.kappa, region.threshold) == (None, 0.1)
    # A resumed round decides the same without changing the region again; only the previous round's region is judged;
    # the exact loop only; no `review_p_value` keeps every region as fit.
    decided = (region.threshold, region.kappa, region.retracted)
    assert review([round_0, round_1], region, 1, scores=([], [5.0, 6.0]), **settings) is changed
    assert (region.threshold, region.kappa, region.retracted) == decided
    assert review([round_0, round_1, round_1], RejectionRegion("region_0", 0.1, round=0), 2, **settings) is False
    fresh = RejectionRegion("region_0", 0.1, round=0)
    assert review([round_0, round_1], fresh, 1, **{**settings, "review_p_value": None}) is False
    assert not fresh.retracted and fresh.reviewed_round is None and fresh.threshold == 0.1


@pytest.mark.parametrize("target_rejection_rate, relaxes", [(0.9, False), (0.96, True)])
def test_a_later_region_is_relaxed_from_the_cut_of_its_own_round(scored_as_given, target_rejection_rate, relaxes):
    region = RejectionRegion("region_1", 0.1, round=1)
    rounds = [(0, 50), (0, 50), (0, 50)]
    assert scored_as_given(rounds, region, 2, target_rejection_rate=target_rejection_rate) is True
    assert region.relaxed is relaxes and region.retracted is not relaxes


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
    scored_as_given, success_scores, retracted
):
    # A count beyond the threshold could not tell 3 successes from chance at a 95% cut (0.95^3 = 0.86): their ranks do.
    region = RejectionRegion("region_0", 0.1, round=0)
    assert scored_as_given([(30, 3720), (30, 3720)], region, 1, (success_scores, FAILURE_SCORES)) is True
    assert region.retracted is retracted and region.relaxed is not retracted and region.reviewed_round == 1


@pytest.mark.parametrize(
    "round_2, retracted",
    [
        ((0, 50), True),  # p = 0.004: the relaxed region cut the successes of round 0
        ((6, 44), False),  # fewer, within chance (p = 0.24)
        ((40, 10), False),  # more
    ],
)
def test_a_relaxed_region_is_retracted_only_when_the_next_round_shows_a_loss(scored_as_given, round_2, retracted):
    region = RejectionRegion("region_0", 0.1, round=0, kappa=2.0, reviewed_round=1)
    rounds = [(10, 40), (0, 50), round_2]
    assert scored_as_given(rounds, region, 2) is retracted
    assert region.retracted is retracted and region.reviewed_round == (2 if retracted else 1)
    assert (region.threshold, region.kappa) == (0.1, 2.0)  # never relaxed twice
    assert scored_as_given(rounds + [(0, 50)], region, 3) is False  # judged once, by the round after it changed


def never_succeeds(completions, **kwargs):
    return [0.0] * len(completions)


@pytest.mark.parametrize("first_region_rejection_rate, relaxes", [(0.9, False), (0.995, True)])
def test_in_the_distilled_loop_a_changed_region_replaces_the_proposal_distilled_from_it(
    train_toy, make_proposal, make_config, caplog, monkeypatch, first_region_rejection_rate, relaxes
):
    monkeypatch.setattr(RegionPolicy, "review_p_value", 0.05)
    settings = dict(max_reward_evaluations=100, distill_posterior=True, distillation_samples=100)
    args = make_config(first_region_rejection_rate=first_region_rejection_rate, **settings)
    trainer = train_toy(args, CountingReward(never_succeeds), logger="banel_trl.region_policy")
    (region,) = trainer.posterior.regions
    assert f"Round 1 {'relaxes' if relaxes else 'retracts'} the region of round 0" in caplog.text
    rounds = [log for log in trainer.state.log_history if "acceptance_rate" in log]
    # Round 1 sampled the proposal distilled from region 0 (nothing rejected), then replaced it: a retracted region
    # returns to p_theta; a relaxed one is distilled again, into the same adapter, from p_theta cut by the relaxed cut.
    assert rounds[1]["acceptance_rate"] == 1.0 and region.reviewed_round == 1 and region.relaxed is relaxes
    assert trainer.posterior.proposal_adapter == ("proposal_1" if relaxes else BASE_ADAPTER)
    assert ("distillation/samples" in rounds[1]) is relaxes and trainer.posterior.active_regions == []
    saved = BanelPosterior.from_pretrained(args.output_dir, make_proposal())
    assert saved.proposal_adapter == trainer.posterior.proposal_adapter


@pytest.mark.parametrize(
    "round_0, round_1, changed",
    [
        ((0, 750), (0, 750), True),  # no evidence either way
        ((0, 750), (1, 749), True),  # one more success: p = 0.5
        ((0, 750), (2, 748), False),  # two more: p = 0.25, kept
        ((1, 749), (4, 746), False),  # kept in the distilled loop, relaxed in the exact loop (p = 0.19)
    ],
)
def test_the_distilled_loop_keeps_a_region_whose_next_small_round_found_two_more_successes(
    scored_as_given, round_0, round_1, changed
):
    region = RejectionRegion("region_0", 0.1, round=0)
    assert scored_as_given([round_0, round_1], region, 1, distill_posterior=True) is changed
    assert region.relaxed is changed  # the first cut, 0.995, has a shallower cut


def rejected_share(posterior: BanelPosterior, region: RejectionRegion, batch: dict) -> float:
    return (region_scores(posterior, region, batch) > region.threshold).double().mean().item()


@pytest.mark.parametrize("first_region_rejection_rate, relaxes", [(0.9, False), (0.96, True)])
def test_a_region_the_next_round_does_not_show_to_help_is_retracted_or_relaxed_in_the_run_and_when_saved(
    train_toy, make_proposal, tokenizer, make_config, caplog, monkeypatch, first_region_rejection_rate, relaxes
):
    monkeypatch.setattr(RegionPolicy, "review_p_value", 0.05)  # every region added (`min_successes` 0), and reviewed
    args = make_config(first_region_rejection_rate=first_region_rejection_rate, target_rejection_rate=0.5)
    counting = CountingReward(never_succeeds)
    trainer = train_toy(args, counting, logger="banel_trl.region_policy")
    first, last = trainer.posterior.regions
    # Round 1 found no more successes with region 0 than round 0 without it: it retracts or relaxes region 0 and adds
    # none; round 2 samples without it (or with the relaxed cut) and adds its own region (the last: no round judges it).
    change = "relaxes" if relaxes else "retracts"
    assert f"Round 1 {change} the region of round 0: its paid samples succeeded 0 times in 50" in caplog.text
    assert (first.round, first.reviewed_round, last.round, last.retracted) == (0, 1, 2, False)
    assert first.retracted is not relaxes and first.relaxed is relaxes
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
    if relaxes:
        # The relaxed cut, scored at kappa 2, keeps ten times the held-out failures the cut at 0.96 kept.
        assert saved[0]["kappa"] == 2.0 and saved[0]["threshold"] == first.threshold
        assert rounds[1]["acceptance_rate"] < rounds[2]["acceptance_rate"] < 1.0
        assert [log["regions"] for log in rounds] == [1, 1, 2]
        assert [region.round for region in posterior.active_regions] == [0, 2]
        assert "| Rejection regions | 2 (1 relaxed) |" in card and "relaxed, kappa 2: rejects" in text
        # Never deeper: of the round's held-out failures, the relaxed region rejects no larger share than the cut it
        # replaced (the region as fit, whose threshold round 0 logged).
        as_fit = RejectionRegion(**{**vars(first), "kappa": None, "reviewed_round": None})
        as_fit.threshold = rounds[0]["threshold"]
        held_out = trainer.region_policy.evidence(trainer.ledger, 0).held_out
        batch = trainer.region_policy._batch(held_out)
        relaxed_share, as_fit_share = (rejected_share(trainer.posterior, r, batch) for r in (first, as_fit))
        assert len(held_out) >= 2 and relaxed_share <= as_fit_share
        assert relaxed_share <= 1.0 - relaxed_acceptance(0.96) + 1.0 / len(held_out)
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
    train_toy, make_config, monkeypatch
):
    # Round 0 pays 10 successes in 50, rounds 1 and 2 none: round 1 relaxes region 0 (no gain), round 2 retracts the
    # relaxed region (a loss, p < 0.001). The run is then resumed for a round 3, which samples p_theta again and adds
    # its own region: rounds 1 and 2 are not fit again.
    monkeypatch.setattr(RegionPolicy, "review_p_value", 0.05)
    settings = dict(first_region_rejection_rate=0.96, target_rejection_rate=0.5)
    reward = FirstPaidSucceed(10)

    def train(num_rounds):
        args = make_config(max_reward_evaluations=200, num_rounds=num_rounds, **settings)
        return train_toy(args, reward).posterior.regions

    assert [(r.round, r.reviewed_round, r.retracted, r.kappa) for r in train(3)] == [(0, 2, True, 2.0)]
    regions = train(4)
    assert [(r.round, r.reviewed_round, r.retracted) for r in regions] == [(0, 2, True), (3, None, False)]
    assert len(reward.calls) == len(set(reward.calls)) == 200
