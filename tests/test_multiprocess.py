import json
import os
import socket
import subprocess
import sys

from banel_trl.ledger import LEDGER_NAME, sample_key


SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "multiprocess_run.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(output_dir, **env) -> subprocess.CompletedProcess:
    """Run tests/scripts/multiprocess_run.py on two processes, writing into `output_dir`."""
    # On a CPU-only machine `--multi_gpu` starts the processes with torchrun; `use_cpu=True` makes them a gloo
    # (MULTI_CPU) group. (`--cpu` with several processes would need Intel's mpirun.)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), SCRIPT,
        str(output_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_propose_one_pays_and_a_killed_run_resumes_to_the_uninterrupted_state(tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    for output_dir in (uninterrupted, killed):
        output_dir.mkdir()
    result = launch(uninterrupted)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # The main process kills itself in round 1, with 25 of the 60 evaluations paid; the launch fails; again, it resumes.
    assert launch(killed, KILL_AT="25").returncode != 0
    assert not (killed / "rank0.json").exists()
    result = launch(killed)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    ranks = [json.loads((killed / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["num_processes"] == 2 and ranks[0]["distributed_type"] == "DistributedType.MULTI_CPU"
    assert ranks[0]["proposed_batches"] > 0 and ranks[1]["proposed_batches"] > 0  # both ranks sampled
    # Identical regions on every rank: the same thresholds and, after data-parallel fits, the same adapter weights.
    del ranks[0]["proposed_batches"], ranks[1]["proposed_batches"]
    assert ranks[0] == ranks[1]
    assert len(ranks[0]["thresholds"]) == 3

    # One global budget, paid by the main process only, each candidate once, over the killed launch and the resume.
    assert not (killed / "calls1.jsonl").exists(), "only the main process calls the reward functions"
    calls = [tuple(json.loads(line)) for line in (killed / "calls0.jsonl").read_text().splitlines()]
    assert len(calls) == len(set(calls)) == ranks[0]["num_reward_evaluations"] == 60

    # One ledger, written once: every paid evaluation appears exactly once, in order.
    lines = [json.loads(line) for line in (killed / "run" / LEDGER_NAME).read_text().splitlines()]
    records = [line for line in lines if "index" in line]
    assert [r["index"] for r in records] == list(range(60))
    assert sorted(sample_key(r["prompt"], r["completion"]) for r in records) == sorted(
        sample_key(prompt, completion) for prompt, completion in calls
    )
    assert sorted(line["round"] for line in lines if "end" in line) == [0, 1, 2]

    # The same final state as the run that was never killed: ledger, thresholds and adapter weights.
    reference = json.loads((uninterrupted / "rank0.json").read_text())
    del reference["proposed_batches"]
    assert ranks[0] == reference
    assert (killed / "run" / LEDGER_NAME).read_bytes() == (uninterrupted / "run" / LEDGER_NAME).read_bytes()
