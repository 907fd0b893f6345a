"""
Benchmark: the final sampler of a distilled addition-attack run against plain generation from `p_theta`.

Loads a run folder kept by `examples/addition_attack/run.py --keep_runs DIR` with `distill_posterior=true`, and times
`BanelPosterior.generate` (the last distilled proposal, no active region) against `generate` of the pretrained
attacker, alternated, at the same batch and generation settings. Prints each one's samples per second, the ratio of
the medians (1.0 = free) and the posterior's acceptance.

    python examples/benchmarks/distilled_sampler_speed.py RUN_DIR --batch_size 4096 --repeats 3
"""

import argparse
import statistics
import time

import torch

from banel_trl import BanelPosterior
from banel_trl.tasks import addition_attack as task


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("run_dir", help="a distilled addition-attack run's output_dir")
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)

    tokenizer = task.load_tokenizer()
    posterior = BanelPosterior.from_pretrained(options.run_dir, model=task.load_attacker(), disable_tqdm=True)
    p_theta = task.load_attacker()
    config = posterior.generation_config
    bos = torch.full((options.batch_size, 1), tokenizer.bos_token_id)
    seconds = {"posterior": [], "p_theta": []}
    for repeat in range(options.repeats):
        torch.manual_seed(repeat)
        start = time.perf_counter()
        posterior.generate(bos, generation_config=config)
        seconds["posterior"].append(time.perf_counter() - start)
        torch.manual_seed(repeat)
        start = time.perf_counter()
        p_theta.generate(input_ids=bos, attention_mask=torch.ones_like(bos), generation_config=config)
        seconds["p_theta"].append(time.perf_counter() - start)
    proposal = posterior.propose(bos, torch.ones_like(bos), config)
    print(f"proposal {posterior.proposal_adapter}, {len(posterior.active_regions)} active regions")
    for name, values in seconds.items():
        print(f"{name}: " + ", ".join(f"{options.batch_size / s:.0f}" for s in values) + " samples/s")
    ratio = statistics.median(seconds["p_theta"]) / statistics.median(seconds["posterior"])
    print(f"posterior / p_theta samples/s (medians): {ratio:.2f}; acceptance {proposal.accepted.float().mean():.3f}")


if __name__ == "__main__":
    main()
