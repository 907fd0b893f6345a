"""A run's folder and its resume (docs/reliability.md): the ledger, the manifest, the saved regions, retries."""

import json
import os
import re
import shutil

import pytest
import torch
from transformers import TrainerCallback

from banel_trl import BanelPosterior, BanelTrainer
from banel_trl.ledger import LEDGER_NAME, RewardLedger, sample_key
from banel_trl.manifest import RunFolderError
from banel_trl.regions import POSTERIOR_CONFIG_NAME, read_regions
from banel_trl.report import read_run
from banel_trl.testing import CHAT_TEMPLATE, SPECIAL_TOKENS, character_tokenizer, starts_with_b


# Literal names, so that the tests run (and fail) on code without the manifest too.
MANIFEST = "banel_run.json"


class PaidReward:
    """starts_with_b, recording every sample it is paid for."""

    __name__ = "paid_reward"

    def __init__(self):
        self.paid = []

    def __call__(self, prompts, completions, **kwargs):
        self.paid.extend(sample_key(p, c) for p, c in zip(prompts, completions, strict=True))
        return starts_with_b(completions)


class FitCrash(RuntimeError):
    pass


def crash_fit_of_round(trainer, crash_round):
    """Make `trainer` raise when it starts fitting round `crash_round` (its evaluations are paid by then)."""
    fit = trainer.region_policy.fit

    def fit_or_crash(ledger, k, *args):
        if k == crash_round:
            raise FitCrash(f"killed before the fit of round {k}")
        return fit(ledger, k, *args)

    trainer.region_policy.fit = fit_or_crash


def ledger_keys(output_dir):
    path = os.path.join(output_dir, LEDGER_NAME)
    if not os.path.exists(path):
        return []
    with open(path) as file:
        lines = [json.loads(line) for line in file]
    return [sample_key(line["prompt"], line["completion"]) for line in lines if "index" in line]


def folder_bytes(output_dir):
    return {
        os.path.relpath(os.path.join(folder, name), output_dir): open(os.path.join(folder, name), "rb").read()
        for folder, _, names in os.walk(output_dir)
        for name in names
    }


@pytest.fixture
def new_trainer(make_proposal, tokenizer, unconditional_dataset):
    def make(args, reward=None, **kwargs):
        kwargs = {"processing_class": tokenizer, **kwargs}
        model = kwargs.pop("model", None) or make_proposal()
        return BanelTrainer(model, reward or PaidReward(), args=args, train_dataset=unconditional_dataset, **kwargs)

    return make


# ---------------------------------------------------------------------------------------------- 1. ledger vs regions


def test_a_cut_back_or_deleted_ledger_with_saved_regions_is_refused_and_nothing_is_paid_again(
    new_trainer, make_config, tmp_path
):
    # Cuts shallow enough that every round's posterior still draws failures to fit a region on (at the default cuts,
    # round 2 of the toy task pays for successes only, and the run ends there).
    args = make_config(
        max_reward_evaluations=200,
        samples_per_round=50,
        num_train_epochs=1,
        first_region_rejection_rate=0.9,
        target_rejection_rate=0.5,
    )
    first = new_trainer(args)
    crash_fit_of_round(first, 2)  # regions 0 and 1 saved; round 2 paid, then the process died
    with pytest.raises(FitCrash):
        first.train()
    paid = first.reward_funcs[0].paid
    assert len(paid) == len(ledger_keys(args.output_dir)) == 150

    with open(os.path.join(args.output_dir, LEDGER_NAME)) as file:
        lines = file.readlines()

    def damage(name, new_lines):
        """A copy of the run folder whose ledger holds `new_lines` (None: no ledger)."""
        output_dir = str(tmp_path / name)
        shutil.copytree(args.output_dir, output_dir)
        path = os.path.join(output_dir, LEDGER_NAME)
        os.remove(path)
        if new_lines is not None:
            with open(path, "w") as file:
                file.writelines(new_lines)
        return output_dir

    edited = json.loads(lines[2])
    edited.update(reward=1.0, success=True)
    damaged = {
        "deleted": damage("deleted", None),
        "emptied": damage("emptied", []),
        "cut back to round 0": damage("cut", [line for line in lines if json.loads(line)["round"] == 0]),
        "edited": damage("edited", [*lines[:2], json.dumps(edited) + "\n", *lines[3:]]),
    }
    for case, output_dir in damaged.items():
        reward = PaidReward()
        resumed = new_trainer(make_config(output_dir=output_dir, **_settings(args)), reward)
        try:
            resumed.train()
            error = None
        except ValueError as raised:
            error = raised
        # Nothing was paid again: what the run paid in all is still what its first process paid, within the budget.
        assert reward.paid == [], f"{case}: paid {len(reward.paid)} more, {len(paid) + len(reward.paid)} in all"
        assert error is not None and re.search(f"{LEDGER_NAME}.*another output_dir", str(error), re.DOTALL), case

    # A ledger longer than the one the regions were fit on (round 2 paid, then crashed) is the same run: it resumes.
    reward = PaidReward()
    resumed = new_trainer(args, reward)
    resumed.train()
    assert not set(reward.paid) & set(paid)
    assert len(paid) + len(reward.paid) == len(ledger_keys(args.output_dir)) == resumed.num_reward_evaluations == 200
    assert len(resumed.posterior.regions) == 4


