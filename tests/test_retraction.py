"""`retraction_p_value`: a region stays only if the paid samples drawn with it succeed more often than without it."""

import json
import os
import types

import pytest

from banel_trl import BanelPosterior, BanelTrainer
from banel_trl.collect import retract_unhelpful_region
from banel_trl.hub import generate_banel_model_card
from banel_trl.regions import POSTERIOR_CONFIG_NAME, RejectionRegion
from banel_trl.report import write_report

from .test_trainer import CountingReward


def paid(successes: int, failures: int) -> list[dict]:
    return [{"success": True}] * successes + [{"success": False}] * failures


@pytest.mark.parametrize(
    "round_0, round_1, retracted",
    [
        ((0, 50), (0, 50), True),  # no evidence either way: the region has not shown it helps
        ((1, 49), (3, 47), True),  # more, but within chance (p = 0.31)
        ((1, 49), (10, 40), False),  # p = 0.004
        ((10, 40), (1, 49), True),  # the region cut the successes
    ],
)
def test_the_paid_evidence_keeps_or_retracts_the_previous_region(round_0, round_1, retracted):
    ledger = types.SimpleNamespace(paid_in_round=lambda k: paid(*(round_0, round_1)[k]))
    args = types.SimpleNamespace(retraction_p_value=0.05, distill_posterior=False)
    region = RejectionRegion("region_0", 0.1, round=0)
    assert retract_unhelpful_region(ledger, [region], 1, args) is retracted
    assert region.retracted is retracted
    # Only the region of the round before is judged, once; the exact loop only; None keeps every region.
    assert retract_unhelpful_region(ledger, [region], 1, args) is retracted  # a resumed round decides the same
    assert retract_unhelpful_region(ledger, [RejectionRegion("region_0", 0.1, round=0)], 2, args) is False
    for other in ({"retraction_p_value": None}, {"distill_posterior": True}):
        fresh = RejectionRegion("region_0", 0.1, round=0)
        assert retract_unhelpful_region(ledger, [fresh], 1, types.SimpleNamespace(**{**vars(args), **other})) is False
        assert not fresh.retracted


def never_succeeds(completions, **kwargs):
    return [0.0] * len(completions)


def test_a_retracted_region_stops_rejecting_in_the_run_and_in_the_saved_posterior(
    make_proposal, tokenizer, unconditional_dataset, make_config, caplog
):
    args = make_config(first_region_rejection_rate=0.9, target_rejection_rate=0.5, retraction_p_value=0.05)
    counting = CountingReward(never_succeeds)

    def train():
        trainer = BanelTrainer(
            make_proposal(), counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
        )
        with caplog.at_level("WARNING", logger="banel_trl.collect"):
            trainer.train()
        trainer.ledger.close()
        return trainer

    trainer = train()
    # Round 1 found no more successes with region 0 than round 0 without it: it retracts region 0 and adds none;
    # round 2 samples p_theta again and adds its own region (the last one: no round after it to judge it).
    assert "Round 1 retracts the region of round 0: its paid samples succeeded 0 times in 50" in caplog.text
    assert [(r.round, r.retracted) for r in trainer.posterior.regions] == [(0, True), (2, False)]
    rounds = [log for log in trainer.state.log_history if "acceptance_rate" in log]
    assert rounds[1]["acceptance_rate"] < 1.0 and rounds[2]["acceptance_rate"] == 1.0
    assert [log["regions"] for log in rounds] == [1, 0, 1] and "threshold" not in rounds[1]
    assert len(counting.calls) == len(set(counting.calls)) == 150

    with open(os.path.join(args.output_dir, POSTERIOR_CONFIG_NAME)) as file:
        assert [region["retracted"] for region in json.load(file)["regions"]] == [True, False]
    posterior = BanelPosterior.from_pretrained(args.output_dir, make_proposal())
    assert [region.round for region in posterior.active_regions] == [2]
    card = generate_banel_model_card(args.output_dir, "run", "user/run", base_model="toy")
    assert "| Rejection regions | 1 (1 more retracted) |" in card.content
    report, _ = write_report(args.output_dir, posterior, tokenizer)
    with open(report) as file:
        assert "### Region 0 (threshold" in (text := file.read()) and "retracted: it rejects nothing" in text
    # A resumed run takes the same decisions from the ledger, and pays nothing again.
    assert [(r.round, r.retracted) for r in train().posterior.regions] == [(0, True), (2, False)]
    assert len(counting.calls) == 150
