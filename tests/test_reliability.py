"""Crash safety, hostile reward functions, bad configuration and acceptance collapse (issue 5; docs/reliability.md)."""

import asyncio
import collections
import copy
import json
import multiprocessing
import os
import random
import signal
import time

import peft.peft_model
import pytest
import torch
import transformers
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.ledger import LEDGER_NAME, RewardLedger, sample_key
from banel_trl.posterior import PosteriorAcceptanceError
from banel_trl.regions import POSTERIOR_CONFIG_NAME
from banel_trl.rewards import RewardFunctionError
from banel_trl.testing import char_tokenizer, starts_with_b, tiny_qwen2

from .conftest import LENGTH


# ---------------------------------------------------------------------------------------------- crash and resume
#
# Each run is a forked child process (the parent has torch and the toy proposal loaded already, which keeps a run
# to about a second), SIGKILLed either by the parent after a random delay or by itself at a chosen point: inside a
# reward call, after a reward call returned but before its results were written, in the middle of a ledger write (a
# torn line), between two ledger writes, at a step of a negative fit, or in the middle of saving an adapter. Every
# kill is followed by a resume, until a run finishes; the final state must equal that of an uninterrupted run.

CRASH_SETTINGS = dict(
    max_reward_evaluations=60,
    samples_per_round=20,
    max_completion_length=LENGTH + 1,
    num_generations=8,
    generation_batch_size=8,
    num_train_epochs=2,
    per_device_train_batch_size=8,
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
    logging_steps=1000,
    seed=0,
    # Every round's region is at stake, and stays: the children are forked from a test, where the autouse fixture
    # `every_region_added_and_kept` has set RegionPolicy's constants.
    # Shallow cuts: the later rounds keep accepting ~1 in 4 proposals, so that runs do not spend their time in
    # rejection sampling.
    first_region_rejection_rate=0.5,
    target_rejection_rate=0.5,
)


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAtStep(TrainerCallback):
    def __init__(self, step):
        self.step, self.steps = step, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.steps == self.step:
            _die()


