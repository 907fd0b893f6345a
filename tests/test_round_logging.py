"""
What a round logs, as GRPOTrainer does: what reward functions log (`log_extra`, `log_metric`), the per-function reward
figures, the completions table; and the warnings of a negative fit that did not move and of a reward scale that does
not fit `success_threshold`.
"""

import logging
import statistics

import pytest
import torch

from banel_trl import BanelTrainer
from banel_trl import metrics as metrics_module
from banel_trl.ledger import RewardLedger
from banel_trl.metrics import log_round_completions, reward_metrics, round_metrics
from banel_trl.regions import RejectionRegion
from banel_trl.rewards import RewardEvaluator, RewardLogs
from banel_trl.testing import starts_with_b
from banel_trl.thresholds import calibrated_threshold


UNTRAINED = "the negative model barely moved"
ALL_SUCCESSES = "paid samples are successes"
GRADED = "the reward is graded"


def logging_reward(completions, log_extra, log_metric, **kwargs):
    """The toy task's reward, logging each completion's first letter and the batch's share of "a" starts."""
    log_extra("first_letter", [completion[:1] for completion in completions])
    share = sum(completion.startswith("a") for completion in completions) / len(completions)
    log_metric("a_share", share)
    LOGGED_SHARES.append((len(completions), share))
    return starts_with_b(completions)


LOGGED_SHARES = []  # (batch size, share of "a" starts) of each call of `logging_reward`


def round_logs(trainer):
    return [entry for entry in trainer.state.log_history if "nre/used" in entry]


def evaluator(tokenizer, reward_funcs, weights=None, success_threshold=1.0):
    weights = weights or [1.0] * len(reward_funcs)
    none = [None] * len(reward_funcs)
    return RewardEvaluator(reward_funcs, none, weights, success_threshold, tokenizer, False, torch.device("cpu"))


def ledger_of(rewards_rows, weights, k=0, threshold=1.0):
    """A ledger replica of round `k` holding one paid record per row of rewards."""
    lines = []
    for i, rewards in enumerate(rewards_rows):
        given = [r * w for r, w in zip(rewards, weights, strict=True) if r is not None]
        reward = sum(given) if given else None
        record = dict(index=i, round=k, prompt="", completion=f"c{i}", completion_ids=[i], rewards=rewards)
        lines.append({**record, "reward": reward, "success": reward is not None and reward >= threshold})
    return RewardLedger.replica(lines)


# ------------------------------------------------------------------------------------------------- log_extra, log_metric


def test_the_evaluator_collects_what_reward_functions_log_per_batch(tokenizer):
    calls = []

    def first(completions, log_extra, log_metric, **kwargs):
        calls.append(len(completions))
        log_extra("n", list(range(len(completions))))
        log_metric("batch_size", len(completions))
        return [0.0] * len(completions)

    def second(completions, log_extra, **kwargs):
        if len(calls) == 2:
            log_extra("late", ["x"] * len(completions))  # a column first logged for the second batch
        return [None] * len(completions)

    rewards = evaluator(tokenizer, [first, second])
    ids = tokenizer("ab")["input_ids"]
    rewards([{"prompt": ""}] * 2, [ids] * 2)
    rewards([{"prompt": ""}] * 3, [ids] * 3)
    logs = rewards.pop_logs()
    assert logs.num_samples == 5
    assert logs.metrics == {"batch_size": 2.5}  # averaged over the calls
    assert logs.extra == {"n": [0, 1, 0, 1, 2], "late": [None, None, "x", "x", "x"]}
    assert rewards.pop_logs().num_samples == 0, "popping clears"

    with rewards.logs_apart() as evaluation:  # an evaluation's calls do not mix with the round's
        rewards([{"prompt": ""}], [ids])
    assert evaluation.metrics == {"batch_size": 1.0} and rewards.logs.num_samples == 0


def test_a_batch_whose_rewards_are_unusable_logs_nothing(tokenizer):
    def breaks(completions, log_metric, **kwargs):
        log_metric("seen", 1.0)
        return [0.0]  # one reward for a batch of two

    rewards = evaluator(tokenizer, [breaks])
    ids = tokenizer("ab")["input_ids"]
    with pytest.raises(Exception, match="returned 1 rewards"):
        rewards([{"prompt": ""}] * 2, [ids] * 2)
    assert rewards.pop_logs().metric_values == {}


