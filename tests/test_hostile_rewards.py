"""
Reward functions that edit their inputs or return numpy, huge or odd values (docs/reliability.md): what was paid is
what the ledger records, once, or the run stops with a `RewardFunctionError` naming the function and the sample.
"""

import copy
import json
import os
import re
import tempfile

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.ledger import LEDGER_NAME, sample_key
from banel_trl.rewards import RewardFunctionError, weighted_reward

from .conftest import LENGTH


def small_config(make_config, **overrides):
    """One round of 16 evaluations in batches of at most 8: a reward function is called at least twice."""
    settings = dict(
        max_reward_evaluations=16, samples_per_round=16, num_generations=8, generation_batch_size=8, num_train_epochs=1
    )
    return make_config(**{**settings, **overrides})


def read_records(output_dir):
    with open(os.path.join(output_dir, LEDGER_NAME)) as file:
        return [line for line in map(json.loads, file) if "index" in line]


def text_of(completion):
    """A completion's text: standard (a string) or conversational (a list holding an assistant message)."""
    return completion if isinstance(completion, str) else completion[0]["content"]


class Paying:
    """
    A reward function that notes what it is paid for when it is called (the samples as they are then: prompt,
    completion text, completion ids, the dataset columns), then answers with starts_with_b before its `bad_call`-th
    call, and with `hostile(prompts=..., completions=..., completion_ids=..., **columns)` from it on.
    """

    def __init__(self, hostile=None, bad_call=1, name="hostile"):
        self.hostile, self.bad_call, self.__name__, self.batches = hostile, bad_call, name, []

    def __call__(
        self, prompts, completions, completion_ids, trainer_state=None, log_extra=None, log_metric=None, **columns
    ):
        batch = [
            dict(prompt=copy.deepcopy(p), completion=text_of(c), completion_ids=list(ids))
            for p, c, ids in zip(prompts, completions, completion_ids, strict=True)
        ]
        for i, sample in enumerate(batch):
            sample.update({key: copy.deepcopy(values[i]) for key, values in columns.items()})
        self.batches.append(batch)
        if self.hostile is not None and len(self.batches) >= self.bad_call:
            return self.hostile(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        return [float(text_of(c).startswith("b")) for c in completions]

    def keys(self, batches=None):
        return [
            sample_key(s["prompt"], s["completion"]) for b in (self.batches if batches is None else batches) for s in b
        ]


def as_paid(record):
    return dict(prompt=record["prompt"], completion=record["completion"], completion_ids=record["completion_ids"])


def assert_records_were_paid(records, batches, tokenizer):
    """Every record is a sample as paid for (prompt, text and ids), decodes to its text, and is recorded once."""
    paid = [{key: s[key] for key in ("prompt", "completion", "completion_ids")} for b in batches for s in b]
    for record in records:
        assert as_paid(record) in paid, f"{as_paid(record)} was never paid for"
        assert tokenizer.decode(record["completion_ids"], skip_special_tokens=True) == record["completion"]
    keys = [sample_key(r["prompt"], r["completion"]) for r in records]
    assert len(keys) == len(set(keys))


def crash_then_resume(make_proposal, tokenizer, dataset, args, reward, message, funcs=None):
    """Run until the reward stops the run with `message`, then resume with a well-behaved reward; returns both."""
    with pytest.raises(RewardFunctionError, match=message):
        BanelTrainer(
            make_proposal(), funcs or reward, args=args, train_dataset=dataset, processing_class=tokenizer
        ).train()
    recorded = read_records(args.output_dir)
    names = [f.__name__ for f in funcs] if isinstance(funcs, list) else [reward.__name__]
    funcs = [Paying(name=name) for name in names]  # the same names: the run folder records them
    resumed = funcs[0]
    trainer = BanelTrainer(make_proposal(), funcs, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    final = read_records(args.output_dir)
    assert final[: len(recorded)] == recorded and len(final) == trainer.num_reward_evaluations == 16
    assert not set(resumed.keys()) & {sample_key(r["prompt"], r["completion"]) for r in recorded}, "paid twice"
    assert_records_were_paid(final, reward.batches + resumed.batches, tokenizer)
    return recorded, resumed


def raise_error(**inputs):
    raise ConnectionError("the lab is closed")


# ---------------------------------------------------------------------------------------------- inputs edited in place


@pytest.mark.parametrize("edit", ["insert", "clear"])
def test_a_reward_that_edits_completion_ids_in_place_leaves_the_ledger_as_paid(
    make_proposal, tokenizer, unconditional_dataset, make_config, edit
):
    token = tokenizer.convert_tokens_to_ids("b")

    def edits_then_fails(completion_ids, **inputs):
        for ids in completion_ids:
            ids.insert(0, token) if edit == "insert" else ids.clear()
        if len(reward.batches) == 2:
            raise ConnectionError("the lab is closed")
        return [0.0] * len(completion_ids)

    reward = Paying(edits_then_fails)
    recorded, _ = crash_then_resume(
        make_proposal, tokenizer, unconditional_dataset, small_config(make_config), reward, "the lab is closed"
    )
    assert [as_paid(r) for r in recorded] == [{k: s[k] for k in as_paid(s)} for s in reward.batches[0]]


def test_conversational_prompts_completions_and_columns_extended_in_place_are_recorded_and_paid_once(
    make_proposal, tokenizer, make_config
):
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": "ab"}], [{"role": "user", "content": "cd"}]], "tags": [["x"], ["y"]]}
    )

    def extends(prompts, completions, completion_ids, tags, **kwargs):
        for prompt, completion, tag in zip(prompts, completions, tags, strict=True):
            prompt.append({"role": "assistant", "content": completion[0]["content"]})
            completion[0]["content"] = "b" + completion[0]["content"]
            tag.append("seen")
        if len(extending.batches) == 2:
            raise ConnectionError("the lab is closed")
        return [0.0] * len(completions)

    extending, observing = Paying(extends, name="extends"), Paying(name="observes")
    args = small_config(make_config, generation_batch_size=16)
    recorded, _ = crash_then_resume(
        make_proposal, tokenizer, dataset, args, extending, "the lab is closed", funcs=[extending, observing]
    )
    # The second function saw the batch as the first one was handed it, not as the first one left it.
    assert observing.batches == extending.batches[:1]
    assert [as_paid(r) for r in recorded] == [{k: s[k] for k in as_paid(s)} for s in extending.batches[0]]
    assert all(r["prompt"] in dataset["prompt"] for r in recorded)


# ---------------------------------------------------------------------------------------------- numpy and huge values


@pytest.mark.parametrize(
    "make",
    [
        lambda flags: [np.bool_(f) for f in flags],
        lambda flags: np.array(flags),
        lambda flags: [np.array(float(f)) for f in flags],
        lambda flags: np.array([[float(f)] for f in flags]),
    ],
    ids=["np_bool_scalars", "np_bool_array", "np_0d_arrays", "np_column"],
)
def test_numpy_booleans_and_arrays_are_rewards(make_proposal, tokenizer, unconditional_dataset, make_config, make):
    reward = Paying(lambda completions, **inputs: make([c.startswith("b") for c in completions]))
    args = small_config(make_config)
    trainer = BanelTrainer(
        make_proposal(), reward, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    records = read_records(args.output_dir)
    assert [sample_key(r["prompt"], r["completion"]) for r in records] == reward.keys()
    assert len(records) == 16
    assert all(r["rewards"] == [float(r["completion"].startswith("b"))] for r in records)


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_reward_too_large_for_a_float_is_unusable_for_its_sample_only(
    make_proposal, tokenizer, unconditional_dataset, make_config, is_async
):
    reward = Paying(lambda completions, **inputs: [10**400] + [0.0] * (len(completions) - 1), bad_call=2)

    async def hostile(**inputs):
        return reward(**inputs)

    message = (
        r"Unusable rewards for 1 of \d+ samples; sample 0 \(prompt='', completion='[abcd ]+'\): reward function "
        r"'hostile' returned 10+\.\.\.0+ \(int\), which overflows a float"
    )
    args = small_config(make_config)
    recorded, _ = crash_then_resume(
        make_proposal, tokenizer, unconditional_dataset, args, reward, message, funcs=hostile if is_async else None
    )
    first, bad = reward.keys(reward.batches[:1]), reward.keys(reward.batches[1:])
    assert [sample_key(r["prompt"], r["completion"]) for r in recorded] == first + bad[1:]


# ---------------------------------------------------------------------------------------------- prompts.pop()


def test_a_reward_that_pops_its_prompts_is_judged_on_the_real_batch(
    make_proposal, tokenizer, unconditional_dataset, make_config
):
    def pops(prompts, completions, **inputs):
        prompts.pop()
        return [float(c.startswith("b")) for c in completions]

    reward = Paying(pops)
    args = small_config(make_config)
    trainer = BanelTrainer(
        make_proposal(), reward, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    records = read_records(args.output_dir)
    assert [sample_key(r["prompt"], r["completion"]) for r in records] == reward.keys() and len(records) == 16


@pytest.mark.parametrize("answer", ["one_per_prompt_left", "a_string_for_the_last"])
def test_the_error_of_a_reward_that_pops_its_prompts_names_the_real_batch(
    make_proposal, tokenizer, unconditional_dataset, make_config, answer
):
    def pops(prompts, completions, **inputs):
        prompts.pop()
        if answer == "one_per_prompt_left":
            return [0.0] * len(prompts)
        return [0.0] * (len(completions) - 1) + ["lost"]

    reward = Paying(pops, bad_call=2)
    args = small_config(make_config)
    with pytest.raises(RewardFunctionError) as raised:
        BanelTrainer(
            make_proposal(), reward, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
        ).train()
    bad = reward.batches[1]
    if answer == "one_per_prompt_left":
        expected = f"'hostile' returned {len(bad) - 1} rewards for a batch of {len(bad)} samples"
    else:
        last = f"sample {len(bad) - 1} (prompt='', completion={bad[-1]['completion']!r})"
        expected = f"Unusable rewards for 1 of {len(bad)} samples; {last}: reward function 'hostile' returned 'lost'"
    assert expected in str(raised.value)
    recorded = [sample_key(r["prompt"], r["completion"]) for r in read_records(args.output_dir)]
    first, bad_keys = reward.keys(reward.batches[:1]), reward.keys(reward.batches[1:])
    assert recorded == first + ([] if answer == "one_per_prompt_left" else bad_keys[:-1])


# ---------------------------------------------------------------------------------------------- property


def _value(kind, x):
    """`x` as a value of `kind` (numpy, torch, a string...), or `x` itself where `kind` cannot hold it."""
    makers = {
        "python": lambda: x,
        "np.float64": lambda: np.float64(x),
        "np.float32": lambda: np.float32(x),
        "np.int64": lambda: np.int64(x),
        "np.bool_": lambda: np.bool_(x),
        "np.0d": lambda: np.array(x),
        "np.1": lambda: np.array([x]),
        "torch": lambda: torch.tensor(x),
        "torch.1": lambda: torch.tensor([x]),
        "str": lambda: str(x),
    }
    try:
        with np.errstate(all="ignore"):  # np.float32(1e308) is inf: a value to test
            return makers[kind]()
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return x


NUMBERS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**400), 2**1024, 1e308, -1e308, 5e-324, -0.0, float("nan")]),
)
VALUES = st.tuples(
    st.sampled_from(
        ["python", "np.float64", "np.float32", "np.int64", "np.bool_", "np.0d", "np.1", "torch", "torch.1", "str"]
    ),
    NUMBERS,
).map(lambda drawn: _value(*drawn))
MUTATIONS = [
    "pop_prompt",
    "clear_prompts",
    "extend_prompts",
    "insert_ids",
    "clear_ids",
    "pop_ids",
    "edit_completions",
    "edit_columns",
]


