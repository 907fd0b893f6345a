"""
BaNEL on two processes, launched by tests/test_multiprocess.py as
`accelerate launch --num_processes 2 --cpu tests/scripts/multiprocess_run.py OUTPUT_DIR`.

A first trainer runs two of the three rounds; a second one, on the same `output_dir`, resumes and runs the third. Each
rank logs the reward calls it makes and writes what it ended with (regions, adapter weights' checksums, evaluations) to
`OUTPUT_DIR/rank{N}.json`, for the test to compare.
"""

import hashlib
import json
import os
import sys

import torch
from datasets import Dataset
from peft import get_peft_model_state_dict

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.testing import char_tokenizer, pretrain, starts_with_b, tiny_qwen2


torch.set_num_threads(1)
output_dir = sys.argv[1]
rank = int(os.environ["RANK"])


def logged_reward(prompts, completions, **kwargs):
    """The reward, logging every sample it is paid for to this rank's file."""
    with open(os.path.join(output_dir, f"calls{rank}.jsonl"), "a") as file:
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
        num_generations=16,
        generation_batch_size=32,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        seed=0,
        reference_min_successes=0,  # every round adds its region, fit data-parallel
    )
    model = type(proposal)(proposal.config)
    model.load_state_dict(proposal.state_dict())
    trainer = BanelTrainer(
        model, logged_reward, args=args, train_dataset=Dataset.from_dict({"prompt": [""]}), processing_class=tokenizer
    )
    trainer.train()
    return trainer


run(num_rounds=2)
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
}
with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as file:
    json.dump(result, file)
