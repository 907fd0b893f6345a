import importlib.resources
import importlib.util
import json
import os
from pathlib import Path

import pytest
import trl.rewards
import yaml

from banel_trl import cli
from banel_trl.ledger import LEDGER_NAME
from banel_trl.report import REPORT_NAME, REPORT_PLOT_NAME, clopper_pearson, read_run
from banel_trl.scripts.demo import DEMO_CONFIG, make_parser
from banel_trl.scripts.utils import get_reward_func
from banel_trl.testing import starts_with_b

from .conftest import LENGTH


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as file:
        return file.read(8) == PNG_SIGNATURE


@pytest.fixture
def run_yaml(tmp_path, _toy_task):
    """A `banel-trl train` config on the toy task: the proposal saved to a folder, prompts in a local JSONL."""
    tokenizer, model = _toy_task
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": ""}) + "\n")
    config = {
        "model_name_or_path": str(tmp_path / "model"),
        "datasets": [{"path": "json", "data_files": str(tmp_path / "prompts.jsonl")}],
        "reward_funcs": ["banel_trl.testing.starts_with_b"],
        "output_dir": str(tmp_path / "run"),
        "max_reward_evaluations": 1000,
        "samples_per_round": 500,
        "max_completion_length": LENGTH + 1,
        "num_generations": 32,
        "generation_batch_size": 64,
        "num_train_epochs": 2,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def trained_run(run_yaml, tmp_path):
    # The command line overrides the YAML's budget.
    assert (
        cli.main(["train", "--config", str(run_yaml), "--max_reward_evaluations", "60", "--samples_per_round", "30"])
        == 0
    )
    return tmp_path / "run"


def test_train_from_yaml_with_command_line_overrides(trained_run):
    run = read_run(str(trained_run))
    assert len(run.records) == 60  # the command line's budget, not the YAML's 1000
    assert [r.evaluations for r in run.rounds] == [30, 30]
    assert all(r.acceptance_rate is not None and r.negative_loss is not None for r in run.rounds)
    assert len(run.posterior_config["regions"]) == 2
    assert is_png(trained_run / REPORT_PLOT_NAME)


def test_report_lists_rounds_successes_and_failure_patterns(trained_run, capsys):
    assert cli.main(["report", str(trained_run), "--num_failures", "32", "--top_k", "2"]) == 0
    printed = capsys.readouterr().out
    report = (trained_run / REPORT_NAME).read_text()
    assert report in printed
    assert "## What the regions reject" in report and "### Region 0" in report and "### Region 1" in report
    run = read_run(str(trained_run))
    if run.successes:
        assert repr(run.successes[0]["completion"]) in report
    else:
        assert "None found." in report
    # Each region lists 2 failures at each end, taken from the ledger's failures.
    failures = {repr(r["completion"]) for r in run.failures}
    region_rows = [line for line in report.splitlines() if line.startswith("| '")]
    assert len(region_rows) == 4
    assert all(row.split(" | ")[0][2:] in failures for row in region_rows)
    assert is_png(trained_run / REPORT_PLOT_NAME)


def test_report_refuses_a_folder_without_ledger(tmp_path):
    with pytest.raises(FileNotFoundError, match=LEDGER_NAME):
        cli.main(["report", str(tmp_path)])


def test_reward_registry_and_import_paths():
    assert get_reward_func("banel_trl.testing.starts_with_b") is starts_with_b
    assert get_reward_func("gsm8k_exact_match")(["#### 3"], ["3"]) == [1.0]
    # TRL's reward names resolve as in `trl grpo`.
    assert get_reward_func("accuracy_reward") is trl.rewards.accuracy_reward
    assert get_reward_func("think_format_reward")([[{"role": "assistant", "content": "<think>a</think>b"}]]) == [1.0]
    reward = get_reward_func("addition_attack_no_leading_zeros")
    assert reward(completions=["007+1="]) == [0.0]
    with pytest.raises(ValueError, match="Expected one of"):
        get_reward_func("no_such_reward")
    with pytest.raises(ValueError, match="has no attribute"):
        get_reward_func("banel_trl.testing.no_such_function")


def test_train_needs_a_reward(run_yaml):
    config = yaml.safe_load(run_yaml.read_text())
    del config["reward_funcs"]
    run_yaml.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="No reward function"):
        cli.main(["train", "--config", str(run_yaml)])


def test_accelerate_launch_when_asked(run_yaml, monkeypatch):
    from accelerate.commands import launch

    launched = []
    monkeypatch.setattr(launch, "launch_command", launched.append)
    monkeypatch.delenv(cli.LAUNCHED_ENV, raising=False)
    assert cli.main(["train", "--config", str(run_yaml), "--num_processes", "2", "--seed", "3"]) == 0
    (args,) = launched
    assert args.num_processes == 2 and args.module and args.training_script == "banel_trl.cli"
    assert args.training_script_args == ["train", "--config", str(run_yaml), "--seed", "3"]
    assert os.environ[cli.LAUNCHED_ENV] == "1"  # so the launched processes train instead of launching again


def test_unknown_argument_is_an_error(run_yaml, monkeypatch):
    monkeypatch.delenv(cli.LAUNCHED_ENV, raising=False)
    with pytest.raises(ValueError, match="max_reward_evalutions"):
        cli.main(["train", "--config", str(run_yaml), "--max_reward_evalutions", "5"])


def test_demo_defaults_come_from_the_packaged_config():
    demo_args, training_args = make_parser().parse_args_and_config([])
    with importlib.resources.files("banel_trl.configs").joinpath(DEMO_CONFIG).open() as file:
        config = yaml.safe_load(file)
    settings = {**vars(demo_args), **training_args.to_dict()}
    assert config.pop("report_to") == "none" and settings["report_to"] == []  # TrainingArguments' spelling of "none"
    assert {key: settings[key] for key in config} == config


def test_demo_runs_and_writes_its_plot(tmp_path, capsys):
    result_dir = tmp_path / "demo"
    assert (
        cli.main(
            [
                "demo",
                "--output_dir",
                str(result_dir),
                "--base_eval_samples",
                "400",
                "--posterior_eval_samples",
                "64",
                "--max_reward_evaluations",
                "128",
                "--samples_per_round",
                "64",
                "--num_train_epochs",
                "1",
                "--generation_batch_size",
                "128",
                "--num_generations",
                "64",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Base model p_theta: success rate" in printed and "/400)" in printed
    assert "BaNEL posterior: success rate" in printed and "/64)" in printed
    assert f"Plot: {result_dir / REPORT_PLOT_NAME}" in printed
    assert is_png(result_dir / REPORT_PLOT_NAME)
    assert len(read_run(str(result_dir)).records) == 128


def test_clopper_pearson():
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    low, high = clopper_pearson(5, 100)
    assert low == pytest.approx(0.01643, abs=1e-4) and high == pytest.approx(0.11284, abs=1e-4)
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)


def test_configuration_reference_is_up_to_date():
    path = Path(__file__).resolve().parents[1] / "docs" / "generate_config_reference.py"
    spec = importlib.util.spec_from_file_location("generate_config_reference", path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    text = generator.render()
    assert "| `max_reward_evaluations` |" in text and "| `reward_funcs` |" in text
    assert Path(generator.PATH).read_text() == text, "run `python docs/generate_config_reference.py`"