def _child(model, tokenizer, output_dir, oracle_path, kill, overrides):
    """One run (or resume) of the crash test with `overrides`, killing itself at `kill = (point, n)` when given."""
    torch.set_num_threads(1)
    point, n = kill or (None, 0)
    count = {"reward": 0, "write": 0, "save": 0, "model_save": 0}

    def oracle(prompts, completions, **kwargs):
        count["reward"] += 1
        if point == "in_reward" and count["reward"] == n:
            _die()
        rewards = starts_with_b(completions)
        with open(oracle_path, "a") as file:  # the evaluation is paid once this line is written
            file.write(json.dumps([sample_key(p, c) for p, c in zip(prompts, completions, strict=True)]) + "\n")
            file.flush()
            os.fsync(file.fileno())
        if point == "after_reward" and count["reward"] == n:
            _die()  # paid, but the result never reaches the ledger
        return rewards

    write = RewardLedger._write

    def hooked_write(self, lines):
        count["write"] += bool(lines)
        if point == "torn_write" and count["write"] == n and lines:
            data = "".join(json.dumps(line) + "\n" for line in lines).encode()
            self._file.write(data[: len(data) // 2 + 1])
            self._file.flush()
            _die()
        write(self, lines)
        if point == "after_write" and count["write"] == n and lines:
            _die()

    def torn(save, kind):
        """`save` (safetensors' `save_file`), killed half-written at its `n`-th call when `point` is `in_<kind>`."""

        def hooked_save(tensors, filename, **kwargs):
            count[kind] += 1
            if point == f"in_{kind}" and count[kind] == n:
                with open(filename, "wb") as file:
                    file.write(b"half a file")
                _die()
            save(tensors, filename, **kwargs)

        return hooked_save

    RewardLedger._write = hooked_write
    peft.peft_model.safe_save_file = torn(peft.peft_model.safe_save_file, "save")  # adapters
    transformers.modeling_utils.safe_save_file = torn(transformers.modeling_utils.safe_save_file, "model_save")
    callbacks = [_KillAtStep(n)] if point == "fit_step" else []
    args = BanelConfig(output_dir, **{**CRASH_SETTINGS, **overrides})
    trainer = BanelTrainer(
        copy.deepcopy(model),
        oracle,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": [""]}),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()


def _read_oracle(path):
    """A run's paid calls: one list of keys per completed call (a torn last line is a call that never returned)."""
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file.read().split("\n")[:-1]]


def _ledger_keys(output_dir):
    path = os.path.join(output_dir, LEDGER_NAME)
    if not os.path.exists(path):  # killed before it was created
        return []
    with open(path, "rb") as file:
        lines = file.read().split(b"\n")[:-1]  # a torn last line is not (yet) an evaluation
    return [sample_key(line["prompt"], line["completion"]) for line in map(json.loads, lines) if "index" in line]


def _final_state(output_dir):
    with open(os.path.join(output_dir, POSTERIOR_CONFIG_NAME)) as file:
        regions = json.load(file)["regions"]
    weights = {}
    for name in [r["adapter_name"] for r in regions]:
        adapter = os.path.join(output_dir, name, "adapter_model.safetensors")
        weights[name] = load_file(
            adapter if os.path.exists(adapter) else os.path.join(output_dir, name, "model.safetensors")
        )
    with open(os.path.join(output_dir, LEDGER_NAME)) as file:
        ledger = file.read()
    return regions, weights, ledger


def _run_until_done(model, tokenizer, output_dir, kills, probe_lock=False, overrides=None):
    """
    Run, kill and resume until a run finishes; check the books after each run. A run may finish before its hook
    point (how many reward calls, writes or fit steps a resumed run has left depends on the machine's floating-point
    path): the kills not reached are returned for a new episode. Returns `(kills, evaluations lost in flight, kills
    not reached)`.
    """
    context = multiprocessing.get_context("fork")
    budget = CRASH_SETTINGS["max_reward_evaluations"]
    num_kills, in_flight_losses, paid = 0, collections.Counter(), collections.Counter()
    for run, kill in enumerate([*kills, None]):
        oracle_path = f"{output_dir}.oracle{run}.jsonl"  # one per run: a torn line stays the last of its file
        process = context.Process(
            target=_child,
            args=(
                model,
                tokenizer,
                output_dir,
                oracle_path,
                None if kill is None or kill[0] == "delay" else kill,
                overrides or {},
            ),
        )
        process.start()
        if kill is not None and kill[0] == "delay":
            if probe_lock:  # while a run holds the ledger, a second run on the same output_dir is refused
                probe_lock = False
                path = os.path.join(output_dir, LEDGER_NAME)
                deadline = time.monotonic() + 60
                while not (os.path.exists(path) and os.path.getsize(path)) and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert process.is_alive()  # it has written its first evaluation: it holds the lock
                with pytest.raises(RuntimeError, match="Another BaNEL run"):
                    RewardLedger(output_dir)
            process.join(kill[1])
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        process.join(600)
        assert process.exitcode in (0, -signal.SIGKILL), f"run failed with exit code {process.exitcode} ({kill})"
        killed = process.exitcode == -signal.SIGKILL
        num_kills += killed
        unreached = [] if killed or kill is None or kill[0] == "delay" else kills[run:]
        assert not unreached or run > 0, f"a whole run never reached the kill point {kill}"

        # The books after this run: nothing paid and returned is missing from the ledger, except (after a kill)
        # the results of the last call, killed between the reward function's return and the ledger's fsync.
        new_calls = _read_oracle(oracle_path)
        paid.update(key for call in new_calls for key in call)
        keys = _ledger_keys(output_dir)
        assert len(keys) == len(set(keys)) <= budget
        recorded = set(keys)
        for i, call in enumerate(new_calls):
            missing = set(call) - recorded
            if missing:
                assert killed and i == len(new_calls) - 1, f"evaluations lost outside a kill ({kill})"
                in_flight_losses.update(missing)
        if not killed:
            break
    # A candidate is paid once, plus once more for each time its result was lost in flight; everything paid is in
    # the ledger, within the budget.
    assert all(count == 1 + in_flight_losses[key] for key, count in paid.items())
    assert set(paid) == set(_ledger_keys(output_dir)) and len(_ledger_keys(output_dir)) == budget
    return num_kills, in_flight_losses.total(), unreached


def test_sigkill_at_random_moments_and_hook_points_loses_nothing_and_pays_nothing_twice(
    _toy_proposal, tokenizer, tmp_path
):
    reference_dir = str(tmp_path / "reference")
    start = time.monotonic()
    assert _run_until_done(_toy_proposal, tokenizer, reference_dir, []) == (0, 0, [])
    run_time = time.monotonic() - start
    reference = _final_state(reference_dir)
    assert len(reference[0]) == 3

    # Deterministic hook points, counted from the start of each run: inside a reward call, after a call returned
    # (paid, not yet written), in the middle of a ledger write (a torn line), between two ledger writes, at a step
    # of a negative fit, and in the middle of writing an adapter (saving round k rewrites every region's adapter).
    hooks = [
        ("in_reward", 1),
        ("after_reward", 2),
        ("torn_write", 1),
        ("after_reward", 1),
        ("after_write", 2),
        ("fit_step", 3),
        ("in_save", 1),
        ("in_reward", 2),
        ("torn_write", 3),
        ("fit_step", 5),
        ("after_write", 4),
        ("in_save", 2),
        ("fit_step", 2),
        ("in_save", 3),
    ]
    rng = random.Random(0)
    # The hook episodes alone make 21 kills (hook points a resumed run no longer reaches go on in a new episode); a
    # random delay may outlast what is left of a resumed run, so the delay episodes add kills without being counted
    # on for the 20.
    episodes = [hooks, hooks[:7], *([("delay", rng.uniform(0.1, 0.8) * run_time) for _ in range(5)] for _ in range(2))]
    total_kills = total_losses = i = 0
    lock_probed = False
    while episodes:
        kills = episodes.pop(0)
        output_dir = str(tmp_path / f"episode{i}")
        probe_lock = kills[0][0] == "delay" and not lock_probed  # once, in the first delay episode
        lock_probed |= probe_lock
        num_kills, num_losses, unreached = _run_until_done(_toy_proposal, tokenizer, output_dir, kills, probe_lock)
        if unreached:
            episodes.insert(0, unreached)
        total_kills, total_losses = total_kills + num_kills, total_losses + num_losses
        regions, weights, ledger = _final_state(output_dir)
        # The same seed gives the same run, however often it was interrupted: same evaluations in the same order,
        # same regions (thresholds and adapter weights, bit for bit).
        assert ledger == reference[2]
        assert regions == reference[0]
        for name, tensors in weights.items():
            assert all(torch.equal(tensors[key], reference[1][name][key]) for key in tensors), name
        i += 1
    print(f"{total_kills} SIGKILLs, {total_losses} evaluations lost in flight and paid again")
    assert total_kills >= 20, total_kills
    assert total_losses >= 1  # the "after_reward" hooks: paid, killed before the write, paid once more on resume


def test_sigkill_while_saving_separate_negative_models_loses_nothing(_toy_proposal, tokenizer, tmp_path):
    # Each save rewrites every separate model (round k: 2k + 1 of them, the references included): kills in the middle
    # of writing one, and at a step of a fit, then resumes until the run ends as an uninterrupted one.
    overrides = {"negative_model": "scratch", "negative_model_config": {"num_hidden_layers": 1}}
    reference_dir = str(tmp_path / "reference")
    assert _run_until_done(_toy_proposal, tokenizer, reference_dir, [], overrides=overrides) == (0, 0, [])
    reference = _final_state(reference_dir)
    assert [region["adapter_name"] for region in reference[0]] == [f"negative_model_{k}" for k in range(3)]
    episodes, total_kills, i = (
        [[("in_model_save", 1), ("in_model_save", 3), ("fit_step", 4), ("in_model_save", 2)]],
        0,
        0,
    )
    while episodes:
        output_dir = str(tmp_path / f"episode{i}")
        num_kills, _, unreached = _run_until_done(
            _toy_proposal, tokenizer, output_dir, episodes.pop(0), overrides=overrides
        )
        episodes += [unreached] if unreached else []
        total_kills, i = total_kills + num_kills, i + 1
        regions, weights, ledger = _final_state(output_dir)
        assert (regions, ledger) == (reference[0], reference[2])
        for name, tensors in weights.items():
            assert all(torch.equal(tensors[key], reference[1][name][key]) for key in tensors), name
    assert total_kills == 4


# ---------------------------------------------------------------------------------------------- hostile rewards
#
# docs/reliability.md lists the outcome of each case.


def small_config(make_config, **overrides):
    """One round of 16 evaluations in batches of at most 8: a reward function is called at least twice."""
    settings = dict(
        max_reward_evaluations=16, samples_per_round=16, num_generations=8, generation_batch_size=8, num_train_epochs=1
    )
    return make_config(**{**settings, **overrides})


def read_ledger(output_dir):
    with open(os.path.join(output_dir, LEDGER_NAME)) as file:
        return [json.loads(line) for line in file]  # every line whole and valid JSON


class Oracle:
    """Starts with starts_with_b; from the `bad_call`-th call on, `hostile(completions)` gives the output instead."""

    __name__ = "hostile"

    def __init__(self, hostile=None, bad_call=2):
        self.hostile, self.bad_call, self.batches = hostile, bad_call, []

    @property
    def paid(self):
        return [key for batch in self.batches for key in batch]

    def __call__(self, prompts, completions, **kwargs):
        self.batches.append([sample_key(p, c) for p, c in zip(prompts, completions, strict=True)])
        if self.hostile is not None and len(self.batches) >= self.bad_call:
            return self.hostile(completions)
        return starts_with_b(completions)


def raise_error(completions):
    raise ZeroDivisionError("the simulator diverged")


@pytest.mark.parametrize(
    "hostile, message, invalid",
    [
        (
            raise_error,
            r"'hostile' raised ZeroDivisionError: the simulator diverged on a batch of \d+ samples \(first: "
            r"sample 0 \(prompt='', completion='[abcd ]+'\)\)",
            None,
        ),
        (
            lambda completions: [0.0] * (len(completions) - 1),
            r"'hostile' returned \d+ rewards for a batch of \d+",
            None,
        ),
        (lambda completions: None, r"'hostile' returned NoneType for a batch", None),
        (lambda completions: {"reward": 0.0}, r"'hostile' returned dict for a batch", None),
        (
            lambda completions: ["0.0"] + [0.0] * (len(completions) - 1),
            r"1 of \d+ samples; sample 0 \(prompt='', completion='[abcd ]+'\): reward function 'hostile' returned '0.0' "
            r"\(str\)",
            0,
        ),
        (
            lambda completions: [0.0] * (len(completions) - 1) + [float("inf")],
            r"sample \d+ \(prompt='', completion='[abcd ]+'\): reward function 'hostile' returned inf \(not finite\)",
            -1,
        ),
    ],
    ids=["raises", "wrong_length", "none", "dict", "string_value", "inf_value"],
)
def test_hostile_reward_stops_the_run_names_the_sample_and_the_run_resumes(
    make_proposal, tokenizer, unconditional_dataset, make_config, hostile, message, invalid
):
    """`invalid`: the bad batch's sample with an unusable value (the others are recorded); None: the whole batch."""
    args = small_config(make_config)
    oracle = Oracle(hostile)
    trainer = BanelTrainer(
        make_proposal(), oracle, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    with pytest.raises(RewardFunctionError, match=message):
        trainer.train()
    assert trainer.ledger.closed, "a failed run releases the ledger's lock"
    first, bad = oracle.batches
    # The ledger holds the first batch and, when only some values were unusable, the other samples of the bad one.
    recorded = [sample_key(r["prompt"], r["completion"]) for r in read_ledger(args.output_dir) if "index" in r]
    assert recorded == first + ([] if invalid is None else [key for key in bad if key != bad[invalid]])

    resumed_oracle = Oracle()
    resumed = BanelTrainer(
        make_proposal(), resumed_oracle, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    resumed.train()
    final = [sample_key(r["prompt"], r["completion"]) for r in read_ledger(args.output_dir) if "index" in r]
    assert final[: len(recorded)] == recorded
    assert len(final) == len(set(final)) == resumed.num_reward_evaluations == 16
    assert not set(resumed_oracle.paid) & set(recorded), "a recorded evaluation was paid again"


def test_a_resume_that_samples_differently_keeps_what_was_paid_and_the_budget(
    make_proposal, tokenizer, unconditional_dataset, make_config, caplog
):
    oracle = Oracle(raise_error, bad_call=2)
    args = small_config(make_config)
    with pytest.raises(RewardFunctionError):
        BanelTrainer(
            make_proposal(), oracle, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
        ).train()
    first = oracle.batches[0]
    # Another seed: the resumed round does not draw the interrupted one's candidates again (no replay).
    resumed_oracle = Oracle()
    resumed = BanelTrainer(
        make_proposal(),
        resumed_oracle,
        args=small_config(make_config, seed=1),
        train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint="force")  # another seed contradicts the run's manifest
    assert f"did not draw again the {len(first)} evaluations it had paid for" in caplog.text
    final = [sample_key(r["prompt"], r["completion"]) for r in resumed.ledger.records]
    assert final[: len(first)] == first and len(final) == len(set(final)) == 16
    assert not set(resumed_oracle.paid) & set(first)


def test_none_nan_out_of_range_and_bool_rewards_are_recorded_as_given(
    make_proposal, tokenizer, unconditional_dataset, make_config
):
    values = [None, float("nan"), -1.0, 2.5, True, False, 0.5, torch.tensor(1.0)]

    def odd_values(completions, **kwargs):
        return [values[i % len(values)] for i in range(len(completions))]

    args = small_config(make_config)
    trainer = BanelTrainer(
        make_proposal(), odd_values, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    fitted = []  # the failures the regions were fit on, and those held out to set their thresholds
    fit = trainer.region_policy.fit

    def record_fit(ledger, k, *args):
        evidence = trainer.region_policy.evidence(ledger, k)
        fitted.extend(evidence.fit + evidence.held_out)
        return fit(ledger, k, *args)

    trainer.region_policy.fit = record_fit
    trainer.train()
    records = [line for line in read_ledger(args.output_dir) if "index" in line]
    assert len(records) == 16
    expected = {None: None, -1.0: -1.0, 2.5: 2.5, True: 1.0, False: 0.0, 0.5: 0.5}
    for record in records:
        assert record["rewards"][0] in expected.values()
        assert record["success"] == (record["reward"] is not None and record["reward"] >= 1.0)
    assert sum(r["reward"] is None for r in records) >= 2  # None and NaN: no reward, a failure
    # Successes (2.5, True, the tensor 1.0) are never trained on; everything else is a negative.
    success_ids = [r["completion_ids"] for r in records if r["success"]]
    assert success_ids and len(fitted) == 16 - len(success_ids)
    assert not any(n["completion_ids"] in success_ids for n in fitted)


def test_async_rewards_run_concurrently_and_an_async_error_names_its_function(
    make_proposal, tokenizer, unconditional_dataset, make_config
):
    intervals = {"slow_assay": [], "slow_simulation": []}

    def make_async(name, fail_on_call=None):
        async def reward(completions, **kwargs):
            start = time.monotonic()
            await asyncio.sleep(0.2)
            intervals[name].append((start, time.monotonic()))
            if len(intervals[name]) == fail_on_call:
                raise TimeoutError("the assay timed out")
            return starts_with_b(completions)

        reward.__name__ = name
        return reward

    args = small_config(make_config, max_reward_evaluations=16, num_rounds=1)
    trainer = BanelTrainer(
        make_proposal(),
        [make_async("slow_assay"), make_async("slow_simulation")],
        args=args,
        train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.num_reward_evaluations == 16
    for (start_a, end_a), (start_b, end_b) in zip(intervals["slow_assay"], intervals["slow_simulation"], strict=True):
        assert start_b < end_a and start_a < end_b, "async reward functions should run concurrently"

    # An async function that raises: its error names it; the other one, already started, still ran to completion.
    intervals.update(slow_assay=[], slow_simulation=[])
    failing = BanelTrainer(
        make_proposal(),
        [make_async("slow_assay", fail_on_call=1), make_async("slow_simulation")],
        args=small_config(make_config, output_dir=args.output_dir + "-failing"),
        train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    with pytest.raises(RewardFunctionError, match="'slow_assay' raised TimeoutError: the assay timed out"):
        failing.train()
    assert len(intervals["slow_simulation"]) == 1 and failing.num_reward_evaluations == 0


def test_a_slow_reward_is_waited_for(make_proposal, tokenizer, unconditional_dataset, make_config):
    calls = []

    def slow(completions, **kwargs):
        time.sleep(0.3)  # no timeout: interrupting a paid evaluation would waste it
        calls.append(len(completions))
        return starts_with_b(completions)

    trainer = BanelTrainer(
        make_proposal(),
        slow,
        args=small_config(make_config),
        train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    assert sum(calls) == trainer.num_reward_evaluations == 16 and len(calls) >= 2


def test_a_reward_that_calls_the_model_leaves_the_run_and_its_resume_unchanged(
    make_proposal, tokenizer, unconditional_dataset, make_config, tmp_path
):
    def run(output_dir, crash_on_call=None):
        holder, calls = {}, []

        def judged_by_the_model(prompts, completions, completion_ids, **kwargs):
            calls.append(len(completions))
            if len(calls) == crash_on_call:
                raise ConnectionError("lost the judge")
            trainer = holder["trainer"]
            # The reward samples from the posterior and scores with the model itself: neither costs an evaluation.
            sampled = trainer.posterior.generate(torch.full((4, 1), tokenizer.bos_token_id), max_new_tokens=3)
            with torch.no_grad():
                trainer.model(input_ids=sampled)
            return starts_with_b(completions)

        args = make_config(
            output_dir=output_dir,
            max_reward_evaluations=40,
            samples_per_round=20,
            generation_batch_size=8,
            num_generations=8,
            num_train_epochs=1,
        )
        trainer = holder["trainer"] = BanelTrainer(
            make_proposal(),
            judged_by_the_model,
            args=args,
            train_dataset=unconditional_dataset,
            processing_class=tokenizer,
        )
        trainer.train()
        return trainer

    reference = run(str(tmp_path / "reference"))
    assert reference.num_reward_evaluations == 40
    with pytest.raises(RewardFunctionError, match="lost the judge"):
        run(str(tmp_path / "crashed"), crash_on_call=3)  # mid-round: 2 batches recorded
    resumed = run(str(tmp_path / "crashed"))
    # The reward's own draws do not shift the run's: the resumed run pays for exactly what the reference paid for.
    assert resumed.ledger.lines == reference.ledger.lines
    assert [r.threshold for r in resumed.posterior.regions] == [r.threshold for r in reference.posterior.regions]


# ---------------------------------------------------------------------------------------------- acceptance collapse


def test_acceptance_collapse_ends_the_run_with_the_acceptance_figures(
    make_proposal, tokenizer, unconditional_dataset, make_config, caplog
):
    # Region 0 rejects every candidate: round 1 accepts nothing, pays nothing and has no failure to fit a region on.
    args = make_config(max_reward_evaluations=60, samples_per_round=20, max_sampling_attempts=3, num_train_epochs=1)
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    fit = trainer.region_policy.fit

    def fit_rejecting_everything(ledger, k, *args):
        region, loss = fit(ledger, k, *args)
        region.threshold = -1e9
        return region, loss

    trainer.region_policy.fit = fit_rejecting_everything
    with caplog.at_level("WARNING", logger="banel_trl"):
        trainer.train()
    assert "Round 1: the posterior accepted 0 of 32 candidates (acceptance rate 0.00e+00)" in caplog.text
    assert "Round 1: 0 failures to learn from; ending the run" in caplog.text
    # The time is bounded: the first batch proposes one candidate per evaluation wanted (20, in one prompt of 32
    # generations); accepting none of them puts the acceptance below 1 in `max_sampling_attempts`, and no round follows.
    assert trainer.ledger.round_ends[1] == {"budget": 20, "proposed": 32, "accepted": 0, "repeats": 0, "evaluated": 0}
    assert trainer.num_reward_evaluations == 20 and len(trainer.posterior.regions) == 1


def test_a_region_whose_reference_samples_are_all_rejected_is_compared_with_p_theta(
    make_proposal, tokenizer, unconditional_dataset, make_config, caplog
):
    # While round 1 draws its reference samples, region 0 rejects every candidate: none is accepted, so region 1 is
    # compared with the proposal that drew its failures, and the draw gives up after one batch.
    args = make_config(
        max_reward_evaluations=100,
        samples_per_round=50,
        num_train_epochs=1,
        max_sampling_attempts=5,
        first_region_rejection_rate=0.5,
    )
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    fit, proposed = trainer.region_policy.fit, []
    propose = trainer.posterior.propose
    trainer.posterior.propose = lambda *a, **kw: proposed.append(len(a[0])) or propose(*a, **kw)

    def fit_while_region_0_rejects_everything(ledger, k, *args):
        first = trainer.posterior.regions[0] if k == 1 else None
        threshold = first.threshold if first else None
        if first:
            first.threshold, proposed[:] = -1e9, []
        try:
            return fit(ledger, k, *args)
        finally:
            if first:
                first.threshold = threshold

    trainer.region_policy.fit = fit_while_region_0_rejects_everything
    with caplog.at_level("WARNING", logger="banel_trl"):
        trainer.train()
    num_fit = len(trainer.region_policy.evidence(trainer.ledger, 1).fit)
    assert f"Round 1: 0 of {num_fit} reference samples were accepted; region 1 is compared with p_theta" in caplog.text
    assert [region.reference_adapter for region in trainer.posterior.regions] == ["__base__", "__base__"]
    assert proposed == [args.generation_batch_size]  # 5 attempts per sample at zero acceptance: given up at once
    assert trainer.num_reward_evaluations == 100


def test_a_posterior_that_accepts_nothing_is_given_up_on_well_before_its_allowance(
    make_proposal, tokenizer, unconditional_dataset, make_config, caplog, tmp_path
):
    # A run folder whose threshold was edited to -1e9: its region rejects every candidate. With 50 evaluations to
    # collect and max_sampling_attempts=100, the allowance is 5,000 proposals; at zero acceptance the loops give up
    # once the rate is below 1 in 100 with 95% confidence (~300 proposals), with the acceptance figures.
    args = make_config(max_reward_evaluations=50, samples_per_round=50, num_train_epochs=1, max_sampling_attempts=100)
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    path = os.path.join(args.output_dir, POSTERIOR_CONFIG_NAME)
    with open(path) as file:
        config = json.load(file)
    config["regions"][0]["threshold"] = -1e9
    with open(path, "w") as file:
        json.dump(config, file)

    args = make_config(max_reward_evaluations=100, samples_per_round=50, num_train_epochs=1, max_sampling_attempts=100)
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    with caplog.at_level("WARNING"):
        trainer.train()
    end = trainer.ledger.round_ends[1]
    assert end["accepted"] == end["evaluated"] == 0 and 300 <= end["proposed"] <= 400, end
    assert "Round 1: the posterior accepted 0 of" in caplog.text and trainer.num_reward_evaluations == 50

    proposed = []
    propose = trainer.posterior.propose
    trainer.posterior.propose = lambda *a, **kw: proposed.append(len(a[0])) or propose(*a, **kw)
    with pytest.raises(PosteriorAcceptanceError, match="accepted 0 of .* below 1 in `max_sampling_attempts`=100"):
        trainer.posterior.generate(torch.full((50, 1), tokenizer.bos_token_id), max_sampling_attempts=100)
    assert 300 <= sum(proposed) <= 400, sum(proposed)
    trainer.sampler.restart(unconditional_dataset, seed=0)
    before = sum(proposed)
    assert trainer.sampler.sample_accepted(50, max_sampling_attempts=100) == []
    assert 300 <= sum(proposed) - before <= 400, sum(proposed) - before


# ---------------------------------------------------------------------------------------------- bad configuration


def test_bad_data_and_tokenizers_are_refused_at_construction(make_proposal, tokenizer, make_config):
    args = make_config()
    long_prompt = Dataset.from_dict({"prompt": ["ab" * 61]})  # 122 tokens + 7 > the tiny model's 128 positions
    with pytest.raises(ValueError, match="longest prompt of `train_dataset` has 122 tokens.*context of 128 tokens"):
        BanelTrainer(make_proposal(), starts_with_b, args=args, train_dataset=long_prompt, processing_class=tokenizer)
    with pytest.raises(ValueError, match="`eval_dataset` must have a 'prompt' column"):
        BanelTrainer(
            make_proposal(),
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["a"]}),
            eval_dataset=Dataset.from_dict({"question": ["a"]}),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="`train_dataset` must have a 'prompt' column"):  # streaming: read, checked
        BanelTrainer(
            make_proposal(),
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"question": ["a"]}).to_iterable_dataset(),
            processing_class=tokenizer,
        )

    no_pad = char_tokenizer("abcd")
    no_pad.pad_token = None
    trainer = BanelTrainer(
        tiny_qwen2(tokenizer),
        starts_with_b,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a"]}),
        processing_class=no_pad,
    )
    assert trainer.processing_class.pad_token == no_pad.eos_token  # as TRL: the EOS token pads
    no_pad.eos_token = None
    no_pad.pad_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS token"):
        BanelTrainer(
            tiny_qwen2(tokenizer),
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["a"]}),
            processing_class=no_pad,
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(samples_per_round=0), "samples_per_round"),
        (dict(target_rejection_rate=0.0), "target_rejection_rate"),
        (dict(success_threshold=float("nan")), "success_threshold"),
        (dict(max_sampling_attempts=0), "max_sampling_attempts"),
        (dict(top_p=0.0), "top_p"),
    ],
)
def test_out_of_range_settings_raise_at_construction(make_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)