def test_a_round_logs_what_reward_functions_logged_and_grpo_reward_figures(
    proposal, tokenizer, unconditional_dataset, make_config, caplog, capsys
):
    # Needs trainer.py's `_log_round` to hand the evaluator to `round_metrics` and call `log_round_completions`.
    args = make_config(max_reward_evaluations=64, samples_per_round=32, log_completions=True)
    LOGGED_SHARES.clear()
    trainer = BanelTrainer(
        proposal, [logging_reward, starts_with_b], args, unconditional_dataset, processing_class=tokenizer
    )
    with caplog.at_level(logging.WARNING, logger="banel_trl"):
        trainer.train()
    logged = round_logs(trainer)
    assert len(logged) == 2
    calls = iter(LOGGED_SHARES)
    for k, entry in enumerate(logged):
        records = trainer.ledger.paid_in_round(k)
        shares, evaluated = [], 0
        while evaluated < len(records):  # the calls that paid for this round's samples, in order
            size, share = next(calls)
            shares.append(share)
            evaluated += size
        assert entry["a_share"] == pytest.approx(statistics.fmean(shares))  # averaged over the round's batches
        rewards = [r["rewards"][0] for r in records]
        assert entry["rewards/logging_reward/mean"] == pytest.approx(statistics.fmean(rewards))
        assert entry["rewards/starts_with_b/std"] == pytest.approx(statistics.stdev(rewards))
        assert entry["reward"] == pytest.approx(2 * statistics.fmean(rewards))
        assert "reward_std" in entry
    printed = capsys.readouterr().out
    assert "first_letter" in printed and "logging_reward" in printed
    assert all(f"Step {entry['step']}" in printed for entry in logged), "titled with the step of the round's figures"
    assert not any(text in caplog.text for text in (UNTRAINED, ALL_SUCCESSES, GRADED)), caplog.text


# ------------------------------------------------------------------------------------------- per-function reward figures


def test_reward_figures_leave_none_out_as_grpo_nanmean():
    ledger = ledger_of([[1.0, None, None], [0.0, 2.0, None], [None, 4.0, None]], [1.0, 1.0, 1.0])
    metrics = reward_metrics(ledger.paid_in_round(0), ["f", "g", "h"])
    assert metrics["rewards/f/mean"] == 0.5 and metrics["rewards/f/std"] == pytest.approx(statistics.stdev([1, 0]))
    assert metrics["rewards/g/mean"] == 3.0 and metrics["rewards/g/std"] == pytest.approx(statistics.stdev([2, 4]))
    assert metrics["rewards/h/mean"] is None and metrics["rewards/h/std"] is None
    assert metrics["reward"] == pytest.approx(7 / 3)
    assert metrics["reward_std"] == pytest.approx(statistics.stdev([1, 2, 4]))


def test_round_metrics_add_reward_figures_and_logged_metrics(tokenizer):
    ledger = ledger_of([[1.0], [0.0]], [1.0])
    logs = RewardLogs()
    logs.add_batch({}, {"custom": [0.5, float("nan"), 1.0], "round": [7.0]}, 2)
    stats = {"accepted": 2, "proposed": 4, "repeats": 0}
    rewards = evaluator(tokenizer, [starts_with_b])
    rewards.logs = logs  # what the functions logged while the round was collected
    metrics = round_metrics(ledger, 0, stats, 10, 1, rewards)
    assert metrics["custom"] == 0.75  # NaN left out, as GRPO's `log`
    assert metrics["round"] == 0, "the built-in figures win a name they share"
    assert metrics["rewards/starts_with_b/mean"] == 0.5 and metrics["success_rate"] == 0.5
    assert "reward" not in round_metrics(ledger, 0, stats, 10, 1)  # without the evaluator: as before


# ------------------------------------------------------------------------------------------------------ completions table


def test_the_completions_table_shows_rewards_and_logged_columns(tokenizer, capsys):
    pytest.importorskip("rich")
    ledger = ledger_of([[1.0, None], [0.0, 2.0], [0.0, 3.0]], [1.0, 1.0])
    logs = RewardLogs()
    logs.add_batch({"why": ["second", "third"]}, {}, 2)  # the round's last two evaluations (the first was resumed)
    rewards = evaluator(tokenizer, [starts_with_b, logging_reward])
    rewards.logs = logs
    log_round_completions(ledger, 0, rewards, 17, None)
    printed = capsys.readouterr().out
    for text in ("Step 17", "starts_with_b", "logging_reward", "why", "c0", "c2", "second", "third", "nan", "3.00"):
        assert text in printed, (text, printed)
    log_round_completions(ledger, 0, rewards, 17, 2)
    printed = capsys.readouterr().out
    assert "c1" in printed and "c2" not in printed and "third" not in printed


