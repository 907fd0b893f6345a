"""Every reward call counted, every hit kept, nothing uploaded unasked, every round logged (issue 30)."""

import json
import multiprocessing
import os
import signal
from types import SimpleNamespace

import pytest
from datasets import Dataset
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

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
    # One round (one region): its posterior accepts a few percent, and is sampled in seconds.
    args = make_config(max_reward_evaluations=50, max_eval_reward_evaluations=40, num_generations_eval=16)
    trainer = make_trainer(make_proposal, tokenizer, args, oracle)
    trainer.train()
    eval_dataset = Dataset.from_dict({"prompt": [""] * 4})  # 64 samples asked for, more than the budget
    first = trainer.evaluate(eval_dataset)
    second = trainer.evaluate(eval_dataset)  # the budget is spent: only samples whose reward is known are measured

    training = RewardLedger.read(args.output_dir)
    evaluation = RewardLedger.read(args.output_dir, EVAL_LEDGER_NAME)
    assert len(oracle.keys) == len(training) + len(evaluation) == 50 + first["eval_reward_evaluations"]
    assert len(oracle.keys) == len(set(oracle.keys))  # no sample paid twice, across training and evaluation
    assert first["eval_reward_evaluations"] + first["eval_known_rewards"] == first["eval_num_samples"]
    assert len(evaluation) <= 40 and first["eval_reward_evaluations_left"] == 40 - len(evaluation)
    assert second["eval_reward_evaluations"] == 0 and second["eval_num_samples"] == second["eval_known_rewards"]
    run = read_run(args.output_dir)
    assert (len(run.records), run.eval_evaluations) == (50, len(evaluation))  # the report keeps them apart


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


def _child(model, tokenizer, output_dir, settings, oracle_path, kill):
    """
    Train (or resume) and evaluate; `kill` dies at the first evaluation batch: in the reward call once it is paid
    (`"in_reward"`: its results never reach the ledger) or right after its ledger write (`"after_write"`).
    """
    write, evaluating = RewardLedger._write, []

    def hooked_write(self, lines):
        write(self, lines)
        if kill == "after_write" and lines and self.path.endswith(EVAL_LEDGER_NAME):
            _die()

    def oracle(prompts, completions, **kwargs):
        with open(oracle_path, "a") as file:
            file.write(json.dumps([sample_key(p, c) for p, c in zip(prompts, completions, strict=True)]) + "\n")
        if kill == "in_reward" and evaluating:
            _die()
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
    evaluating.append(True)
    trainer.evaluate(Dataset.from_dict({"prompt": [""] * 2}))


@pytest.mark.parametrize("kill", ["in_reward", "after_write"])
def test_a_kill_during_evaluation_loses_no_record_and_every_hit_is_in_the_hits_file_once(
    make_proposal, tokenizer, make_config, tmp_path, kill
):
    args = make_config(max_reward_evaluations=50, max_eval_reward_evaluations=100, num_generations_eval=16)
    settings = {
        key: getattr(args, key)
        for key in ("max_reward_evaluations", "samples_per_round", "max_completion_length", "num_generations",
                    "generation_batch_size", "num_train_epochs", "report_to", "use_cpu", "disable_tqdm", "seed",
                    "max_eval_reward_evaluations", "num_generations_eval")
    }  # fmt: skip
    output_dir, oracle_path = str(tmp_path / "run"), str(tmp_path / "oracle.jsonl")
    context = multiprocessing.get_context("fork")
    for run in (kill, None):
        child = context.Process(
            target=_child, args=(make_proposal(), tokenizer, output_dir, settings, oracle_path, run)
        )
        child.start()
        child.join(300)
        assert child.exitcode == (-signal.SIGKILL if run else 0)
        if run:
            killed_records = RewardLedger.read(output_dir, EVAL_LEDGER_NAME, missing_ok=True).lines
            with open(oracle_path) as file:
                in_flight = set(json.loads(file.read().split("\n")[-2])) if run == "in_reward" else set()

    evaluation = RewardLedger.read(output_dir, EVAL_LEDGER_NAME)
    assert evaluation.lines[: len(killed_records)] == killed_records  # what the killed run recorded is all there
    assert (kill == "after_write") == bool(killed_records)
    with open(oracle_path) as file:
        paid = [key for line in file for key in json.loads(line)]
    twice = {key for key in paid if paid.count(key) > 1}
    assert twice <= in_flight  # only a batch killed between its reward call and its ledger write is paid again
    assert len(set(paid)) == len(RewardLedger.read(output_dir)) + len(evaluation)  # each recorded once
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
    """
    The Hub, faked at `upload_folder`: it lists the folder's files and drops the ignored ones with `huggingface_hub`'s
    own filter (`filter_repo_objects`, as the real upload does), records what would leave, and sends nothing.
    """
    commits = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, allow_patterns=None, **kwargs):
        files = [
            os.path.relpath(os.path.join(root, name), folder_path)
            for root, _, names in os.walk(folder_path)
            for name in names
        ]
        commits.append(
            sorted(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        )
        return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
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

    def crash_in_round_2(completions, **kwargs):  # after round 1 changed round 0's region, whose save lists it
        if 1 in crashing.ledger.round_ends:
            raise KeyboardInterrupt
        return starts_with_b(completions)

    crash_in_round_2.__name__ = "starts_with_b"  # the same reward, as the run's manifest names it
    crashing = make_trainer(make_proposal, tokenizer, make_config(**settings), crash_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    assert [r.reviewed_round for r in crashing.posterior.regions] == [1]  # the case that lost round 1's metrics
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
