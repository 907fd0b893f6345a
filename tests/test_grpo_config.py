"""A GRPO user's config works with BanelConfig: every GRPOConfig field is documented, GRPO's values are honoured."""

import collections
import dataclasses
import itertools
import pathlib
import re
import types

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments
from trl import GRPOConfig

from banel_trl import BanelConfig, cli
from banel_trl.data import NegativesCollator
from banel_trl.evaluation import EvaluationCounts, count_successes
from banel_trl.models import load_proposal
from banel_trl.sampling import CandidateSampler, generation_config, prompt_stream
from banel_trl.scoring import completion_log_probs
from banel_trl.scripts.banel import make_parser
from banel_trl.testing import char_tokenizer, tiny_qwen2


MIGRATION_GUIDE = pathlib.Path(__file__).parents[1] / "docs" / "migrating_from_grpo.md"
ROW = re.compile(r"^\| `(\w+)` \| (yes|no) \| (.+) \|$")
KINDS = ("same meaning", "new meaning: ", "ignored with a warning (YAML and CLI; not accepted in Python)", "refused")


@pytest.fixture
def config(tmp_path):
    def make(**overrides):
        return BanelConfig(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", **overrides)

    return make


def defaults(cls) -> dict:
    return {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }


def migration_table() -> list[tuple[str, str, str]]:
    """The rows `(field, in BaNEL, what)` of the guide's table of every GRPOConfig field."""
    section = MIGRATION_GUIDE.read_text().split("## Every GRPOConfig field", 1)[1].split("\n## ", 1)[0]
    return [ROW.match(line).groups() for line in section.splitlines() if line.startswith("| `")]


# ---------------------------------------------------------------------------------------------- the guide's table


def test_the_guide_lists_every_grpo_config_field_once_with_what_banel_does_with_it(tmp_path):
    rows = migration_table()
    counts = collections.Counter(name for name, _, _ in rows)
    assert [name for name, count in counts.items() if count > 1] == []
    trainer_defaults = defaults(TrainingArguments)
    grpo_defaults, banel_defaults = defaults(GRPOConfig), defaults(BanelConfig)
    grpo_own = set(grpo_defaults) - set(trainer_defaults)
    changed = {
        name
        for name, default in trainer_defaults.items()
        if grpo_defaults.get(name, default) != default or banel_defaults.get(name, default) != default
    }
    assert set(counts) == grpo_own | changed
    banel_fields = {f.name for f in dataclasses.fields(BanelConfig)}
    for name, in_banel, what in rows:
        kind = next((kind for kind in KINDS if what.startswith(kind)), None)
        assert kind is not None, f"{name}: {what!r} is none of {KINDS}"
        assert (in_banel == "yes") == (name in banel_fields), name
        if kind in ("same meaning", "new meaning: ", "refused"):
            assert name in banel_fields, f"{name} is marked {kind!r} but is no BanelConfig field"
        else:  # dropped by `banel-trl train` with its warning
            assert name not in banel_fields, f"{name} is marked ignored but BanelConfig has it"
            assert cli._drop_grpo_only_options([f"--{name}", "1", "--seed", "3"]) == ["--seed", "3"]
        if kind == "refused":
            with pytest.raises(ValueError, match="not supported"):
                BanelConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **{name: True})


# ---------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "num_generations, max_completion_length, batch",
    [(3, 256, 255), (8, 256, 256), (8, 12, 4096), (12, 16, 4092), (8, 384, 168), (100, 256, 200), (8, 2**20, 8)],
)
def test_the_generation_batch_defaults_to_65536_completion_tokens_in_whole_prompts(
    config, num_generations, max_completion_length, batch
):
    args = config(
        num_generations=num_generations, max_completion_length=max_completion_length, distill_posterior=False
    )
    assert args.generation_batch_size == batch


def test_steps_per_generation_sizes_the_generation_batch_as_in_grpo(config):
    args = config(steps_per_generation=2, per_device_train_batch_size=12, num_generations=6)
    assert args.generation_batch_size == 24
    with pytest.raises(ValueError, match="cannot both be set, as in GRPO"):
        config(steps_per_generation=2, generation_batch_size=64)
    with pytest.raises(ValueError, match=re.escape("= 10 * 1 * 1 (10) must be divisible by `num_generations` (8)")):
        config(steps_per_generation=1, per_device_train_batch_size=10)


