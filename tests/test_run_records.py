"""Every reward call counted, every hit kept, nothing uploaded unasked, every round logged (issue 30)."""

import json
import multiprocessing
import os
import signal
from types import SimpleNamespace

import pytest
from datasets import Dataset
from huggingface_hub import HfApi

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.ledger import EVAL_LEDGER_NAME, HITS_NAME, LEDGER_NAME, RewardLedger, read_hits, sample_key
from banel_trl.report import export_hits_csv, read_run
from banel_trl.testing import starts_with_b


class CountingOracle:
    """A reward that keeps its own count of every sample it was called on: the independent counter of the tests."""

    __name__ = "counting_oracle"

    def __init__(self):
        self.keys = []

    def __call__(self, prompts, completions, **kwargs):
        self.keys += [sample_key(p, c) for p, c in zip(prompts, completions, strict=True)]
        return starts_with_b(completions)


def make_trainer(make_proposal, tokenizer, args, reward):
    return BanelTrainer(
        make_proposal(),
        reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [""]}),
        processing_class=tokenizer,
    )


def test_evaluation_pays_from_its_own_budget_once_per_sample_and_is_counted_apart(
    make_proposal, tokenizer, make_config
):
    oracle = CountingOracle()
    args = make_config(max_reward_evaluations=100, max_eval_reward_evaluations=60, num_generations_eval=32)
    trainer = make_trainer(make_proposal, tokenizer, args, oracle)
    trainer.train()
    eval_dataset = Dataset.from_dict({"prompt": [""] * 4})  # 128 samples asked for, more than the budget
    first = trainer.evaluate(eval_dataset)
    second = trainer.evaluate(eval_dataset)  # the budget is spent: only samples whose reward is known are measured

    training = RewardLedger.read(args.output_dir)
    evaluation = RewardLedger.read(args.output_dir, EVAL_LEDGER_NAME)
    assert len(oracle.keys) == len(training) + len(evaluation) == 100 + first["eval_reward_evaluations"]
    assert len(oracle.keys) == len(set(oracle.keys))  # no sample paid twice, across training and evaluation
    assert first["eval_reward_evaluations"] + first["eval_known_rewards"] == first["eval_num_samples"]
    assert len(evaluation) <= 60 and first["eval_reward_evaluations_left"] == 60 - len(evaluation)
    assert second["eval_reward_evaluations"] == 0 and second["eval_num_samples"] == second["eval_known_rewards"]
    run = read_run(args.output_dir)
    assert (len(run.records), run.eval_evaluations) == (100, len(evaluation))  # the report keeps them apart


def test_evaluate_without_an_evaluation_budget_is_refused_before_any_reward_call(
    make_proposal, tokenizer, make_config
):
    oracle = CountingOracle()
    trainer = make_trainer(make_proposal, tokenizer, make_config(max_reward_evaluations=50), oracle)
    with pytest.raises(ValueError, match="max_eval_reward_evaluations"):
        trainer.evaluate(Dataset.from_dict({"prompt": [""]}))
    assert oracle.keys == []


def test_the_last_log_carries_the_last_rounds_reward_figures_as_grpo(make_proposal, tokenizer, make_config):
    trainer = make_trainer(make_proposal, tokenizer, make_config(max_reward_evaluations=100), starts_with_b)
    trainer.train()
    last = trainer.state.log_history[-1]
    assert "rewards/starts_with_b/mean" in last and "reward" in last and "train_runtime" in last
    paid = trainer.ledger.paid_in_round(max(r["round"] for r in trainer.ledger.records))
    assert last["rewards/starts_with_b/mean"] == pytest.approx(sum(r["reward"] for r in paid) / len(paid))


