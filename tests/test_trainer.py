import json
import os

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from banel_trl import BanelPosterior, BanelTrainer
from banel_trl.data import NegativesCollator
from banel_trl.ledger import LEDGER_NAME
from banel_trl.region_policy import RegionPolicy
from banel_trl.testing import starts_with_b

from .conftest import SHIPPED_POLICY, sample_texts


class CountingReward:
    """A reward oracle that records every call it is paid for."""

    __name__ = "counting_reward"

    def __init__(self, reward=starts_with_b):
        self.reward = reward
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.extend(zip(map(repr, prompts), map(repr, completions), strict=True))
        return self.reward(completions=completions, prompts=prompts, **kwargs)


def success_rate(texts):
    return sum(t.startswith("b") for t in texts) / len(texts)


def test_banel_learns_from_failures_where_grpo_gets_no_gradient(
    proposal, tokenizer, unconditional_dataset, make_config, tmp_path, monkeypatch
):
    # The shipped review: the regions of this task show their gain and stay.
    monkeypatch.setattr(RegionPolicy, "review_p_value", SHIPPED_POLICY["review_p_value"])
    base_rate = success_rate(sample_texts(proposal.generate, tokenizer, 3000))
    assert 0.005 < base_rate < 0.06, "the toy proposal should make successes rare"

    # Cuts shallow enough that the posterior keeps accepting ~1 in 10 proposals after three rounds (0.07-0.12 over
    # seeds 0-4), so that neither the rounds nor the evaluation below spend their time in rejection sampling; the
    # bound on proposals makes a posterior that accepts far less fail fast instead of stalling.
    args = make_config(
        max_reward_evaluations=600,
        samples_per_round=200,
        num_train_epochs=5,
        first_region_rejection_rate=0.9,
        target_rejection_rate=0.5,
        max_sampling_attempts=200,
    )
    counting = CountingReward()
    trainer = BanelTrainer(
        proposal, counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    posterior_rate = success_rate(sample_texts(trainer.posterior.generate, tokenizer, 1000))
    assert posterior_rate > 3 * base_rate, (base_rate, posterior_rate)  # 0.52-0.80 against ~0.04, seeds 0-4
    assert not trainer.posterior.regions[0].retracted
    # Properties, not counts one CPU happens to produce: within the budget, every paid evaluation recorded once.
    assert len(counting.calls) == trainer.num_reward_evaluations <= 600
    assert len(set(counting.calls)) == len(counting.calls)

    # GRPO given only failures: all advantages are zero, so is the gradient, and the policy does not move.
    def always_fails(completions, **kwargs):
        return [0.0] * len(completions)

    policy = trainer.model.get_base_model()
    before = {name: p.detach().clone() for name, p in policy.named_parameters() if "lora" not in name}
    grpo_args = GRPOConfig(
        str(tmp_path / "grpo"),
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=7,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        logging_steps=1,
        disable_tqdm=True,
    )
    with trainer.model.disable_adapter():
        # GRPO cannot start from an empty prompt; any prompt shows the point.
        grpo = GRPOTrainer(
            policy,
            always_fails,
            args=grpo_args,
            train_dataset=Dataset.from_dict({"prompt": ["a"]}),
            processing_class=tokenizer,
        )
        for parameter in grpo.model.parameters():
            parameter.requires_grad_(True)
        grpo.train()
    assert all(log["grad_norm"] == 0.0 for log in grpo.state.log_history if "grad_norm" in log)
    for name, parameter in policy.named_parameters():
        if name in before:
            assert torch.equal(parameter, before[name]), name


def test_budget_is_a_hard_cap_and_only_accepted_new_candidates_are_paid(
    proposal, tokenizer, unconditional_dataset, make_config
):
    trainer = None

    def reward(prompts, completions, completion_ids, **kwargs):
        # Every candidate the oracle sees must be accepted by the posterior as it stands.
        batch = NegativesCollator(tokenizer.pad_token_id)(
            [{"prompt_ids": [tokenizer.bos_token_id], "completion_ids": ids} for ids in completion_ids]
        )
        assert not trainer.posterior.rejects(trainer.posterior.log_ratios(**batch)).any()
        return starts_with_b(completions)

    counting = CountingReward(reward)
    # Shallow cuts: at the shipped ones the third round spends minutes in rejection sampling.
    args = make_config(
        max_reward_evaluations=130,
        samples_per_round=50,
        max_eval_reward_evaluations=32,
        first_region_rejection_rate=0.9,
        target_rejection_rate=0.5,
    )
    trainer = BanelTrainer(
        proposal, counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    assert len(counting.calls) == trainer.num_reward_evaluations == 130
    assert len(set(counting.calls)) == len(counting.calls), "a candidate was paid for twice"
    rounds = [log for log in trainer.state.log_history if "acceptance_rate" in log]
    assert [log["nre/used"] for log in rounds] == [50, 100, 130]
    assert rounds[-1]["acceptance_rate"] < 1.0, "later rounds should reject candidates (for free)"
    assert len(trainer.posterior.regions) == 3

    # Measuring the posterior is evaluation: it pays from its own budget and spends none of the training budget.
    metrics = trainer.evaluate(unconditional_dataset)
    assert 0.0 <= metrics["eval_success_rate"] <= 1.0
    assert metrics["eval_num_samples"] == args.num_generations  # every draw measured, the repeats too
    assert trainer.num_reward_evaluations == 130


def test_duplicates_are_free_and_still_count_as_samples(tokenizer, unconditional_dataset, make_config):
    from banel_trl.testing import pretrain, tiny_qwen2

    # A nearly deterministic proposal: almost every sample repeats one of three strings.
    model = pretrain(tiny_qwen2(tokenizer), tokenizer, ["aaaaaa", "abcdab", "dddddd"] * 100, steps=150)
    counting = CountingReward()
    args = make_config(max_reward_evaluations=40, samples_per_round=20, max_sampling_attempts=5)
    trainer = BanelTrainer(model, counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer)
    trainer.train()
    assert len(set(counting.calls)) == len(counting.calls) == trainer.num_reward_evaluations <= 40
    assert trainer.ledger.repeats, "repeated samples should be recorded as free repeats"
    assert len(trainer.ledger.samples_of_round(0)) > sum(r["round"] == 0 for r in trainer.ledger.records)


def test_evaluate_measures_every_sample_it_draws_repeats_included(tokenizer, unconditional_dataset, make_config):
    from banel_trl.testing import pretrain, tiny_qwen2

    # A nearly deterministic proposal: a batch of 32 samples repeats the same few strings.
    model = pretrain(tiny_qwen2(tokenizer), tokenizer, ["aaaaaa", "abcdab", "dddddd"] * 100, steps=150)
    counting = CountingReward()
    args = make_config(max_reward_evaluations=20, samples_per_round=20, max_eval_reward_evaluations=32)
    trainer = BanelTrainer(model, counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer)
    metrics = trainer.evaluate(unconditional_dataset)  # before training: only the evaluation's budget pays
    assert metrics["eval_reward_evaluations"] == len(counting.calls) == len(set(counting.calls)) < 32
    assert metrics["eval_num_samples"] == args.num_generations  # every draw measured, the repeats too


def test_successes_are_recorded_and_never_trained_on(proposal, tokenizer, unconditional_dataset, make_config):
    args = make_config(max_reward_evaluations=100, samples_per_round=50)
    trainer = BanelTrainer(
        proposal, starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    fitted = {}  # adapter -> what it was fit on: the negative models and, from round 1, the posterior references
    fit = trainer.fitter.fit_adapter

    def record_fit(name, examples, *args):
        fitted[name] = examples
        return fit(name, examples, *args)

    trainer.fitter.fit_adapter = record_fit
    trainer.train()
    assert trainer.successes and all(s["completion"].startswith("b") for s in trainer.successes)
    assert sorted(fitted) == ["reference_1", "region_0", "region_1"]
    assert [region.reference_adapter for region in trainer.posterior.regions] == ["__base__", "reference_1"]
    success_ids = [s["completion_ids"] for s in trainer.successes]
    assert not any(example["completion_ids"] in success_ids for examples in fitted.values() for example in examples)
    # The references are unevaluated samples of the posterior: they never reach the reward function.
    assert trainer.num_reward_evaluations == 100


def test_ledger_survives_a_crash_and_the_run_resumes_without_paying_twice(
    make_proposal, tokenizer, unconditional_dataset, make_config
):
    counting = CountingReward()
    batches = []

    def crashes_on_third_batch(prompts, completions, **kwargs):
        batches.append(len(completions))
        if len(batches) == 3:
            raise ConnectionError("the lab is closed")
        return counting(prompts=prompts, completions=completions, **kwargs)

    crashes_on_third_batch.__name__ = counting.__name__  # the same reward, whose lab was closed: the run's manifest

    args = make_config(max_reward_evaluations=150, samples_per_round=50, generation_batch_size=32)
    trainer = BanelTrainer(
        make_proposal(),
        crashes_on_third_batch,
        args=args,
        train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    with pytest.raises(RuntimeError, match="counting_reward.*ConnectionError"):
        trainer.train()
    paid_before = list(counting.calls)
    trainer.ledger.close()

    resumed = BanelTrainer(
        make_proposal(), counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    resumed.train()
    assert counting.calls[: len(paid_before)] == paid_before
    assert len(set(counting.calls)) == len(counting.calls) == resumed.num_reward_evaluations == 150
    assert len(resumed.posterior.regions) == 3

    # A finished run resumed again pays nothing more and keeps its regions.
    resumed.ledger.close()
    again = BanelTrainer(
        make_proposal(), counting, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    again.train()
    assert len(counting.calls) == 150
    assert [r.threshold for r in again.posterior.regions] == [r.threshold for r in resumed.posterior.regions]


def test_a_round_with_too_few_successes_adds_no_region_and_keeps_its_evaluations(
    train_toy, make_config, caplog, tmp_path, monkeypatch
):
    def train(name, reward, min_successes):
        monkeypatch.setattr(RegionPolicy, "min_successes", min_successes)
        # Shallow cuts: at the shipped ones the later rounds spend minutes in rejection sampling.
        args = make_config(output_dir=str(tmp_path / name), first_region_rejection_rate=0.9, target_rejection_rate=0.5)
        return train_toy(args, reward)

    # Rounds 1 and 2 find a few successes each, fewer than 1000: only round 0's region, compared with p_theta.
    counting = CountingReward()
    strict = train("strict", counting, 1000)
    assert [region.round for region in strict.posterior.regions] == [0]
    assert len(counting.calls) == strict.num_reward_evaluations == 150
    assert "Round 1 adds no region" in caplog.text and "Round 2 adds no region" in caplog.text
    rounds = [log for log in strict.state.log_history if "acceptance_rate" in log]
    assert [log["round"] for log in rounds] == [0, 1, 2] and "threshold" not in rounds[1]
    # Resumed, the run pays nothing again and adds no region: rounds 1 and 2 are read back from the ledger.
    assert [r.round for r in train("strict", counting, 1000).posterior.regions] == [0]
    assert len(counting.calls) == 150

    # The bound is inclusive: with exactly round 1's successes as the minimum, round 1 adds its region.
    round_1_successes = sum(r["success"] for r in strict.ledger.records if r["round"] == 1)
    assert round_1_successes > 0
    assert [r.round for r in train("exact", starts_with_b, round_1_successes).posterior.regions][:2] == [0, 1]


def test_torn_ledger_line_is_dropped_on_resume(make_proposal, tokenizer, unconditional_dataset, make_config):
    args = make_config(max_reward_evaluations=100, samples_per_round=50, num_rounds=1)
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    trainer.ledger.close()
    path = os.path.join(args.output_dir, LEDGER_NAME)
    with open(path, "a") as file:
        file.write('{"round": 1, "prompt": "", "compl')  # a crash in the middle of a write
    resumed = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    resumed._open_ledger()
    assert resumed.num_reward_evaluations == 50
    with open(path) as file:
        assert all(json.loads(line) for line in file)


def test_two_runs_cannot_share_an_output_dir(make_proposal, tokenizer, unconditional_dataset, make_config):
    args = make_config()
    first = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    first._open_ledger()
    second = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    with pytest.raises(RuntimeError, match="Another BaNEL run"):
        second.train()


def test_same_arguments_as_grpo_trainer(proposal, tokenizer, make_config, tmp_path):
    """A model path, a list of reward functions and a conversational dataset: what a GRPO script passes."""
    model_path = str(tmp_path / "tiny-model")
    proposal.save_pretrained(model_path)
    tokenizer.save_pretrained(model_path)
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": "ab"}], [{"role": "user", "content": "cd"}]],
            "target": ["b", "c"],
        }
    )
    seen = {}

    def echoes_target(prompts, completions, target, **kwargs):
        seen.update(prompts=prompts, completions=completions, target=target)
        return [float(c[0]["content"].startswith(t)) for c, t in zip(completions, target, strict=True)]

    def is_short(completions, **kwargs):
        return [None if len(c[0]["content"]) > 3 else 0.0 for c in completions]

    grpo = GRPOTrainer(
        model=model_path,
        reward_funcs=[echoes_target, is_short],
        args=GRPOConfig(
            str(tmp_path / "grpo"),
            report_to="none",
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=8,
            num_generations=8,
        ),
        train_dataset=dataset,
    )
    assert grpo.reward_func_names == ["echoes_target", "is_short"]
    args = make_config(
        max_reward_evaluations=60,
        samples_per_round=30,
        num_generations=8,
        generation_batch_size=16,
        reward_weights=[1.0, 0.5],
        first_region_rejection_rate=0.5,  # a shallow cut: round 1 is not spent in rejection sampling
    )
    trainer = BanelTrainer(model=model_path, reward_funcs=[echoes_target, is_short], args=args, train_dataset=dataset)
    trainer.train()
    assert trainer.num_reward_evaluations == 60
    assert seen["prompts"][0][0]["role"] == "user" and seen["completions"][0][0]["role"] == "assistant"
    assert len(seen["target"]) == len(seen["prompts"])
    record = trainer.ledger.records[0]
    assert record["prompt"] in dataset["prompt"] and len(record["rewards"]) == 2


@pytest.mark.parametrize("kappa", [None, RegionPolicy.relaxed_kappa])
def test_saved_posterior_round_trips(make_proposal, tokenizer, unconditional_dataset, make_config, tmp_path, kappa):
    args = make_config(
        max_reward_evaluations=100, samples_per_round=50, first_region_rejection_rate=0.9, target_rejection_rate=0.5
    )
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    trainer.train()
    torch.manual_seed(0)
    candidates = trainer.posterior.propose(
        torch.full((64, 1), tokenizer.bos_token_id), torch.ones(64, 1, dtype=torch.long), trainer.generation_config
    )
    batch = dict(
        prompt_ids=candidates.prompt_ids,
        prompt_mask=candidates.prompt_mask,
        completion_ids=candidates.completion_ids,
        completion_mask=candidates.completion_mask,
    )
    for region in trainer.posterior.regions:
        if kappa is not None:  # as a relaxed region: its own weight of its negative model, cut through its scores
            region.kappa = kappa
            region.threshold = trainer.posterior.log_ratios(**batch, regions=[region]).median().item()
    accepted = trainer.posterior.rejects(trainer.posterior.log_ratios(**batch)).logical_not()
    assert kappa is not None or torch.equal(accepted, candidates.accepted)
    trainer.save_model(str(tmp_path / "saved"))
    loaded = BanelPosterior.from_pretrained(str(tmp_path / "saved"), model=make_proposal())
    assert loaded.regions == trainer.posterior.regions and [region.kappa for region in loaded.regions] == [kappa] * 2
    assert torch.equal(loaded.rejects(loaded.log_ratios(**batch)), accepted.logical_not())
    assert 0 < int(accepted.sum()) < 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(max_reward_evaluations=0), "max_reward_evaluations"),
        (dict(max_reward_evaluations=10, samples_per_round=50), "smaller than one round"),
        (dict(generation_batch_size=10, num_generations=4), "divisible"),
        (dict(target_rejection_rate=1.0), "target_rejection_rate"),
        (dict(first_region_rejection_rate=1.0), "first_region_rejection_rate"),
        (dict(max_completion_length=0), "max_completion_length"),
        (dict(temperature=0.0), "temperature"),
        (dict(num_rounds=0), "num_rounds"),
    ],
)
def test_bad_config_raises(make_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_bad_trainer_arguments_raise(proposal, tokenizer, make_config, unconditional_dataset):
    args = make_config()
    with pytest.raises(ValueError, match="'prompt' column"):
        BanelTrainer(
            proposal,
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"text": ["a"]}),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="empty"):
        BanelTrainer(
            proposal,
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": []}),
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="reward weights"):
        BanelTrainer(
            proposal,
            starts_with_b,
            args=make_config(reward_weights=[1.0, 2.0]),
            train_dataset=unconditional_dataset,
            processing_class=tokenizer,
        )
    with pytest.raises(ValueError, match="optimizer"):
        BanelTrainer(
            proposal,
            starts_with_b,
            args=args,
            train_dataset=unconditional_dataset,
            processing_class=tokenizer,
            optimizers=(torch.optim.SGD(proposal.parameters(), lr=1), None),
        )


def test_generation_kwargs_override_the_sampling_settings(proposal, tokenizer, unconditional_dataset, make_config):
    args = make_config(generation_kwargs={"do_sample": True, "top_k": 2, "max_new_tokens": 3, "num_beams": 1})
    trainer = BanelTrainer(
        proposal, starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    config = trainer.generation_config
    assert (config.do_sample, config.top_k, config.max_new_tokens) == (True, 2, 3)
    with pytest.raises(ValueError, match="set `temperature` itself"):
        BanelTrainer(
            proposal,
            starts_with_b,
            args=make_config(generation_kwargs={"temperature": 0.5}),
            train_dataset=unconditional_dataset,
            processing_class=tokenizer,
        )
