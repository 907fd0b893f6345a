"""
Minimal BaNEL run, end to end, on a tiny offline model (CPU, about half a minute).

The proposal p_theta is a small Qwen2 over the letters "abcd" that rarely starts a string with "b" (~2%). The reward
pays 1 for a string that does. BaNEL never trains on those successes: it learns what the failures share and rejects
it, and its posterior finds successes several times more often than p_theta.

    python examples/minimal.py

With a real model, only the model and the data change, e.g. `BanelTrainer(model="Qwen/Qwen2.5-0.5B-Instruct", ...)`
and a dataset with a "prompt" column.
"""

import argparse

import torch
from datasets import Dataset

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.testing import rare_b_proposal, starts_with_b


def success_rate(generate, tokenizer, num_samples=3000):
    input_ids = torch.full((num_samples, 1), tokenizer.bos_token_id)
    sequences = generate(input_ids=input_ids, max_new_tokens=7, do_sample=True, top_k=0)
    texts = tokenizer.batch_decode(sequences[:, 1:], skip_special_tokens=True)
    return sum(starts_with_b(texts)) / num_samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--output_dir", default="runs/minimal")
    parser.add_argument("--max_reward_evaluations", type=int, default=600)
    options = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a model this small runs fastest on one thread

    tokenizer, model = rare_b_proposal(seed=0)  # ~2% of its strings start with "b"; those are the successes
    base_rate = success_rate(model.generate, tokenizer)

    args = BanelConfig(
        output_dir=options.output_dir,
        max_reward_evaluations=options.max_reward_evaluations,
        samples_per_round=200,
        max_completion_length=7,
        num_generations=32,
        generation_batch_size=64,
        report_to="none",
        use_cpu=True,
    )
    # An unconditional generator: one empty prompt, generation starts at the BOS token.
    dataset = Dataset.from_dict({"prompt": [""]})
    trainer = BanelTrainer(model, starts_with_b, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()

    posterior_rate = success_rate(trainer.posterior.generate, tokenizer)
    print(f"reward evaluations used: {trainer.num_reward_evaluations} of {args.max_reward_evaluations}")
    print(f"successes found while training (never trained on): {len(trainer.successes)}")
    print(f"success rate of p_theta:   {base_rate:.4f}")
    print(
        f"success rate of posterior: {posterior_rate:.4f} ({posterior_rate / base_rate:.1f}x) "
        f"with {len(trainer.posterior.regions)} regions, saved to {args.output_dir}"
    )


if __name__ == "__main__":
    main()