# ------------------------------------------------------------------------------- kills during evaluation and hits


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _child(model, tokenizer, output_dir, settings, oracle_path, kill_at_eval_write):
    """Train (or resume) and evaluate; with `kill_at_eval_write = n`, die right after the n-th evaluation write."""
    write, count = RewardLedger._write, {"eval": 0}

    def hooked_write(self, lines):
        write(self, lines)
        if lines and self.path.endswith(EVAL_LEDGER_NAME):
            count["eval"] += 1
            if count["eval"] == kill_at_eval_write:
                _die()

    def oracle(prompts, completions, **kwargs):
        with open(oracle_path, "a") as file:
            file.write(json.dumps([sample_key(p, c) for p, c in zip(prompts, completions, strict=True)]) + "\n")
        return starts_with_b(completions)

    RewardLedger._write = hooked_write
    trainer = BanelTrainer(
        model,
        oracle,
        args=BanelConfig(output_dir, **settings),
        train_dataset=Dataset.from_dict({"prompt": [""]}),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.evaluate(Dataset.from_dict({"prompt": [""] * 4}))


@pytest.mark.parametrize("kill_at_eval_write", [1, 2])
def test_a_kill_during_evaluation_loses_no_record_and_every_hit_is_in_the_hits_file_once(
    make_proposal, tokenizer, make_config, tmp_path, kill_at_eval_write
):
    args = make_config(max_reward_evaluations=100, max_eval_reward_evaluations=100, num_generations_eval=16)
    settings = {
        key: getattr(args, key)
        for key in ("max_reward_evaluations", "samples_per_round", "max_completion_length", "num_generations",
                    "generation_batch_size", "num_train_epochs", "report_to", "use_cpu", "disable_tqdm", "seed",
                    "max_eval_reward_evaluations", "num_generations_eval")
    }  # fmt: skip
    output_dir, oracle_path = str(tmp_path / "run"), str(tmp_path / "oracle.jsonl")
    context = multiprocessing.get_context("fork")
    for kill in (kill_at_eval_write, None):
        child = context.Process(
            target=_child, args=(make_proposal(), tokenizer, output_dir, settings, oracle_path, kill)
        )
        child.start()
        child.join(300)
        assert child.exitcode == (-signal.SIGKILL if kill else 0)
        if kill:
            killed_records = RewardLedger.read(output_dir, EVAL_LEDGER_NAME).lines

    evaluation = RewardLedger.read(output_dir, EVAL_LEDGER_NAME)
    assert evaluation.lines[: len(killed_records)] == killed_records  # what the killed run recorded is all there
    with open(oracle_path) as file:
        paid = [key for line in file for key in json.loads(line)]
    assert len(paid) == len(set(paid)) == len(RewardLedger.read(output_dir)) + len(evaluation)  # none paid twice
    with open(os.path.join(output_dir, HITS_NAME)) as file:
        hits = [json.loads(line) for line in file]
    successes = [r for name in (LEDGER_NAME, EVAL_LEDGER_NAME) for r in RewardLedger.read(output_dir, name).records]
    expected = {sample_key(r["prompt"], r["completion"]) for r in successes if r["success"]}
    assert sorted(sample_key(h["prompt"], h["completion"]) for h in hits) == sorted(expected)  # each hit once
    assert hits == read_hits(output_dir) and {h["found_in"] for h in hits} <= {"training", "evaluation"}
    assert export_hits_csv(output_dir, str(tmp_path / "hits.csv")) == len(hits)


# ------------------------------------------------------------------------------------------------------- the Hub


@pytest.fixture
def hub_commits(monkeypatch):
    """The Hub at the commit call: `upload_folder` lists and filters the files as it does, nothing leaves."""
    commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        commits.append(sorted(operation.path_in_repo for operation in operations))
        return SimpleNamespace(repo_id=repo_id, oid="0" * 40, commit_url="", pr_url=None)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return commits


@pytest.mark.parametrize("include_run_records", [False, True])
def test_push_to_hub_uploads_the_run_records_only_when_asked(
    make_proposal, tokenizer, make_config, hub_commits, include_run_records
):
    args = make_config(max_reward_evaluations=100, hub_model_id="user/banel-toy")
    trainer = make_trainer(make_proposal, tokenizer, args, starts_with_b)
    trainer.train()
    assert os.path.exists(os.path.join(args.output_dir, HITS_NAME))
    trainer.push_to_hub(include_run_records=include_run_records)
    (files,) = hub_commits
    records = {LEDGER_NAME, HITS_NAME} & set(files)
    assert records == ({LEDGER_NAME, HITS_NAME} if include_run_records else set())
    assert "banel_posterior.json" in files and "README.md" in files
    with open(os.path.join(args.output_dir, "README.md")) as card:
        text = card.read()
    assert ("uploaded with the model" if include_run_records else "not uploaded") in text


# --------------------------------------------------------------------------------------------- resume and refusals


def test_a_resumed_run_logs_every_round_as_the_uninterrupted_run(
    make_proposal, tokenizer, make_config, shipped_policy
):
    # The shipped region policy: the next round reviews each region, so a run of short rounds relaxes or retracts.
    settings = dict(max_reward_evaluations=200, samples_per_round=40, seed=2, target_rejection_rate=0.5)

    def logged_rounds(trainer):
        return [e["round"] for e in trainer.state.log_history if "acceptance_rate" in e]

    whole = make_trainer(
        make_proposal,
        tokenizer,
        make_config(**settings, output_dir=make_config().output_dir + "_whole"),
        starts_with_b,
    )
    whole.train()
    crashing = make_trainer(make_proposal, tokenizer, make_config(**settings), starts_with_b)
    fit, calls = crashing.fitter.fit_adapter, []

    def crash_at_second_fit(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(*args, **kwargs)

    crashing.fitter.fit_adapter = crash_at_second_fit
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    resumed = make_trainer(make_proposal, tokenizer, make_config(**settings), starts_with_b)
    resumed.train()
    assert logged_rounds(resumed) == logged_rounds(whole)
    with open(os.path.join(resumed.args.output_dir, "trainer_state.json")) as file:
        saved = [e["round"] for e in json.load(file)["log_history"] if "acceptance_rate" in e]
    assert saved == logged_rounds(whole)


@pytest.mark.parametrize(
    "value", [{"num_hidden_layers": "one"}, {"num_hidden_layers": 1.5}, {"num_hidden_layers": None}, [1],
              "num_hidden_layers=1", '{"num_hidden_layers": 1'],
)  # fmt: skip
def test_a_malformed_negative_model_config_is_refused_before_anything_is_paid(
    make_proposal, tokenizer, make_config, value
):
    oracle = CountingOracle()
    with pytest.raises(ValueError, match="negative_model_config"):
        args = make_config(negative_model="scratch", negative_model_config=value)
        make_trainer(make_proposal, tokenizer, args, oracle).train()
    assert oracle.keys == []


def test_an_impossible_distillation_sample_count_is_refused(make_config):
    with pytest.raises(ValueError, match="distillation_samples"):
        make_config(distill_posterior=True, distillation_samples=10**9)
