"""
Benchmark: do BaNEL's shipped defaults ever end below the pretrained success rate? (toy and checksum tasks, CPU)

Each seed builds its task's proposal offline (`banel_trl.testing`), runs `BanelTrainer` at the shipped defaults (the
7,500-evaluation budget in two rounds, the calibrated cuts, retraction and relaxation; only the batch sizes are raised,
which changes the random stream, not the method), then draws `--eval_proposals` fresh candidates from `p_theta`: the
pretrained success rate is measured on all of them, the posterior's on those it accepts (the same draws, so the ratio
carries less noise than two separate samples); a posterior that accepts little is drawn on until its accepted draws
hold `--min_successes` successes (or `--max_eval_proposals` are drawn).

- toy: 10-letter strings over "abcd"; a success starts with "b" (~4% of `p_theta`'s strings): successes look unlike
  the failures.
- checksum: 10-letter strings from a random Markov chain over "abcdefgh"; a success is a string whose
  position-weighted letter sum is 0 modulo 50 (~2%): successes look like ordinary samples, no region can find them,
  and the defaults must keep the pretrained rate.
- likely: the checksum task's proposal; a success is one of its most likely strings (log-likelihood in the top 2% of
  its own samples): the worst case for a cut that rejects what the proposal finds likely.
- likely_rare: the same with the top 0.5%: as few successes per round (~19 of 3,750) as a hard task gives, too few
  for a round to tell by counting how many a cut rejects.

    python examples/benchmarks/defaults_never_lose.py --tasks toy checksum --seeds 0 1 2 3 4 --results R.jsonl
"""

import argparse
import copy
import json
import math
import tempfile
import time

import torch
import transformers
from datasets import Dataset

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.data import NegativesCollator
from banel_trl.scoring import completion_log_probs
from banel_trl.testing import checksum_is_zero, checksum_proposal, rare_b_proposal, starts_with_b


LENGTH = 10


class MostLikely:
    """
    The likely task's reward: a completion succeeds when its log-likelihood under the (frozen) proposal is in the top
    `rate` of the proposal's own samples, so successes are the proposal's most typical strings.
    """

    __name__ = "most_likely"

    def __init__(self, model, tokenizer, rate: float = 0.02, num_samples: int = 20_000, seed: int = 0):
        self.model, self.tokenizer = copy.deepcopy(model).eval(), tokenizer
        torch.manual_seed(seed)
        input_ids = torch.full((num_samples, 1), tokenizer.bos_token_id)
        with torch.no_grad():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, max_new_tokens=LENGTH + 1,
                top_k=0, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        texts = tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True)
        self.threshold = torch.quantile(self.log_likelihoods(texts), 1.0 - rate).item()

    @torch.no_grad()
    def log_likelihoods(self, completions: list[str]) -> torch.Tensor:
        """`log p_theta` of each completion, its end of sequence included."""
        tokenizer = self.tokenizer
        examples = [
            {
                "prompt_ids": [tokenizer.bos_token_id],
                "completion_ids": tokenizer("".join(text.split()))["input_ids"] + [tokenizer.eos_token_id],
            }
            for text in completions
        ]
        return completion_log_probs(self.model, **NegativesCollator(tokenizer.pad_token_id)(examples)).sum(dim=1)

    def __call__(self, completions, **kwargs):
        return [float(value >= self.threshold) for value in self.log_likelihoods(completions).tolist()]


def likely_task(seed: int, rate: float = 0.02):
    tokenizer, model = checksum_proposal(seed=seed, length=LENGTH)
    return tokenizer, model, MostLikely(model, tokenizer, rate, seed=seed)