def test_without_rich_the_completions_are_log_lines(tokenizer, monkeypatch, caplog):
    monkeypatch.setattr(metrics_module, "is_rich_available", lambda: False)
    ledger = ledger_of([[1.0], [0.0]], [1.0])
    with caplog.at_level(logging.INFO, logger="banel_trl.metrics"):
        log_round_completions(ledger, 0, evaluator(tokenizer, [starts_with_b]), 3, 8)
    assert "round 0 | reward 1.0 | prompt '' | completion 'c0'" in caplog.text
    assert "completion 'c1'" in caplog.text


# ------------------------------------------------------------------------------------------------ untrained negative fit


def test_a_flat_calibration_warns_with_the_learning_rate(caplog):
    region = RejectionRegion("region_3", 0.0, 3)

    def batch(*completions):  # 10-token completions
        return {
            "prompt_ids": torch.ones(len(completions), 1, dtype=torch.long),
            "completion_ids": torch.tensor([[c] * 10 for c in completions]),
            "completion_mask": torch.ones(len(completions), 10),
        }

    with caplog.at_level(logging.WARNING, logger="banel_trl.thresholds"):
        calibrated_threshold(torch.tensor([0.001, 0.002, -0.001, 0.0]), batch(4, 5, 6, 7), region, 0.5, 1e-6)
    assert UNTRAINED in caplog.text and "Round 3" in caplog.text and "learning_rate`=1e-06" in caplog.text
    assert len(caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="banel_trl.thresholds"):
        calibrated_threshold(torch.tensor([-2.0, 0.5, 1.0, 3.0]), batch(4, 5, 6, 7), region, 0.5, 1e-3)
        calibrated_threshold(torch.tensor([0.0]), batch(4), region, 0.5)  # one failure: no span to measure
        calibrated_threshold(torch.tensor([0.0, 0.0]), batch(4, 4), region, 0.5)  # the same failure twice
    assert not caplog.records


def test_a_negative_fit_at_grpo_learning_rate_warns(proposal, tokenizer, unconditional_dataset, make_config, caplog):
    args = make_config(max_reward_evaluations=50, learning_rate=1e-6)
    trainer = BanelTrainer(proposal, starts_with_b, args, unconditional_dataset, processing_class=tokenizer)
    with caplog.at_level(logging.WARNING, logger="banel_trl"):
        trainer.train()
    assert UNTRAINED in caplog.text and "Round 0" in caplog.text
    assert "`learning_rate`=1e-06" in caplog.text  # needs trainer.py to pass `args.learning_rate`


def test_a_normal_run_gives_none_of_these_warnings(proposal, tokenizer, unconditional_dataset, make_config, caplog):
    # Shallow cuts: at the shipped ones the third round spends minutes in rejection sampling.
    args = make_config(first_region_rejection_rate=0.9, target_rejection_rate=0.5)
    trainer = BanelTrainer(proposal, starts_with_b, args, unconditional_dataset, processing_class=tokenizer)
    with caplog.at_level(logging.WARNING, logger="banel_trl"):
        trainer.train()
    assert len(trainer.posterior.regions) == 3
    assert not any(text in caplog.text for text in (UNTRAINED, ALL_SUCCESSES, GRADED)), caplog.text


# ---------------------------------------------------------------------------------------------------------- reward scale


def test_a_round_of_successes_only_warns(proposal, tokenizer, unconditional_dataset, make_config, caplog):
    def always(completions, **kwargs):
        return [1.0] * len(completions)

    args = make_config(max_reward_evaluations=32, samples_per_round=32, success_threshold=0.5)
    trainer = BanelTrainer(proposal, always, args, unconditional_dataset, processing_class=tokenizer)
    with caplog.at_level(logging.WARNING, logger="banel_trl"):
        trainer.train()
    assert "Round 0: all 32 paid samples are successes" in caplog.text
    assert "`success_threshold`=0.5" in caplog.text


def test_a_graded_reward_below_the_threshold_warns_once(
    proposal, tokenizer, unconditional_dataset, make_config, caplog
):
    def share_of_b(completions, **kwargs):  # graded: 0, 1/6, ..., never 1 on these strings
        return [completion.count("b") / 10 for completion in completions]

    args = make_config(max_reward_evaluations=64, samples_per_round=32, num_train_epochs=1)
    trainer = BanelTrainer(proposal, share_of_b, args, unconditional_dataset, processing_class=tokenizer)
    with caplog.at_level(logging.WARNING, logger="banel_trl"):
        trainer.train()
    warnings = [record.getMessage() for record in caplog.records if GRADED in record.getMessage()]
    assert len(warnings) == 1, caplog.text
    highest = max(r["reward"] for r in trainer.ledger.paid_in_round(0))
    assert f"the highest seen is {highest}" in warnings[0] and "`success_threshold`=1.0" in warnings[0]