def _mutate(mutations, prompts, completions, completion_ids, tags):
    for ids in completion_ids:
        if "insert_ids" in mutations:
            ids.insert(0, ids[0] if ids else 5)
        if "clear_ids" in mutations:
            ids.clear()
    for prompt, completion, tag in zip(prompts, completions, tags, strict=False):
        if "extend_prompts" in mutations and isinstance(prompt, list):
            prompt.append({"role": "assistant", "content": "b"})
        if "edit_completions" in mutations and isinstance(completion, list):
            completion[0]["content"] += "b"
        if "edit_columns" in mutations:
            tag.append("seen")
    if "edit_completions" in mutations:
        completions.reverse()
    for name, column in (("pop_prompt", prompts), ("pop_ids", completion_ids)):
        if name in mutations and column:
            column.pop()
    if "clear_prompts" in mutations:
        prompts.clear()


@st.composite
def reward_specs(draw):
    return dict(
        values=draw(st.lists(VALUES, min_size=1, max_size=6)),
        container=draw(st.sampled_from(["list", "tuple", "object_array"])),
        mutations=draw(st.sets(st.sampled_from(MUTATIONS), max_size=3)),
        length_change=draw(st.sampled_from([0] * 8 + [-1, 1])),
        raise_on_call=draw(st.sampled_from([None] * 5 + [1, 2, 3])),
    )