TASKS = {
    "toy": lambda seed: (*rare_b_proposal(seed=seed, length=LENGTH), starts_with_b),
    "checksum": lambda seed: (*checksum_proposal(seed=seed, length=LENGTH), checksum_is_zero),
    "likely": likely_task,
    "likely_rare": lambda seed: likely_task(seed, rate=0.005),
}


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def success_rates(trainer: BanelTrainer, reward, options, batch_size: int, seed: int) -> dict:
    """
    Success rates of `p_theta` (every draw) and of the posterior (the draws it accepts), from the same draws: at least
    `options.eval_proposals`, and more until the posterior's draws hold `options.min_successes` successes or
    `options.max_eval_proposals` are drawn.
    """
    posterior, tokenizer = trainer.posterior, trainer.processing_class
    torch.manual_seed(seed)
    counts = {"proposed": 0, "successes": 0, "accepted": 0, "accepted_successes": 0}
    while counts["proposed"] < options.eval_proposals or (
        counts["accepted_successes"] < options.min_successes and counts["proposed"] < options.max_eval_proposals
    ):
        input_ids = torch.full((batch_size, 1), tokenizer.bos_token_id)
        proposal = posterior.propose(input_ids, torch.ones_like(input_ids), trainer.generation_config)
        texts = tokenizer.batch_decode(proposal.completion_ids, skip_special_tokens=True)
        success = torch.tensor(reward(texts)).bool()
        counts["proposed"] += batch_size
        counts["successes"] += int(success.sum())
        counts["accepted"] += int(proposal.accepted.sum())
        counts["accepted_successes"] += int((success & proposal.accepted).sum())
    pretrained = counts["successes"] / counts["proposed"]
    rate = counts["accepted_successes"] / max(counts["accepted"], 1)
    # Standard error of the log ratio, each rate binomial (the shared draws make it conservative).
    spread = math.sqrt(1 / max(counts["accepted_successes"], 1) + 1 / max(counts["successes"], 1))
    return counts | {"pretrained": pretrained, "posterior": rate, "ratio": rate / pretrained, "log_ratio_se": spread}


def run(task: str, seed: int, options) -> dict:
    tokenizer, model, reward = TASKS[task](seed)
    start = time.time()
    with tempfile.TemporaryDirectory() as output_dir:
        settings = dict(generation_batch_size=4096, per_device_eval_batch_size=4096) | dict(options.banel)
        config = BanelConfig(
            output_dir=output_dir,
            seed=seed,
            max_completion_length=LENGTH + 1,
            report_to="none",
            disable_tqdm=True,
            logging_strategy="no",
            use_cpu=True,
            **settings,
        )
        trainer = BanelTrainer(
            model, reward, args=config, train_dataset=Dataset.from_dict({"prompt": [""]}), processing_class=tokenizer
        )
        trainer.train()
        train_seconds = time.time() - start
        rates = success_rates(trainer, reward, options, 4096, seed + 1000)
    regions = ["retracted" if r.retracted else "relaxed" if r.relaxed else "as_fit" for r in trainer.posterior.regions]
    return {
        "task": task,
        "seed": seed,
        "settings": settings,
        "nre": trainer.num_reward_evaluations,
        "training_successes": len(trainer.successes),
        "regions": regions,
        **rates,
        "train_seconds": train_seconds,
        "seconds": time.time() - start,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--eval_proposals", type=int, default=400_000, help="fresh p_theta draws per evaluation")
    parser.add_argument("--min_successes", type=int, default=20, help="draw on until the posterior's hold this many")
    parser.add_argument("--max_eval_proposals", type=int, default=4_000_000, help="but never more draws than this")
    parser.add_argument("--results", help="append one JSON line per run to this file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--banel", nargs="*", default=[], help="BanelConfig overrides, key=value (JSON values)")
    options = parser.parse_args()
    options.banel = [(key, parse_value(value)) for key, value in (item.split("=", 1) for item in options.banel)]
    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    for task in options.tasks:
        for seed in options.seeds:
            result = run(task, seed, options)
            print(
                f"{task} seed {seed}: posterior {result['posterior']:.4f} ({result['accepted_successes']}/"
                f"{result['accepted']}) vs pretrained {result['pretrained']:.4f} ({result['successes']}/"
                f"{result['proposed']}): {result['ratio']:.2f}x, regions {result['regions']}, "
                f"{result['seconds']:.0f} s",
                flush=True,
            )
            if options.results:
                with open(options.results, "a") as file:
                    file.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