def test_a_generation_batch_that_splits_a_prompts_completions_is_refused_with_the_fix(config):
    message = r"`generation_batch_size` \(66\) must be divisible by `num_generations` \(8\).*Set it to a multiple of 8"
    with pytest.raises(ValueError, match=message):
        config(generation_batch_size=66)


def test_a_budget_alone_is_spent_in_two_rounds_or_ten_distilled_on_8_samples_per_nre(config):
    args = config()
    assert (args.max_reward_evaluations, args.samples_per_round, args.num_rounds) == (7500, 3750, 2)
    args = config(distill_posterior=True)
    assert (args.samples_per_round, args.num_rounds, args.distillation_samples) == (750, 10, 6000)
    assert config(distill_posterior=True, distillation_samples=100).distillation_samples == 100
    args = config(max_reward_evaluations=1000)
    assert (args.samples_per_round, args.num_rounds) == (500, 2)
    assert config(max_reward_evaluations=1001).samples_per_round == 501
    assert config(max_reward_evaluations=1).num_rounds == 1
    args = config(max_reward_evaluations=1000, num_rounds=3)
    assert (args.samples_per_round, args.num_rounds) == (334, 3)
    args = config(max_reward_evaluations=1000, samples_per_round=300)
    assert (args.samples_per_round, args.num_rounds) == (300, 4)
    with pytest.raises(ValueError, match="smaller than one round"):
        config(max_reward_evaluations=100, samples_per_round=200)


def test_grpo_values_from_the_command_line_are_parsed(tmp_path):
    _, args, *_ = make_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--num_generations", "6"]
        + ["--pad_to_multiple_of", "16", "--shuffle_dataset", "false", "--num_generations_eval", "2"]
    )
    assert (args.generation_batch_size, args.pad_to_multiple_of, args.shuffle_dataset) == (252, 16, False)
    assert args.num_generations_eval == 2


# ---------------------------------------------------------------------------------------------- options


def test_only_the_sum_of_weighted_rewards_makes_a_success(config):
    assert config(multi_objective_aggregation="sum_then_normalize").multi_objective_aggregation == "sum_then_normalize"
    with pytest.raises(ValueError, match="success depend on the samples drawn with it"):
        config(multi_objective_aggregation="normalize_then_sum")
    with pytest.raises(ValueError, match="must be one of"):
        config(multi_objective_aggregation="mean")


@pytest.mark.parametrize(
    "setting",
    [
        dict(use_transformers_paged=True),
        dict(use_transformers_continuous_batching=True),
        dict(cache_implementation="paged"),
    ],
)
def test_paged_generation_is_refused_naming_why(config, setting):
    with pytest.raises(ValueError, match="not supported: transformers' paged generation is continuous batching"):
        config(**setting)


def test_pad_to_multiple_of_takes_grpo_values(config):
    assert config().pad_to_multiple_of is None
    assert config(pad_to_multiple_of="auto").pad_to_multiple_of is None  # 128 on Neuron only
    assert config(pad_to_multiple_of=16.0).pad_to_multiple_of == 16
    for value in (0, "x", True):
        with pytest.raises(ValueError, match="`pad_to_multiple_of` must be"):
            config(pad_to_multiple_of=value)


def test_num_completions_to_print_accepts_grpos_none(config):
    assert config(num_completions_to_print=None).num_completions_to_print is None


def test_the_negatives_collator_pads_to_a_multiple_without_changing_a_likelihood():
    tokenizer = char_tokenizer("abcd")
    model = tiny_qwen2(tokenizer).eval()
    examples = [
        {"prompt_ids": tokenizer("ab")["input_ids"], "completion_ids": tokenizer("cdc")["input_ids"]},
        {"prompt_ids": tokenizer("a")["input_ids"], "completion_ids": tokenizer("d")["input_ids"]},
    ]
    plain = NegativesCollator(tokenizer.pad_token_id)(examples)
    padded = NegativesCollator(tokenizer.pad_token_id, pad_to_multiple_of=8)(examples)
    assert plain["prompt_ids"].shape == (2, 2) and plain["completion_ids"].shape == (2, 3)
    assert padded["prompt_ids"].shape == (2, 8) and padded["completion_ids"].shape == (2, 8)
    assert padded["prompt_ids"][:, -2:].equal(plain["prompt_ids"])  # left padding
    assert padded["completion_ids"][:, :3].equal(plain["completion_ids"])  # right padding
    with torch.no_grad():
        sums = [completion_log_probs(model, **batch).sum(dim=1) for batch in (plain, padded)]
    torch.testing.assert_close(sums[0], sums[1], rtol=1e-5, atol=1e-5)


