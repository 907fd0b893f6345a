"""
Benchmark: a BaNEL round's sampling with 1 and 2 processes (issue 18), on the addition attacker.

Each run is a fresh `BanelTrainer` on the pretrained attacker that samples round 0 (`samples_per_round` evaluations
of an always-failing reward: generation only) and round 1 (the posterior cut by the region round 0 fit, at the shipped
`first_region_rejection_rate`: generation and scoring, most proposals rejected), and prints the proposals and accepted candidates per second of each round's sampling. The
runs alternate: `python` for 1 process, `accelerate launch --multi_gpu --num_processes 2` (a gloo group) for 2, one
thread each. The figures are the medians over `--repeats` pairs, and their ratio (2 processes over 1); and the time of
the whole run (both rounds' sampling and fits). Accepted candidates per second compare runs whose region differs
(each number of processes draws other candidates, so round 0 fits another region): proposals per second compare.

    python examples/benchmarks/multiprocess_sampling.py --repeats 3 --samples_per_round 500
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def worker(options) -> None:
    """One run, in each process of a launch: time both rounds' sampling; the main process prints them as JSON."""
    import torch
    from datasets import Dataset

    from banel_trl import BanelConfig, BanelTrainer
    from banel_trl.tasks import addition_attack as task

    torch.set_num_threads(1)
    tokenizer = task.load_tokenizer()
    args = BanelConfig(
        output_dir=options.output_dir, max_reward_evaluations=2 * options.samples_per_round,
        samples_per_round=options.samples_per_round, max_completion_length=2 * task.MAX_DIGITS + 4,
        generation_batch_size=options.generation_batch_size, per_device_eval_batch_size=options.generation_batch_size,
        num_train_epochs=1, first_region_rejection_rate=options.first_region_rejection_rate, report_to="none",
        disable_tqdm=True,
        logging_strategy="no", use_cpu=True, seed=0,
    )  # fmt: skip
    trainer = BanelTrainer(
        task.DEFAULT_ATTACKER_PATH, lambda completions, **kwargs: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}), processing_class=tokenizer,
    )  # fmt: skip
    rounds, collect_round = [], trainer._collect_round

    def timed_collect_round(k):
        start = time.perf_counter()
        stats = collect_round(k)
        rounds.append({"seconds": time.perf_counter() - start, **stats})
        return stats

    trainer._collect_round = timed_collect_round
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if trainer.accelerator.is_main_process:
        num_processes = trainer.accelerator.num_processes
        print("RESULT " + json.dumps({"num_processes": num_processes, "rounds": rounds, "train_seconds": seconds}))


def launch(num_processes: int, options) -> dict:
    """A fresh run with `num_processes` processes; its per-round figures."""
    with tempfile.TemporaryDirectory() as output_dir:
        script = [
            __file__,
            "--worker",
            "--output_dir",
            output_dir,
            "--samples_per_round",
            str(options.samples_per_round),
        ]
        script += ["--generation_batch_size", str(options.generation_batch_size)]
        script += ["--first_region_rejection_rate", str(options.first_region_rejection_rate)]
        if num_processes == 1:
            command = [sys.executable, *script]
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            command = [
                sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), *script,
            ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-4000:])
    return json.loads(lines[-1].removeprefix("RESULT "))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples_per_round", type=int, default=500)
    parser.add_argument("--generation_batch_size", type=int, default=512)
    parser.add_argument("--first_region_rejection_rate", type=float, default=0.995, help="the shipped default")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output_dir", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        return worker(options)

    rates = {(n, k, kind): [] for n in (1, 2) for k in (0, 1) for kind in ("proposed", "accepted")}
    train_seconds = {1: [], 2: []}
    for repeat in range(options.repeats):
        for num_processes in (1, 2):
            run = launch(num_processes, options)
            train_seconds[num_processes].append(run["train_seconds"])
            for k, figures in enumerate(run["rounds"]):
                for kind in ("proposed", "accepted"):
                    rates[num_processes, k, kind].append(figures[kind] / figures["seconds"])
                print(
                    f"repeat {repeat}, {num_processes} process(es), round {k}: {figures['proposed']} proposed, "
                    f"{figures['accepted']} accepted in {figures['seconds']:.1f} s",
                    flush=True,
                )
    for k in (0, 1):
        for kind in ("proposed", "accepted"):
            one, two = (statistics.median(rates[n, k, kind]) for n in (1, 2))
            print(f"round {k}, {kind}/s (medians): 1 process {one:.0f}, 2 processes {two:.0f}, ratio {two / one:.2f}")
    one, two = (statistics.median(train_seconds[n]) for n in (1, 2))
    print(
        f"whole run (sampling and fits), seconds (medians): 1 process {one:.1f}, 2 processes {two:.1f}, speed-up {one / two:.2f}"
    )


if __name__ == "__main__":
    main()
