"""
Benchmark: distil the posterior into one adapter (the paper's Algorithm 2) vs sampling it exactly by rejection.

On the toy task (6-letter strings over "abcd", success = starts with "b", ~2% under p_theta), a BanelTrainer run
builds the posterior; then a fresh LoRA adapter is fit by maximum likelihood on `--distill_samples` accepted samples
of it. Distilled sampling is plain generation (acceptance 1, no scoring) but only approximates the posterior. Prints
the success rate and samples per second of p_theta, the exact posterior and the distilled adapter, on
`--eval_samples` fresh samples each.

    python examples/benchmarks/posterior_distillation.py
"""

import argparse
import tempfile
import time

import torch
from datasets import Dataset

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.data import NegativesCollator
from banel_trl.scoring import completion_log_probs
from banel_trl.testing import rare_b_proposal, starts_with_b


LENGTH = 6


def sample(generate, tokenizer, num_samples):
    """`num_samples` unconditional completions from `generate`, their success rate, and samples per second."""
    input_ids = torch.full((num_samples, 1), tokenizer.bos_token_id)
    start = time.perf_counter()
    sequences = generate(input_ids=input_ids, max_new_tokens=LENGTH + 1, do_sample=True, top_k=0)
    seconds = time.perf_counter() - start
    completions = [[t for t in row.tolist() if t != tokenizer.pad_token_id] for row in sequences[:, 1:]]
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return completions, sum(starts_with_b(texts)) / num_samples, num_samples / seconds


def distil(model, tokenizer, completions, epochs, batch_size, learning_rate):
    """Fit the model's active adapter by maximum likelihood on the posterior's samples."""
    collate = NegativesCollator(tokenizer.pad_token_id)
    examples = [{"prompt_ids": [tokenizer.bos_token_id], "completion_ids": ids} for ids in completions]
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
    model.train()
    for _ in range(epochs):
        for rows in torch.randperm(len(examples)).split(batch_size):
            batch = collate([examples[i] for i in rows.tolist()])
            loss = -completion_log_probs(model, **batch).sum() / batch["completion_mask"].sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--budget", type=int, default=1000, help="reward evaluations of the BaNEL run")
    parser.add_argument("--distill_samples", type=int, default=2000)
    parser.add_argument("--eval_samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    torch.manual_seed(options.seed)

    tokenizer, model = rare_b_proposal(seed=options.seed, length=LENGTH)
    _, base_rate, base_speed = sample(model.generate, tokenizer, options.eval_samples)
    with tempfile.TemporaryDirectory() as output_dir:
        args = BanelConfig(
            output_dir=output_dir,
            max_reward_evaluations=options.budget,
            samples_per_round=200,
            max_completion_length=LENGTH + 1,
            num_generations=32,
            generation_batch_size=64,
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            seed=options.seed,
        )
        trainer = BanelTrainer(
            model,
            starts_with_b,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": [""]}),
            processing_class=tokenizer,
        )
        trainer.train()
    posterior = trainer.posterior
    posterior.max_sampling_attempts = 10_000
    _, exact_rate, exact_speed = sample(posterior.generate, tokenizer, options.eval_samples)

    start = time.perf_counter()
    completions, _, _ = sample(posterior.generate, tokenizer, options.distill_samples)
    trainer.model.add_adapter("distilled", trainer.peft_config)
    trainer.model.set_adapter("distilled")
    distil(trainer.model, tokenizer, completions, options.epochs, args.per_device_train_batch_size, args.learning_rate)
    distil_seconds = time.perf_counter() - start
    _, distilled_rate, distilled_speed = sample(trainer.model.generate, tokenizer, options.eval_samples)

    print(
        f"toy task, {options.budget} NREs, {len(posterior.regions)} regions; distilled on {options.distill_samples} "
        f"posterior samples, {options.epochs} epochs ({distil_seconds:.1f}s); {torch.get_num_threads()} thread(s)"
    )
    for name, rate, speed in [
        ("p_theta", base_rate, base_speed),
        ("exact posterior", exact_rate, exact_speed),
        ("distilled adapter", distilled_rate, distilled_speed),
    ]:
        print(f"{name:17s}: success rate {rate:.4f} ({rate / base_rate:5.1f}x p_theta), {speed:8.1f} samples/s")


if __name__ == "__main__":
    main()