class RecordingPosterior:
    """Stands in for a posterior: `propose` returns what it was given."""

    model = types.SimpleNamespace(device=torch.device("cpu"))

    def propose(self, input_ids, attention_mask, generation_config, adapter=None, regions=None):
        return input_ids, attention_mask


def drawn_prompts(sampler: CandidateSampler, num_batches: int) -> list[str]:
    return [example["prompt"] for _ in range(num_batches) for example in sampler.propose_batch()[0]]


def test_shuffle_dataset_false_takes_the_prompts_in_order_each_round():
    tokenizer = char_tokenizer("abcd")
    dataset = Dataset.from_dict({"prompt": ["a", "b", "c", "d", "ab"]})
    sampler = CandidateSampler(RecordingPosterior(), tokenizer, None, 1, 3, shuffle_dataset=False)
    for seed in (0, 1):  # every round starts again at the first prompt
        sampler.restart(dataset, seed)
        assert drawn_prompts(sampler, 3) == ["a", "b", "c", "d", "ab", "a", "b", "c", "d"]
    stream = prompt_stream(dataset, 0, shuffle=False)
    assert [example["prompt"] for example in itertools.islice(stream, 6)] == ["a", "b", "c", "d", "ab", "a"]
    shuffled = CandidateSampler(RecordingPosterior(), tokenizer, None, 1, 5)
    shuffled.restart(dataset, 0)
    first = drawn_prompts(shuffled, 1)
    shuffled.restart(dataset, 0)
    assert drawn_prompts(shuffled, 1) == first  # the same seed, the same order
    assert first != dataset["prompt"] and sorted(first) == sorted(dataset["prompt"])


def test_the_sampler_pads_prompts_to_a_multiple():
    tokenizer = char_tokenizer("abcd")
    dataset = Dataset.from_dict({"prompt": ["abc", "a"]})
    sampler = CandidateSampler(
        RecordingPosterior(), tokenizer, None, 1, 2, shuffle_dataset=False, pad_to_multiple_of=8
    )
    sampler.restart(dataset, 0)
    _, (input_ids, attention_mask) = sampler.propose_batch()
    assert input_ids.shape == attention_mask.shape == (2, 8)
    assert attention_mask.sum(dim=1).tolist() == [3, 1] and input_ids[:, :5].eq(tokenizer.pad_token_id).all()


def test_cache_implementation_reaches_the_generation_config(config):
    tokenizer = char_tokenizer("abcd")
    model = tiny_qwen2(tokenizer)
    assert generation_config(model, tokenizer, config(cache_implementation="static")).cache_implementation == "static"
    assert generation_config(model, tokenizer, config()).cache_implementation is None


def test_disable_dropout_turns_off_the_proposals_dropout(config):
    def proposal():
        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2))

    dropouts = [m.p for m in load_proposal(proposal(), config()).modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p > 0 for p in dropouts)
    model = load_proposal(proposal(), config(disable_dropout=True)).train()
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    input_ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(input_ids).logits, model(input_ids).logits)  # deterministic in training mode


class CountingSampler:
    """Stands in for a sampler: `generate` records its batches and returns one token per example."""

    num_generations, generation_batch_size = 8, 64

    def __init__(self):
        self.batches = []

    def generate(self, examples):
        self.batches.append(len(examples))
        return [[1] for _ in examples]


class EverySampleSucceeds:
    """Stands in for an evaluation: measures every sample it is given as a success."""

    def __init__(self):
        self.counts = EvaluationCounts()

    def measure(self, samples):
        self.counts.samples += len(samples)
        self.counts.successes += len(samples)
        return self.counts


def test_num_generations_eval_sets_the_samples_per_prompt_of_evaluate():
    dataset = Dataset.from_dict({"prompt": [str(i) for i in range(30)]})
    sampler = CountingSampler()
    counts = count_successes(sampler, EverySampleSucceeds(), dataset, 3)
    assert (counts.successes, counts.samples) == (90, 90)
    assert all(batch <= 64 and batch % 3 == 0 for batch in sampler.batches) and sum(sampler.batches) == 90
    sampler = CountingSampler()
    assert count_successes(sampler, EverySampleSucceeds(), dataset).samples == 240  # num_generations by default
    assert sampler.batches == [64, 64, 64, 48]
