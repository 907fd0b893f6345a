import copy

import pytest
import torch
from datasets import Dataset

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.region_policy import RegionPolicy
from banel_trl.testing import rare_b_proposal


# The toy task: 6-character strings over "abcd". The proposal learned that strings rarely start with "b" (~2%);
# a success is a string that does. Successes are thus rare and structurally unlike the common failures.
LENGTH = 6
# The region policy's shipped constants, read before any fixture changes them.
SHIPPED_POLICY = {"min_successes": RegionPolicy.min_successes, "review_p_value": RegionPolicy.review_p_value}


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    torch.set_num_threads(1)  # 2-core CI machines: threads only contend


@pytest.fixture(autouse=True)
def every_region_added_and_kept(monkeypatch):
    """
    Toy rounds find ~1 success in 50: without this, from round 1 on a round adds no region (fewer than
    `RegionPolicy.min_successes` successes) and the next round's review retracts or relaxes the previous one. Every
    round adds its region and keeps it, so that tests see the regions' mechanics; tests of the evidence that adds,
    keeps, relaxes or retracts a region (tests/test_retraction.py) set the policy's constants back with monkeypatch.
    """
    monkeypatch.setattr(RegionPolicy, "min_successes", 0)
    monkeypatch.setattr(RegionPolicy, "review_p_value", None)


@pytest.fixture
def shipped_policy(every_region_added_and_kept, monkeypatch):
    """The region policy's shipped constants (`min_successes`, `review_p_value`), for the tests of the evidence."""
    for name, value in SHIPPED_POLICY.items():
        monkeypatch.setattr(RegionPolicy, name, value)


@pytest.fixture(scope="session")
def _toy_task():
    return rare_b_proposal(seed=0, length=LENGTH)


@pytest.fixture(scope="session")
def tokenizer(_toy_task):
    return _toy_task[0]


@pytest.fixture(scope="session")
def _toy_proposal(_toy_task):
    return _toy_task[1]


@pytest.fixture
def make_proposal(_toy_proposal):
    """Fresh copies of the pretrained toy proposal p_theta: a trainer adds its adapters to the model it is given."""
    return lambda: copy.deepcopy(_toy_proposal)


@pytest.fixture
def proposal(make_proposal):
    return make_proposal()


@pytest.fixture
def unconditional_dataset():
    return Dataset.from_dict({"prompt": [""]})


@pytest.fixture
def train_toy(make_proposal, tokenizer, unconditional_dataset, caplog):
    """
    Run `BanelTrainer(args=args)` with `reward` on a fresh copy of the toy proposal, capturing the warnings of
    `logger`, and close its ledger; returns the trainer.
    """

    def train(args, reward, logger="banel_trl"):
        trainer = BanelTrainer(
            make_proposal(), reward, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
        )
        with caplog.at_level("WARNING", logger=logger):
            trainer.train()
        trainer.ledger.close()
        return trainer

    return train


@pytest.fixture
def make_config(tmp_path):
    def make(**overrides):
        settings = dict(
            output_dir=str(tmp_path / "run"),
            max_reward_evaluations=150,
            samples_per_round=50,
            max_completion_length=LENGTH + 1,
            num_generations=32,
            generation_batch_size=64,
            num_train_epochs=3,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=1000,
            seed=0,
        )
        return BanelConfig(**{**settings, **overrides})

    return make


def sample_texts(generate, tokenizer, num_samples, seed=0):
    """Draw `num_samples` unconditional completions with `generate` and decode them."""
    torch.manual_seed(seed)
    input_ids = torch.full((num_samples, 1), tokenizer.bos_token_id)
    sequences = generate(input_ids=input_ids, max_new_tokens=LENGTH + 1, do_sample=True, top_k=0)
    return tokenizer.batch_decode(sequences[:, 1:], skip_special_tokens=True)
