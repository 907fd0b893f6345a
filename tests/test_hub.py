import shutil
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi

from banel_trl import BanelPosterior, BanelTrainer, push_posterior_to_hub
from banel_trl.report import REPORT_PLOT_NAME
from banel_trl.testing import starts_with_b


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The Hub, faked: `create_repo` answers, `upload_folder` copies the folder it is given."""
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"user/{repo_id}")

    def upload_folder(self, repo_id, folder_path, ignore_patterns=None, **kwargs):
        target = tmp_path / "hub" / repo_id / str(len(uploads))
        shutil.copytree(folder_path, target, ignore=shutil.ignore_patterns(*(ignore_patterns or [])))
        uploads.append(target)
        return SimpleNamespace(repo_id=repo_id)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


@pytest.fixture
def trainer(make_proposal, make_config, tokenizer, unconditional_dataset):
    trainer = BanelTrainer(
        model=make_proposal(),
        reward_funcs=starts_with_b,
        args=make_config(max_reward_evaluations=100, samples_per_round=50, hub_model_id="user/banel-toy"),
        train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def assert_round_trips(folder, trainer, make_proposal):
    loaded = BanelPosterior.from_pretrained(str(folder), model=make_proposal())
    assert [(r.adapter_name, r.threshold, r.round) for r in loaded.regions] == [
        (r.adapter_name, r.threshold, r.round) for r in trainer.posterior.regions
    ]
    batch = trainer.fitter.collator(
        [
            {"prompt_ids": [trainer.processing_class.bos_token_id], "completion_ids": r["completion_ids"]}
            for r in trainer.ledger.records[:16]
        ]
    )
    assert loaded.log_ratios(**batch).allclose(trainer.posterior.log_ratios(**batch), atol=1e-5)


def test_trainer_push_to_hub(trainer, hub, make_proposal):
    trainer.push_to_hub()
    (folder,) = hub
    assert folder.parts[-3:-1] == ("user", "banel-toy")
    assert_round_trips(folder, trainer, make_proposal)
    card = (folder / "README.md").read_text()
    assert "BaNEL" in card and "https://huggingface.co/papers/2510.09596" in card and "@article{banel2025" in card
    assert "| Training reward evaluations (NREs) | 100 of 100 |" in card
    assert f"| Successes found (never trained on) | {len(trainer.successes)} |" in card
    assert "Success rate, round 0 (base model)" in card and "Success rate, round 1 (posterior)" in card
    assert f"![NREs, successes, acceptance rate and negative loss per round]({REPORT_PLOT_NAME})" in card
    assert (folder / REPORT_PLOT_NAME).read_bytes()[:4] == b"\x89PNG"
    assert "tags:" in card and "- banel" in card and "- trl" in card


def test_posterior_push_to_hub(trainer, hub, make_proposal):
    push_posterior_to_hub(
        trainer.posterior, "user/posterior", tokenizer=trainer.processing_class, run_dir=trainer.args.output_dir
    )
    (folder,) = hub
    assert_round_trips(folder, trainer, make_proposal)
    card = (folder / "README.md").read_text()
    assert "| Rejection regions | 2 |" in card and "| Training reward evaluations (NREs) | 100 |" in card
    assert f"]({REPORT_PLOT_NAME})" in card and (folder / REPORT_PLOT_NAME).is_file()
    assert (folder / "tokenizer_config.json").is_file()


def test_posterior_push_to_hub_alone(trainer, hub, make_proposal):
    push_posterior_to_hub(trainer.posterior, "user/posterior")
    (folder,) = hub
    assert_round_trips(folder, trainer, make_proposal)
    card = (folder / "README.md").read_text()
    assert "| Rejection regions | 2 |" in card and "reward evaluations (NREs)" not in card
    with pytest.raises(FileNotFoundError, match="banel_ledger.jsonl"):
        push_posterior_to_hub(trainer.posterior, "user/posterior", run_dir=str(folder))