def _settings(args, **overrides):
    """The settings of `args` that tests vary, with `overrides`."""
    names = (
        "max_reward_evaluations",
        "samples_per_round",
        "num_train_epochs",
        "first_region_rejection_rate",
        "target_rejection_rate",
    )
    return {**{name: getattr(args, name) for name in names}, **overrides}


# ---------------------------------------------------------------------------------------------- 2. the manifest


def swapped_tokenizer():
    """The toy tokenizer with the ids of "a" and "b" swapped: same size, another vocabulary."""
    tokenizer = character_tokenizer(["=", "b", "a", "c", "d", "|"], SPECIAL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_a_resume_that_contradicts_the_manifest_is_refused_naming_every_difference(
    new_trainer, make_config, make_proposal, caplog
):
    small = dict(max_reward_evaluations=32, samples_per_round=16, num_rounds=1, num_train_epochs=1)
    small.update(num_generations=8, generation_batch_size=16)
    args = make_config(**small)
    first = new_trainer(args)
    first.train()
    with open(os.path.join(args.output_dir, MANIFEST)) as file:
        manifest = json.load(file)
    for field in ("model", "model_weights_sha256", "tokenizer_vocab_sha256", "reward_funcs", "max_reward_evaluations"):
        assert field in manifest, field
    assert manifest["reward_funcs"] == ["paid_reward"] and manifest["seed"] == 0
    assert manifest["samples_per_round"] == 16 and manifest["temperature"] == 1.0 and manifest["num_generations"] == 8

    # Another seed, temperature, number of generations, reward function, tokenizer and proposal weights: each named.
    def other_reward(completions, **kwargs):
        return starts_with_b(completions)

    other_model = make_proposal()
    with torch.no_grad():
        next(other_model.parameters())[0, 0] += 1e-3
    before = folder_bytes(args.output_dir)
    changed = make_config(**{**small, "seed": 1, "temperature": 0.9, "num_generations": 4})
    trainer = new_trainer(changed, other_reward, processing_class=swapped_tokenizer(), model=other_model)
    with pytest.raises(ValueError) as error:
        trainer.train()
    message = str(error.value)
    for field in (
        "seed: 0 in the run, 1 now",
        "temperature: 1.0 in the run, 0.9 now",
        "num_generations: 8 in the run, 4 now",
        "reward_funcs: ['paid_reward'] in the run, ['other_reward'] now",
        "tokenizer_vocab_sha256",
        "model_weights_sha256",
        'resume_from_checkpoint="force"',
    ):
        assert field.replace('"', "'") in message, (field, message)
    assert "max_sampling_attempts" not in message
    assert folder_bytes(args.output_dir) == before, "the refused resume changed the folder"
    RewardLedger(args.output_dir).close()  # the lock was released

    # The budget may go up; max_sampling_attempts, num_rounds and logging may change. The log says it resumes.
    raised = make_config(**{**small, "max_reward_evaluations": 48, "num_rounds": 2, "max_sampling_attempts": 50})
    reward = PaidReward()
    resumed = new_trainer(raised, reward)
    caplog.clear()
    with caplog.at_level("INFO", logger="banel_trl"):
        resumed.train()
    assert caplog.records[0].getMessage() == f"Resuming run in {args.output_dir}: 16 paid evaluations, 1 regions."
    assert len(reward.paid) == 16 and resumed.num_reward_evaluations == 32


def test_a_budget_below_the_ledger_and_a_new_round_size_are_refused_even_when_forced(new_trainer, make_config):
    small = dict(max_reward_evaluations=32, samples_per_round=16, num_rounds=1, num_train_epochs=1)
    small.update(num_generations=8, generation_batch_size=16)
    args = make_config(**small)
    new_trainer(args).train()
    for overrides, expected in [
        (dict(max_reward_evaluations=8, samples_per_round=8), "below the 16 evaluations the ledger already holds"),
        (dict(samples_per_round=8, num_rounds=None), "samples_per_round: 16 in the run, 8 now"),
    ]:
        reward = PaidReward()
        trainer = new_trainer(make_config(**{**small, **overrides}), reward)
        with pytest.raises(ValueError, match=expected):
            trainer.train(resume_from_checkpoint="force")
        assert reward.paid == []
        RewardLedger(args.output_dir).close()  # the lock was released

    # Forced, a changed seed resumes, and the manifest records it.
    reward = PaidReward()
    forced = new_trainer(make_config(**{**small, "seed": 5, "max_reward_evaluations": 32, "num_rounds": 2}), reward)
    with pytest.raises(ValueError, match="seed: 0 in the run, 5 now"):
        forced.train()
    forced.train(resume_from_checkpoint="force")
    assert len(reward.paid) == 16 and forced.num_reward_evaluations == 32
    with open(os.path.join(args.output_dir, MANIFEST)) as file:
        assert json.load(file)["seed"] == 5


# ---------------------------------------------------------------------------------------------- 3. retries in-process


class RaiseAtStep(TrainerCallback):
    """Raises once, at the `step`-th optimisation step counted over the whole run."""

    def __init__(self, step):
        self.step, self.steps = step, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.steps == self.step:
            raise KeyboardInterrupt("interrupted mid-fit")


def test_retrying_train_after_a_failed_fit_gives_the_uninterrupted_run(new_trainer, make_config, tmp_path):
    settings = dict(max_reward_evaluations=100, samples_per_round=50, num_train_epochs=3)
    settings.update(per_device_train_batch_size=8)
    reference = new_trainer(make_config(output_dir=str(tmp_path / "reference"), **settings))
    reference.train()
    steps_per_fit = next(entry["step"] for entry in reference.state.log_history if "train_loss" in entry)  # round 0's
    retried = new_trainer(make_config(**settings), callbacks=[RaiseAtStep(steps_per_fit + steps_per_fit // 2)])
    with pytest.raises(KeyboardInterrupt):
        retried.train()  # in the middle of round 1's fit
    retried.train()
    assert retried.ledger.lines == reference.ledger.lines
    assert [r.threshold for r in retried.posterior.regions] == [r.threshold for r in reference.posterior.regions]
    for name in ("region_0", "region_1"):
        ours, theirs = retried.model.state_dict(), reference.model.state_dict()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours if f".{name}." in key), name


def test_retrying_train_after_a_failed_save_saves_every_region(new_trainer, make_config, monkeypatch):
    args = make_config(max_reward_evaluations=100, samples_per_round=50, num_train_epochs=1)
    trainer = new_trainer(args)
    replace, failures = os.replace, []

    def full_disk(source, target, *rest, **kwargs):
        if ".banel_saving" in str(source) and "region_1" in str(source) and not failures:
            failures.append(source)
            raise OSError(28, "No space left on device")
        return replace(source, target, *rest, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        trainer.train()  # round 1's region is fit; its save failed
    paid = list(trainer.reward_funcs[0].paid)
    trainer.train()
    assert [region.adapter_name for region in read_regions(args.output_dir)] == ["region_0", "region_1"]
    assert not os.path.exists(os.path.join(args.output_dir, ".banel_saving"))
    loaded = BanelPosterior.from_pretrained(args.output_dir, model=new_trainer(args).model.get_base_model())
    assert loaded.thresholds.tolist() == trainer.posterior.thresholds.tolist()
    assert trainer.reward_funcs[0].paid == paid == ledger_keys(args.output_dir)


# ---------------------------------------------------------------------------------------------- 4. clear errors


@pytest.mark.parametrize("line", ["{}", "[1, 2]", "42", '{"round": 0, "repeat_of": 3}'])
def test_a_valid_json_line_that_is_no_ledger_line_is_named(new_trainer, make_config, line):
    args = make_config()
    os.makedirs(args.output_dir)
    path = os.path.join(args.output_dir, LEDGER_NAME)
    with open(path, "w") as file:
        file.write(line + "\n")
    expected = f"{path}, line 1, is not a ledger line.*backup"
    with pytest.raises(ValueError, match=expected):
        new_trainer(args).train()
    with pytest.raises(ValueError, match=expected):
        RewardLedger.read(args.output_dir)  # `banel-trl report` too


def _two_region_run(new_trainer, make_config):
    args = make_config(
        max_reward_evaluations=32,
        samples_per_round=16,
        num_generations=8,
        generation_batch_size=16,
        num_train_epochs=1,
    )
    new_trainer(args).train()
    return args


@pytest.mark.parametrize(
    "damage", ["deleted region folder", "truncated adapter", "garbage json", "json without regions"]
)
def test_a_damaged_saved_posterior_is_named_with_what_to_do(new_trainer, make_config, make_proposal, damage):
    args = _two_region_run(new_trainer, make_config)
    folder = os.path.join(args.output_dir, "region_1")
    config = os.path.join(args.output_dir, POSTERIOR_CONFIG_NAME)
    if damage == "deleted region folder":
        shutil.rmtree(folder)
        named = folder
    elif damage == "truncated adapter":
        named = os.path.join(folder, "adapter_model.safetensors")
        with open(named, "r+b") as file:
            file.truncate(100)
        named = folder
    else:
        with open(config, "w") as file:
            file.write("{'regions': [" if damage == "garbage json" else "[]")
        named = config
    reward = PaidReward()
    with pytest.raises(ValueError, match=f"{named}.*backup") as error:
        new_trainer(args, reward).train()
    assert "start a new run in another output_dir" in str(error.value) and reward.paid == []
    with pytest.raises(ValueError, match=f"{named}.*backup"):
        BanelPosterior.from_pretrained(args.output_dir, model=make_proposal())

    # What the error advises: without banel_posterior.json, the regions are fit again from the ledger, nothing paid.
    os.remove(config)
    resumed = new_trainer(args, reward)
    resumed.train()
    assert reward.paid == [] and len(resumed.posterior.regions) == 2


# ---------------------------------------------------------------------------------------------- 5. the lock


def test_a_refused_resume_releases_the_lock_while_its_exception_is_kept(new_trainer, make_config):
    args = make_config(max_reward_evaluations=32, samples_per_round=16, num_train_epochs=1, num_rounds=1)
    new_trainer(args).train()
    ledger_path = os.path.join(args.output_dir, LEDGER_NAME)
    config_path = os.path.join(args.output_dir, POSTERIOR_CONFIG_NAME)
    with open(ledger_path) as file:
        ledger = file.read()
    with open(config_path) as file:
        config = file.read()
    kept = []  # as a notebook keeps `sys.last_value`, with its traceback and frames
    for path, damaged, restored in [
        (ledger_path, ledger + "not a line\n", ledger),
        (config_path, "{", config),
    ]:
        with open(path, "w") as file:
            file.write(damaged)
        trainer = new_trainer(args)
        with pytest.raises(ValueError) as error:
            trainer.train()
        kept.append((trainer, error.value, error.value.__traceback__))
        with open(path, "w") as file:
            file.write(restored)
    refused = new_trainer(make_config(**_settings(args), seed=3, num_rounds=1))
    with pytest.raises(ValueError, match="seed: 0 in the run, 3 now") as error:
        refused.train()
    kept.append((refused, error.value, error.value.__traceback__))
    # The causes fixed, the run resumes, although every refused trainer and its exception are still alive.
    resumed = new_trainer(make_config(**_settings(args), num_rounds=2))
    resumed.train()
    assert resumed.num_reward_evaluations == 32 and len(kept) == 3


# ---------------------------------------------------------------------------------------------- 6. metrics


def test_the_report_keeps_the_rounds_of_an_interrupted_process(new_trainer, make_config):
    args = make_config(max_reward_evaluations=100, samples_per_round=50, num_train_epochs=1)
    first = new_trainer(args)
    crash_fit_of_round(first, 1)
    with pytest.raises(FitCrash):
        first.train()
    new_trainer(args).train()
    rounds = read_run(args.output_dir).rounds
    assert [r.round for r in rounds] == [0, 1]
    for r in rounds:
        assert r.negative_loss is not None and r.threshold is not None, r
    with open(os.path.join(args.output_dir, "trainer_state.json")) as file:
        logged = [e["round"] for e in json.load(file)["log_history"] if "acceptance_rate" in e]
    assert logged == [0, 1]


def test_a_resume_with_another_number_of_processes_is_refused_naming_it(new_trainer, make_config, monkeypatch):
    # Each process samples its own stream: with another number of processes a round would draw other candidates.
    args = make_config(max_reward_evaluations=100, samples_per_round=50, num_train_epochs=1, num_rounds=1)
    new_trainer(args).train()
    monkeypatch.setattr(type(args), "world_size", property(lambda self: 2))
    with pytest.raises(RunFolderError, match="world_size: 1 in the run, 2 now"):
        new_trainer(args).train()