def hostile_reward(spec, name):
    """A reward function of `spec`: its values in turn, in a container, after editing its inputs (or raising)."""
    offset = []

    def hostile(prompts, completions, completion_ids, tags, **kwargs):
        values = spec["values"]
        n = len(completions) + spec["length_change"]
        outputs = [values[(len(offset) + i) % len(values)] for i in range(max(n, 0))]
        offset.extend(outputs)
        _mutate(spec["mutations"], prompts, completions, completion_ids, tags)
        if len(reward.batches) == spec["raise_on_call"]:
            raise ConnectionError("the lab is closed")
        if spec["container"] == "object_array":
            array = np.empty(len(outputs), dtype=object)
            array[:] = outputs
            return array
        return tuple(outputs) if spec["container"] == "tuple" else outputs

    reward = Paying(hostile, name=name)
    return reward


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    specs=st.lists(reward_specs(), min_size=1, max_size=2),
    conversational=st.booleans(),
    budget=st.integers(4, 10),
    num_generations=st.sampled_from([2, 4]),
    seed=st.integers(0, 2**16),
)
def test_hostile_rewards_are_recorded_once_as_paid_or_stop_the_run_naming_function_and_sample(
    make_proposal, tokenizer, specs, conversational, budget, num_generations, seed
):
    prompt = [{"role": "user", "content": "ab"}] if conversational else ""
    dataset = Dataset.from_dict({"prompt": [prompt], "tags": [["x"]]})
    rewards = [hostile_reward(spec, f"hostile{i}") for i, spec in enumerate(specs)]
    with tempfile.TemporaryDirectory() as output_dir:
        args = BanelConfig(
            output_dir,
            max_reward_evaluations=budget,
            samples_per_round=budget,
            max_completion_length=LENGTH + 1,
            num_generations=num_generations,
            generation_batch_size=2 * num_generations,
            num_train_epochs=1,
            per_device_train_batch_size=8,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=1000,
            seed=seed,
        )
        trainer = BanelTrainer(make_proposal(), rewards, args=args, train_dataset=dataset, processing_class=tokenizer)
        try:
            trainer.train()
            error = None
        except RewardFunctionError as raised:
            error = str(raised)
        event("stopped: " + (error or "completed").split(" on a batch")[0].split(";")[0][:60])
        records = read_records(output_dir)

        batches = rewards[0].batches  # the first function is called on every batch, first
        assert all(r.batches == batches or r.batches == batches[:-1] for r in rewards[1:])
        assert_records_were_paid(records, batches, tokenizer)
        recorded = [sample_key(r["prompt"], r["completion"]) for r in records]
        if error is None:
            assert recorded == rewards[0].keys() and len(records) == trainer.num_reward_evaluations
        else:
            # Stopped on the last batch: every earlier batch is recorded whole, the last one in part at most.
            names = "|".join(r.__name__ for r in rewards)
            assert re.search(rf"[Rr]eward function '({names})'", error), error
            assert re.search(r"sample \d+ \(prompt=.*, completion=.*\)", error), error
            earlier, last = rewards[0].keys(batches[:-1]), rewards[0].keys(batches[-1:])
            assert recorded[: len(earlier)] == earlier and set(recorded[len(earlier) :]) <= set(last)
        for r in records:
            assert all(v is None or isinstance(v, float) for v in r["rewards"])
            given_rewards = [v for v in r["rewards"] if v is not None]  # weights 1; their sum may overflow to inf
            assert r["success"] == (bool(given_rewards) and sum(given_rewards) >= 1.0)

        if error is not None:  # the resume pays for nothing recorded and records all it pays
            resumed = [Paying(name=reward.__name__) for reward in rewards]
            trainer = BanelTrainer(
                make_proposal(), resumed, args=args, train_dataset=dataset, processing_class=tokenizer
            )
            trainer.train()
            final = read_records(output_dir)
            assert final[: len(records)] == records and len(final) == trainer.num_reward_evaluations <= budget
            assert [sample_key(r["prompt"], r["completion"]) for r in final[len(records) :]] == resumed[0].keys()
            assert_records_were_paid(final, batches + resumed[0].batches, tokenizer)


def test_finite_rewards_whose_weighted_sum_overflows_have_no_reward():
    assert weighted_reward([1e308, 1e308], [1.0, 1.0]) is None
    assert weighted_reward([1e308, None], [1.0, 1.0]) == 1e308
