"""The addition-attack experiment's quick mode runs end to end: every method produces a success rate, the report a
table and a plot. It checks the pipeline, not the size of the numbers (see docs/results/addition_attack.md)."""

import json
import os
import subprocess
import sys


EXPERIMENT = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "addition_attack")
METHODS = ["pretrained", "banel", "grpo", "rnd", "pseudo_count", "temperature", "rule_based"]
# Runs the script named by the first argument, with the rest as its arguments, in a process where every round adds its
# region and keeps it.
WITHOUT_REGION_GUARDS = (
    "import runpy, sys; from banel_trl.region_policy import RegionPolicy; "
    "RegionPolicy.min_successes, RegionPolicy.review_p_value = 0, None; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_quick_mode_runs_every_method(tmp_path):
    results = tmp_path / "results.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Quick mode, shrunk further so the test stays short. Its round 1 finds fewer successes than the
    # `RegionPolicy.min_successes` a region scored against a reference needs, and too few to keep round 0's region
    # (`RegionPolicy.review_p_value`): run without those two guards (the experiment's own process sets them, as the
    # autouse fixture of tests/conftest.py does here), the test runs the second region's path too.
    subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_REGION_GUARDS,
            os.path.join(EXPERIMENT, "run.py"),
            "--quick",
            "--results",
            str(results),
            "--budget",
            "128",
            "--eval_samples",
            "256",
            "--eval_max_proposals",
            "2048",
            "--pool_samples",
            "2000",
            "--cache_dir",
            str(tmp_path / "cache"),
            "--banel",
            "samples_per_round=64",
            "generation_batch_size=256",
            "per_device_eval_batch_size=256",
        ],
        check=True,
        env=env,
        timeout=600,
    )
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(row["method"] for row in rows) == sorted(METHODS)
    for row in rows:
        assert 0.0 <= row["success_rate"] <= 1.0 and row["samples"] > 0
        assert row["nre"] <= 128
    banel = next(row for row in rows if row["method"] == "banel")
    assert [r["round"] for r in banel["rounds"]] == [0, 1]
    assert all(0.0 <= r["rejects_failures"] <= 1.0 for r in banel["rounds"])

    plot, scaling = tmp_path / "plot.png", tmp_path / "scaling.png"
    report = subprocess.run(
        [
            sys.executable,
            os.path.join(EXPERIMENT, "report.py"),
            str(results),
            "--plot",
            str(plot),
            "--scaling_tags",
            "lora:5=",  # the quick run: untagged, at the shipped 5 epochs per fit
            "--scaling_plot",
            str(scaling),
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "| banel | 1 |" in report.stdout and plot.stat().st_size > 0
    assert f"({banel['successes']} / {banel['samples']:,}) |" in report.stdout.split("| lora | 5 | 0 |")[1]
    assert scaling.stat().st_size > 0
