import importlib.util
import json
import string
from decimal import Decimal
from pathlib import Path

import pytest

from banel_trl.tasks.gsm8k import extract_final_number, gsm8k_exact_match, normalize_number
from banel_trl.testing import char_tokenizer, tiny_qwen2


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gsm8k" / "banel_gsm8k.py"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48 clips in April and 24 in May.\n#### 72", "72"),
        ("so the answer is \\boxed{42}.", "42"),
        ("It costs $1,200 in total.", "1200"),
        ("1200.00", "1200"),
        ("She lost 3 and then -5 more: #### -5", "-5"),
        ("#### 1,000,000", "1000000"),
        ("First 3, then 10 more, so 13.", "13"),
        ("#### 7 but later 9", "7"),  # GSM8K's marker wins over later numbers
        ("no number here", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == (None if expected is None else Decimal(expected))


def test_normalize_number():
    assert normalize_number("$1,200") == normalize_number("1200.00") == normalize_number("1200") == Decimal(1200)
    assert normalize_number("12.5") != normalize_number("125")
    assert normalize_number("abc") is None


def test_exact_match_reward_standard_and_conversational():
    answers = ["He pays 600 + 600 = 1200.\n#### 1200"] * 4
    completions = ["The total is $1,200.", "\\boxed{1200.00}", "#### 1201", "I do not know."]
    assert gsm8k_exact_match(completions, answers) == [1.0, 1.0, 0.0, 0.0]
    conversational = [[{"role": "assistant", "content": c}] for c in completions]
    assert gsm8k_exact_match(conversational, answers) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="holds no number"):
        gsm8k_exact_match(["1"], ["no answer"])


def test_gsm8k_example_offline(tmp_path, capsys):
    """The whole path with a tiny Qwen2 and chat template saved locally, on a GSM8K-format JSONL we wrote."""
    tokenizer = char_tokenizer(string.ascii_letters + string.digits + " .,$#+-=?\n")
    model = tiny_qwen2(tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    problems = [
        {"question": "Tom has 3 apples and buys 4 more. How many apples?", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "A pen costs $2. What do 5 pens cost?", "answer": "5 * 2 = 10\n#### 10"},
        {"question": "Sam reads 12 pages a day for 100 days. Pages?", "answer": "12 * 100 = 1200\n#### 1,200"},
    ]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))

    spec = importlib.util.spec_from_file_location("banel_gsm8k", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    output_dir = tmp_path / "out"
    arguments = example.make_parser().parse_args_and_config(
        [
            "--config",
            str(EXAMPLE.parent / "qwen2.5-0.5b-instruct.yaml"),  # the shipped config, made tiny below
            "--model_name_or_path",
            str(tmp_path / "model"),
            "--dtype",
            "float32",
            "--bf16",
            "false",
            "--dataset_name",
            str(data),
            "--num_candidate_questions",
            "3",
            "--selection_samples",
            "4",
            "--max_base_success_rate",
            "0.5",
            "--num_questions",
            "2",
            "--eval_samples",
            "8",
            "--max_reward_evaluations",
            "8",
            "--samples_per_round",
            "4",
            "--num_generations",
            "4",
            "--generation_batch_size",
            "8",
            "--max_completion_length",
            "6",
            "--num_train_epochs",
            "1",
            "--use_cpu",
            "true",
            "--output_dir",
            str(output_dir),
            "--logging_steps",
            "1000",
            "--disable_tqdm",
            "true",
        ]
    )
    results = example.main(*arguments)

    assert len(results) == 2  # a random tiny model solves nothing: every question is hard, 2 are run
    saved = json.loads((output_dir / "gsm8k_results.json").read_text())
    assert [r["index"] for r in saved] == [r["index"] for r in results]
    for result in saved:
        # Round 0 samples the model itself and spends its 4; round 1 may end early, within `max_sampling_attempts`.
        assert 4 <= result["num_reward_evaluations"] <= 8
        assert result["selection"]["samples"] == 4 and result["selection"]["successes"] <= 1
        curve = result["curve"]
        assert [p["round"] for p in curve] == [-1, 0, 1]  # the base model, then after each round
        # A posterior of a tiny model, cut by a region calibrated on one held-out failure, may accept too little to be
        # sampled within `max_sampling_attempts`: the example logs it and keeps the best so far.
        assert curve[0]["num_samples"] == 8
        for point in curve:
            low, high = point["best_ci"]
            assert 0.0 <= low <= point["best_success_rate"] <= high <= 1.0 and point["num_samples"] in (0, 8)
        assert all(a["best_success_rate"] <= b["best_success_rate"] for a, b in zip(curve, curve[1:], strict=False))
        assert (output_dir / f"question_{result['index']}" / "banel_posterior.json").is_file()
    assert (output_dir / "gsm8k_results.png").read_bytes()[:4] == b"\x89PNG"
    assert "best posterior success rate" in capsys.readouterr().out
