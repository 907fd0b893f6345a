"""
BaNEL on two processes, launched by tests/test_multiprocess.py as
`accelerate launch --multi_gpu --num_processes 2 tests/scripts/multiprocess_run.py OUTPUT_DIR` (a gloo group).

A run of three rounds in `OUTPUT_DIR/run`: it resumes whatever a killed launch left there. With `KILL_AT=n` in the
environment, the main process kills itself (SIGKILL) when its reward function is called with `n` or more evaluations
already paid. Each rank logs the reward calls it makes and writes what it ended with (regions, adapter weights'
checksums, evaluations, batches it proposed) to `OUTPUT_DIR/rank{N}.json`, for the test to compare.
"""

import hashlib
import json
import os
import signal
import sys

import torch
from datasets import Dataset
from peft import get_peft_model_state_dict

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.region_policy import RegionPolicy
from banel_trl.testing import char_tokenizer, pretrain, starts_with_b, tiny_qwen2


torch.set_num_threads(1)
# Every round adds its region, fit data-parallel, and keeps it (rounds of 20 find few successes): what the tests'
# autouse fixture sets in the test process, which these launched processes do not share.
RegionPolicy.min_successes = 0
RegionPolicy.review_p_value = None
output_dir = sys.argv[1]
rank = int(os.environ["RANK"])


def logged_reward(prompts, completions, **kwargs):
    """The reward, logging every sample it is paid for to this rank's file (or killing the process: `KILL_AT`)."""
    calls = os.path.join(output_dir, f"calls{rank}.jsonl")
    paid = sum(1 for _ in open(calls)) if os.path.exists(calls) else 0
    if paid >= int(os.environ.get("KILL_AT", sys.maxsize)):
        os.kill(os.getpid(), signal.SIGKILL)
    with open(calls, "a") as file:
        file.writelines(
            json.dumps([prompt, completion]) + "\n" for prompt, completion in zip(prompts, completions, strict=True)
        )
    return starts_with_b(completions)


# A proposal over "abcd" strings, pretrained briefly (identically on every rank) so that runs are short.
tokenizer = char_tokenizer("abcd")
texts = ["".join("abcd"[(7 * i + 3 * j * j) % 4] for j in range(6)) for i in range(64)]
proposal = pretrain(tiny_qwen2(tokenizer), tokenizer, texts, steps=30, batch_size=32)


def run(num_rounds):
    args = BanelConfig(
        os.path.join(output_dir, "run"),
        max_reward_evaluations=60,
        samples_per_round=20,
        num_rounds=num_rounds,
        max_completion_length=7,
        num_generations=4,
        generation_batch_size=8,  # each rank proposes 8 a batch: several reward calls a round
        num_train_epochs=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        seed=0,
    )
    model = type(proposal)(proposal.config)
    model.load_state_dict(proposal.state_dict())
    trainer = BanelTrainer(
        model, logged_reward, args=args, train_dataset=Dataset.from_dict({"prompt": [""]}), processing_class=tokenizer
    )
    propose_batch, trainer.proposed_batches = trainer.sampler.propose_batch, 0

    def counted_propose_batch(*args):
        trainer.proposed_batches += 1
        return propose_batch(*args)

    trainer.sampler.propose_batch = counted_propose_batch
    trainer.train()
    return trainer


trainer = run(num_rounds=3)
weights = {
    region.adapter_name: hashlib.sha256(
        b"".join(
            t.detach().cpu().numpy().tobytes()
            for t in get_peft_model_state_dict(trainer.model, adapter_name=region.adapter_name).values()
        )
    ).hexdigest()
    for region in trainer.posterior.regions
}
result = {
    "num_processes": trainer.accelerator.num_processes,
    "distributed_type": str(trainer.accelerator.distributed_type),
    "thresholds": [region.threshold for region in trainer.posterior.regions],
    "weights": weights,
    "num_reward_evaluations": trainer.num_reward_evaluations,
    "successes": [record["completion"] for record in trainer.successes],
    "proposed_batches": trainer.proposed_batches,
}
with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as file:
    json.dump(result, file)
