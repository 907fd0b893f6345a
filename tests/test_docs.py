"""
The Python snippets of README.md and docs/quickstart.md run as written, on the toy task's tiny model, offline.

The snippets name a Hub model, a Hub dataset and a user's check (`run_simulation`). The test runs each snippet with
those names bound to local objects: `BanelTrainer` gets the toy proposal and its tokenizer for the model id,
`load_dataset` returns the toy task's one prompt (its BOS token), `run_simulation` is the toy task's reward,
`push_to_hub` writes the model card without uploading, and `BanelConfig` keeps every value the snippet gives but runs
a smaller budget (the snippet's own configuration is built as well, and must not collapse the acceptance at its cuts).
"""

import copy
import pathlib
import re

import pytest
import yaml
from datasets import Dataset
from trl import ModelConfig

import banel_trl
from banel_trl import BanelConfig, BanelTrainer
from banel_trl.scripts.banel import BanelScriptArguments


ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/quickstart.md")
# What the toy task needs: its strings are 6 letters long, its model has 128 positions, and a prompt it never saw
# (the snippets' own) may make it repeat a few strings: a low cap on proposals keeps such a round short.
TINY = dict(
    max_reward_evaluations=64,
    max_sampling_attempts=100,
    max_completion_length=7,
    num_generations=32,
    generation_batch_size=64,
    per_device_train_batch_size=16,
    num_train_epochs=1,
    report_to="none",
    use_cpu=True,
    disable_tqdm=True,
)


def code_blocks(document: str, language: str) -> list[str]:
    text = (ROOT / document).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


SNIPPETS = [(document, i, code) for document in DOCUMENTS for i, code in enumerate(code_blocks(document, "python"))]


def predicted_acceptance(args: BanelConfig) -> float:
    """About the share of proposals the posterior of the last round accepts, after `num_rounds - 1` regions."""
    if args.num_rounds < 2:
        return 1.0
    return (1 - args.first_region_rejection_rate) * (1 - args.target_rejection_rate) ** (args.num_rounds - 2)


def check_schedule(args: BanelConfig) -> None:
    """The schedule an example shows must not collapse the acceptance at its cuts (docs/troubleshooting.md)."""
    acceptance = predicted_acceptance(args)
    assert acceptance * args.max_sampling_attempts >= 10, (
        f"{args.num_rounds} rounds at cuts {args.first_region_rejection_rate}/{args.target_rejection_rate} leave an "
        f"acceptance of about {acceptance:.1e}, too close to 1 / max_sampling_attempts={args.max_sampling_attempts}"
    )


@pytest.fixture
def local_names(monkeypatch, tmp_path, tokenizer, make_proposal, shipped_policy):
    """Bind the names the snippets take from the Hub or from the user to the toy task's objects; return the runs."""
    monkeypatch.chdir(tmp_path)
    runs = []

    def config(**kwargs):
        check_schedule(BanelConfig(**kwargs))  # the snippet's own configuration, as written
        return BanelConfig(**{**kwargs, **TINY})

    class OfflineTrainer(BanelTrainer):
        def push_to_hub(self, *args, **kwargs):
            self.create_model_card()  # what Trainer.push_to_hub writes before it uploads

    def trainer(model, *args, **kwargs):
        assert isinstance(model, str), "the snippets name a Hub model"
        kwargs.setdefault("processing_class", tokenizer)
        runs.append(OfflineTrainer(make_proposal(), *args, **kwargs))
        return runs[-1]

    def load_dataset(path, *args, **kwargs):
        return Dataset.from_dict({"prompt": [tokenizer.bos_token], "answer": ["b"]})  # the toy's strings start at BOS

    monkeypatch.setattr(banel_trl, "BanelConfig", config)
    monkeypatch.setattr(banel_trl, "BanelTrainer", trainer)
    monkeypatch.setattr("datasets.load_dataset", load_dataset)
    return {"run_simulation": lambda completion, answer: completion.startswith(answer)}, runs


@pytest.mark.parametrize(("document", "index", "code"), SNIPPETS, ids=[f"{d}-{i}" for d, i, _ in SNIPPETS])
def test_python_snippet_runs(document, index, code, local_names):
    names, runs = local_names
    exec(compile(code, f"{document} (python block {index})", "exec"), copy.copy(names))
    for trainer in runs:
        trainer.ledger.close()
        assert 0 < trainer.num_reward_evaluations <= TINY["max_reward_evaluations"]
        assert (pathlib.Path(trainer.args.output_dir) / "banel_ledger.jsonl").exists()


def test_snippets_are_found():
    assert {document for document, _, _ in SNIPPETS} == set(DOCUMENTS)


def test_quickstart_yaml_config_is_valid():
    """The quickstart's `run.yaml` names only fields of the `banel-trl train` parser, and its schedule holds."""
    (block,) = [code for code in code_blocks("docs/quickstart.md", "yaml") if "# run.yaml" in code]
    config = yaml.safe_load(block)
    known = {cls: set(cls.__dataclass_fields__) for cls in (BanelScriptArguments, BanelConfig, ModelConfig)}
    unknown = set(config) - set().union(*known.values())
    assert not unknown, f"run.yaml has keys no parser knows: {sorted(unknown)}"
    args = BanelConfig(**{key: value for key, value in config.items() if key in known[BanelConfig]})
    check_schedule(args)
