"""Bad input is refused at construction with an error that names the fix (docs/reliability.md, "Bad configuration")."""

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from datasets import Dataset, DatasetDict

from banel_trl import BanelTrainer
from banel_trl.data import check_dataset
from banel_trl.ledger import RewardLedger
from banel_trl.scripts.banel import make_parser
from banel_trl.testing import starts_with_b


# ---------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    "overrides",
    [
        dict(eval_on_start=True),
        dict(eval_strategy="steps"),
        dict(eval_strategy="epoch"),
        dict(eval_steps=5),
        dict(eval_delay=1),
        dict(load_best_model_at_end=True),
        dict(metric_for_best_model="eval_success_rate"),
        dict(greater_is_better=True),
        dict(save_strategy="best"),
        dict(lr_scheduler_type="reduce_lr_on_plateau"),
        dict(lr_scheduler_type="greedy"),
    ],
)
def test_options_that_evaluate_during_the_fits_are_refused(make_config, overrides):
    # Each makes `Trainer.train`, which fits every round's negative model, call `evaluate`, or only acts on its result.
    name, value = next(iter(overrides.items()))
    message = rf"`{name}={value!r}`.*reward calls outside the budget.*call `trainer\.evaluate\(\)` after `train\(\)`"
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_eval_on_start_is_refused_and_evaluate_after_train_pays_from_its_own_budget(
    make_config, proposal, tokenizer, unconditional_dataset
):
    # A user's run: eval_on_start=True with an eval dataset paid 48 reward calls for a budget of 32, 16 per fit.
    settings = dict(
        max_reward_evaluations=32,
        samples_per_round=16,
        num_generations=16,
        generation_batch_size=16,
        num_train_epochs=1,
    )
    with pytest.raises(ValueError, match="eval_on_start"):
        make_config(eval_on_start=True, **settings)

    calls = []

    def counted(completions, **kwargs):
        calls.append(len(completions))
        return starts_with_b(completions, **kwargs)

    args = make_config(max_eval_reward_evaluations=16, **settings)
    trainer = BanelTrainer(
        proposal,
        counted,
        args=args,
        train_dataset=unconditional_dataset,
        eval_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    assert sum(calls) == trainer.num_reward_evaluations <= 32
    assert len(RewardLedger.read(args.output_dir)) == sum(calls)  # every paid call recorded
    metrics = trainer.evaluate()
    # Measured from the evaluation's own budget, not the training budget.
    assert sum(calls) == trainer.num_reward_evaluations + metrics["eval_reward_evaluations"]
    assert 0 < metrics["eval_reward_evaluations"] <= 16 and trainer.num_reward_evaluations == len(
        RewardLedger.read(args.output_dir)
    )


# ---------------------------------------------------------------------------------------------- types


INTEGER_FIELDS = [
    "max_reward_evaluations",
    "samples_per_round",
    "num_rounds",
    "num_generations",
    "generation_batch_size",
    "max_completion_length",
    "top_k",
    "max_sampling_attempts",
    "per_device_eval_batch_size",
    "distillation_samples",
    "num_completions_to_print",
    "per_device_train_batch_size",
]
FLOAT_FIELDS = [
    "success_threshold",
    "temperature",
    "top_p",
    "min_p",
    "repetition_penalty",
    "target_rejection_rate",
    "first_region_rejection_rate",
    "learning_rate",
    "num_train_epochs",
    "logging_steps",
]
BOOL_FIELDS = ["trust_remote_code", "disable_dropout", "distill_posterior", "log_completions"]


NONE_DEFAULTS = (
    "num_rounds",
    "samples_per_round",
    "generation_batch_size",
    "distillation_samples",
    "num_completions_to_print",
)


@pytest.mark.parametrize(
    "name, value",
    [
        (name, value)
        for name in INTEGER_FIELDS
        for value in (20.5, "20", True, None)
        # These five default to None: derived from the others (or, for the last, all).
        if value is not None or name not in NONE_DEFAULTS
    ],
)
def test_counts_of_the_wrong_type_are_refused_naming_field_value_and_type(make_config, name, value):
    # 20.5 paid 21 reward evaluations; "20" failed in a comparison with a TypeError.
    message = f"`{name}` must be an integer, got {value!r} of type {type(value).__name__}"
    with pytest.raises(ValueError, match=re.escape(message)):
        make_config(**{name: value})


def test_a_fractional_count_is_never_rounded_up(make_config):
    with pytest.raises(ValueError, match=re.escape("whole numbers, pass 20 or 21")):
        make_config(max_reward_evaluations=20.5, samples_per_round=10)


def test_whole_counts_written_as_floats_or_numpy_ints_become_ints(make_config):
    args = make_config(max_reward_evaluations=150.0, samples_per_round=np.int64(50), per_device_eval_batch_size=1e2)
    assert (args.max_reward_evaluations, args.samples_per_round, args.per_device_eval_batch_size, args.num_rounds) == (
        150,
        50,
        100,
        3,
    )
    assert all(type(value) is int for value in (args.max_reward_evaluations, args.samples_per_round, args.num_rounds))


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_numbers_given_as_strings_are_refused_naming_field_value_and_type(make_config, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must be a number, got '0.5' of type str")):
        make_config(**{name: "0.5"})


@pytest.mark.parametrize("name", ["temperature", "target_rejection_rate", "repetition_penalty", "min_p"])
def test_non_finite_numbers_are_refused(make_config, name):
    with pytest.raises(ValueError, match=f"`{name}` must be a finite number, got inf"):
        make_config(**{name: float("inf")})


@pytest.mark.parametrize("name", BOOL_FIELDS)
def test_flags_given_as_strings_are_refused(make_config, name):
    # "false" is truthy: it would have turned the option on.
    with pytest.raises(ValueError, match=re.escape(f"`{name}` must be True or False, got 'false' of type str")):
        make_config(**{name: "false"})


def test_reward_weights_must_be_numbers(make_config):
    with pytest.raises(ValueError, match=re.escape("`reward_weights[0]` must be a number, got '1' of type str")):
        make_config(reward_weights=["1", 2.0])
    with pytest.raises(ValueError, match=re.escape("`reward_weights` must be a list of numbers, got 1.0")):
        make_config(reward_weights=1.0)


def test_a_fractional_budget_in_yaml_is_refused(tmp_path):
    # TrlParser passes YAML numbers through as they are: `20.5` reached the config as a float.
    config = {"output_dir": str(tmp_path / "run"), "max_reward_evaluations": 20.5, "samples_per_round": 10}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=re.escape("`max_reward_evaluations` must be an integer, got 20.5")):
        make_parser().parse_args_and_config(["--config", str(path), "--use_cpu", "true", "--report_to", "none"])


# ---------------------------------------------------------------------------------------------- datasets


NOT_A_DATASET = [
    ([{"prompt": "a"}], "got a list: pass `Dataset.from_list(rows)`"),
    (pd.DataFrame({"prompt": ["a"]}), "got a pandas DataFrame: pass `Dataset.from_pandas(df, preserve_index=False)`"),
    ({"prompt": ["a"]}, "got a dict: pass `Dataset.from_dict("),
]
SPLITS = (DatasetDict(train=Dataset.from_dict({"prompt": ["a"]})), "of splits ['train']: pass one split, e.g. `")


# `eval_dataset` takes a dict of datasets, as `Trainer.evaluate` does (tests/test_run_events.py); `train_dataset` not.
@pytest.mark.parametrize(
    "name, dataset, message",
    [(name, *case) for name in ("train_dataset", "eval_dataset") for case in NOT_A_DATASET]
    + [("train_dataset", *SPLITS)],
)
def test_datasets_that_are_not_a_dataset_are_refused_with_the_call_that_makes_one(
    make_config, proposal, tokenizer, unconditional_dataset, dataset, message, name
):
    datasets = {"train_dataset": unconditional_dataset, name: dataset}
    with pytest.raises(ValueError, match=re.escape(f"`{name}`") + ".*" + re.escape(message)):
        BanelTrainer(proposal, starts_with_b, args=make_config(), processing_class=tokenizer, **datasets)


@pytest.mark.parametrize(
    "prompts, row, fix",
    [
        ([1, 2], 0, "convert the column"),
        (["a", None], 1, "drop those rows"),
        ([b"ab"], 0, "decode the column"),
        ([{"text": "a"}], 0, "a conversational prompt is a list of messages"),
        ([{"role": "user", "content": "a"}], 0, "`[message]` for a single one"),
        ([["a", "b"]], 0, "not all {'role', 'content'} messages"),  # the tokenizer took these as pre-tokenised words
        ([[{"text": "a"}]], 0, "not all {'role', 'content'} messages"),
        ([[{"role": "user", "content": "a"}], []], 1, "needs at least one message"),
    ],
)
def test_prompts_that_are_neither_text_nor_messages_are_refused(make_config, proposal, tokenizer, prompts, row, fix):
    dataset = Dataset.from_dict({"prompt": prompts})
    message = re.escape(f"Prompt {row} of `train_dataset` is ") + ".*" + re.escape(fix) + ".*Prompts must be strings"
    with pytest.raises(ValueError, match=message):
        BanelTrainer(proposal, starts_with_b, args=make_config(), train_dataset=dataset, processing_class=tokenizer)


@pytest.mark.parametrize(
    "prompts",
    [
        [""],  # unconditional generation
        ["The sky is", "2+2="],
        [[{"role": "user", "content": "What color is the sky?"}]],
        [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]],
        [[{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]],
    ],
)
def test_trl_prompt_formats_are_accepted(prompts):
    check_dataset(Dataset.from_dict({"prompt": prompts, "answer": ["x"] * len(prompts)}), "train_dataset")
