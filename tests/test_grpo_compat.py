"""TRL's own GRPO scripts run with BanelTrainer, changed by the import and class names only (issue 16)."""

import json
import os
import subprocess
import sys

import pytest
import trl
import yaml

from banel_trl import cli
from banel_trl.ledger import LEDGER_NAME
from banel_trl.testing import char_tokenizer, tiny_qwen2


def banel_version_of_trl_grpo_script() -> str:
    """TRL's installed `trl/scripts/grpo.py` with its trainer and config imports and names switched to BaNEL's."""
    with open(os.path.join(os.path.dirname(trl.__file__), "scripts", "grpo.py")) as file:
        source = file.read()
    imports = {
        "from trl import GRPOTrainer, get_dataset, get_peft_config, get_quantization_config": (
            "from trl import get_dataset, get_peft_config, get_quantization_config\n    from banel_trl import BanelTrainer"
        ),
        "from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig, TrlParser": (
            "from trl import DatasetMixtureConfig, ModelConfig, TrlParser\n    from banel_trl import BanelConfig"
        ),
    }
    for line, replacement in imports.items():
        assert line in source, f"TRL's grpo.py changed: {line!r} is gone"
        source = source.replace(line, replacement)
    return source.replace("GRPOTrainer", "BanelTrainer").replace("GRPOConfig", "BanelConfig")


def test_trl_grpo_script_runs_with_banel_trainer(tmp_path):
    tokenizer = char_tokenizer("abcd")
    tiny_qwen2(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "train.jsonl", "w") as file:
        file.writelines(json.dumps({"prompt": prompt}) + "\n" for prompt in "abab")
    script = tmp_path / "banel_grpo.py"
    script.write_text(banel_version_of_trl_grpo_script())

    command = [
        sys.executable, str(script), "--model_name_or_path", "model", "--dataset_name", "data",
        "--reward_funcs", "banel_trl.testing.starts_with_b", "--output_dir", "out", "--max_reward_evaluations", "40",
        "--samples_per_round", "20", "--max_completion_length", "6", "--num_generations", "8",
        "--generation_batch_size", "16", "--num_train_epochs", "1", "--use_cpu", "--report_to", "none",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training completed" in result.stdout and "Model saved to out" in result.stdout
    with open(tmp_path / "out" / LEDGER_NAME) as file:
        paid = [line for line in map(json.loads, file) if "index" in line]
    assert 0 < len(paid) <= 40  # within the budget


def test_banel_cli_runs_a_grpo_yaml_and_names_every_setting_it_ignores_or_refuses(tmp_path, monkeypatch, caplog):
    tokenizer = char_tokenizer("abcd")
    tiny_qwen2(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "data").mkdir()
    with open(tmp_path / "data" / "train.jsonl", "w") as file:
        file.writelines(json.dumps({"prompt": prompt}) + "\n" for prompt in "abab")
    config = {
        "model_name_or_path": "model", "dataset_name": "data", "reward_funcs": ["banel_trl.testing.starts_with_b"],
        "output_dir": "out", "max_reward_evaluations": 20, "samples_per_round": 20, "max_completion_length": 6,
        "num_generations": 8, "generation_batch_size": 16, "num_train_epochs": 1, "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "write_report": False,
        # GRPO's own settings, meaningless for BaNEL: ignored with one warning (`use_vllm` is BaNEL's too).
        "beta": 0.04, "loss_type": "dapo", "use_vllm": False, "scale_rewards": "group", "epsilon": 0.2,
        "vllm_enable_sleep_mode": False,
    }  # fmt: skip
    (tmp_path / "grpo_config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.LAUNCHED_ENV, raising=False)
    with caplog.at_level("WARNING", logger="banel_trl.cli"):
        assert cli.main(["train", "--config", "grpo_config.yaml"]) == 0
    assert (
        "Ignoring GRPO-only settings that BaNEL has no use for: beta, epsilon, loss_type, scale_rewards, "
        "vllm_enable_sleep_mode" in (caplog.text)
    )
    assert os.path.isfile(tmp_path / "out" / LEDGER_NAME)

    (tmp_path / "grpo_config.yaml").write_text(yaml.safe_dump({**config, "output_dir": "out2", "foo": 1, "bar": 2}))
    with pytest.raises(ValueError, match=r"Unknown arguments \['--bar', '--foo'\]"):
        cli.main(["train", "--config", "grpo_config.yaml"])
