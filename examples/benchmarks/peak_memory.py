"""
Benchmark: peak memory of a BanelTrainer run vs a GRPOTrainer run on the same model and batch.

Each run is a fresh process on a randomly initialised Qwen2 (offline): BanelTrainer with LoRA regions, GRPOTrainer
training the full model, and GRPOTrainer with the same LoRA configuration. Both trainers generate
`--generation_batch_size` completions of `--max_completion_length` tokens per batch and take optimizer steps of
`--batch_size`. On CUDA the figure is `torch.cuda.max_memory_allocated`; on CPU the process's peak resident memory,
printed with the increase over the process after loading the model (the part the trainer is responsible for).

    python examples/benchmarks/peak_memory.py
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import GRPOConfig, GRPOTrainer

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.testing import char_tokenizer, tiny_qwen2


RUNS = ["banel", "grpo", "grpo_lora"]


def peak_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def run(name: str, options) -> dict:
    torch.manual_seed(0)
    tokenizer = char_tokenizer("abcd")
    model = tiny_qwen2(tokenizer, hidden_size=options.hidden_size, num_layers=options.num_layers)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    after_model = peak_bytes()
    lora = LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = Dataset.from_dict({"prompt": ["a"] * 64})
    generator = torch.Generator().manual_seed(0)

    def random_reward(completions, **kwargs):  # rewards vary, so GRPO has a gradient
        return torch.randint(2, (len(completions),), generator=generator).float().tolist()

    common = dict(
        per_device_train_batch_size=options.batch_size,
        num_generations=options.num_generations,
        generation_batch_size=options.generation_batch_size,
        max_completion_length=options.max_completion_length,
        report_to="none",
        use_cpu=device == "cpu",
        bf16=False,
        disable_tqdm=True,
        seed=0,
    )
    with tempfile.TemporaryDirectory() as output_dir:
        if name == "banel":
            args = BanelConfig(
                output_dir=output_dir,
                max_reward_evaluations=options.rounds * options.generation_batch_size,
                samples_per_round=options.generation_batch_size,
                num_train_epochs=1,
                **common,
            )
            trainer = BanelTrainer(
                model, random_reward, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora
            )
        else:
            args = GRPOConfig(output_dir=output_dir, max_steps=options.rounds, **common)
            trainer = GRPOTrainer(
                model,
                random_reward,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=lora if name == "grpo_lora" else None,
            )
        trainer.train()
    return {"run": name, "device": device, "after_model": after_model, "peak": peak_bytes()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16, help="per_device_train_batch_size")
    parser.add_argument("--num_generations", type=int, default=8)
    parser.add_argument("--generation_batch_size", type=int, default=64)
    parser.add_argument("--max_completion_length", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="BaNEL rounds; GRPO optimizer steps")
    parser.add_argument("--run", choices=RUNS, help="measure one run in this process and print it as JSON")
    options = parser.parse_args()
    if options.run:
        print(json.dumps(run(options.run, options)))
        return

    results = {}
    for name in RUNS:
        command = [sys.executable, __file__, "--run", name] + [
            f"--{key}={value}" for key, value in vars(options).items() if key != "run"
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(output.strip().splitlines()[-1])
    mib = 2**20
    model = tiny_qwen2(char_tokenizer("abcd"), hidden_size=options.hidden_size, num_layers=options.num_layers)
    print(
        f"Qwen2 hidden {options.hidden_size} x {options.num_layers} layers "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), "
        f"device {results['banel']['device']}, "
        f"{options.generation_batch_size} completions of {options.max_completion_length} tokens per generation "
        f"batch, train batch {options.batch_size}"
    )
    for name, result in results.items():
        added = (result["peak"] - result["after_model"]) / mib
        print(f"{name:9s}: peak {result['peak'] / mib:8.1f} MiB, {added:8.1f} MiB above the loaded model")
    for baseline in ("grpo", "grpo_lora"):
        total = results["banel"]["peak"] / results[baseline]["peak"]
        added = (results["banel"]["peak"] - results["banel"]["after_model"]) / (
            results[baseline]["peak"] - results[baseline]["after_model"]
        )
        print(f"peak_memory banel/{baseline}: {total:.2f} (above the loaded model: {added:.2f})")


if __name__ == "__main__":
    main()
