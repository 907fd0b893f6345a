"""
Benchmark: scoring candidates under p_theta and K regions, one mixed-adapter forward vs one forward per region.

BanelPosterior.log_ratios scores the K + 1 copies of each candidate (base + every region's LoRA) in model-major
chunks, with PEFT's `adapter_names` where a chunk spans adapters; the alternative activates each adapter in turn and
runs K + 1 passes. Both give the same numbers; this prints their wall time on CPU. posterior_throughput.py measures
the whole sampler, early rejection included (docs/results/performance.md).

    python examples/benchmarks/region_scoring.py --regions 1 5 10 20
"""

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model

from banel_trl import BanelPosterior, RejectionRegion
from banel_trl.scoring import completion_log_probs
from banel_trl.testing import char_tokenizer, tiny_qwen2


def one_pass_per_region(model, regions, batch, scoring_batch_size):
    """The baseline: K + 1 separate passes, switching the active adapter between them."""
    columns = []
    for name in [None] + [r.adapter_name for r in regions]:
        scores = []
        for rows in torch.arange(batch["prompt_ids"].size(0)).split(scoring_batch_size):
            chunk = {key: value[rows] for key, value in batch.items()}
            if name is None:
                with model.disable_adapter():
                    scores.append(completion_log_probs(model, **chunk).sum(1))
            else:
                model.set_adapter(name)
                scores.append(completion_log_probs(model, **chunk).sum(1))
        columns.append(torch.cat(scores))
    log_probs = torch.stack(columns, dim=1)
    return log_probs[:, 1:] - log_probs[:, :1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--regions", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--candidates", type=int, default=128)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--scoring_batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()

    tokenizer = char_tokenizer("abcdefghij")
    model = tiny_qwen2(tokenizer, hidden_size=options.hidden_size, num_layers=4)
    lora = LoraConfig(r=16, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(0)
    model = get_peft_model(model, lora, adapter_name="region_0").eval()
    for k in range(1, max(options.regions)):
        model.add_adapter(f"region_{k}", lora)
    vocab = torch.arange(5, len(tokenizer))
    batch = {
        "prompt_ids": torch.full((options.candidates, 1), tokenizer.bos_token_id),
        "prompt_mask": torch.ones(options.candidates, 1, dtype=torch.long),
        "completion_ids": vocab[torch.randint(len(vocab), (options.candidates, options.length))],
        "completion_mask": torch.ones(options.candidates, options.length, dtype=torch.long),
    }
    print(
        f"{options.candidates} candidates of {options.length} tokens, Qwen2 hidden {options.hidden_size} x 4 "
        f"layers, {torch.get_num_threads()} CPU threads"
    )
    for num_regions in options.regions:
        regions = [RejectionRegion(f"region_{k}", 0.0, k) for k in range(num_regions)]
        posterior = BanelPosterior(model, regions, scoring_batch_size=options.scoring_batch_size)
        timings = {}
        with torch.no_grad():
            for name, score in [
                ("mixed-adapter batch", lambda posterior=posterior: posterior.log_ratios(**batch)),
                (
                    "one pass per region",
                    lambda regions=regions: one_pass_per_region(model, regions, batch, options.scoring_batch_size),
                ),
            ]:
                score()  # warm-up
                start = time.perf_counter()
                for _ in range(options.repeats):
                    result = score()
                timings[name] = ((time.perf_counter() - start) / options.repeats, result)
        (mixed, a), (looped, b) = timings["mixed-adapter batch"], timings["one pass per region"]
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
        print(
            f"K={num_regions:2d}: mixed-adapter batch {mixed:.3f}s, one pass per region {looped:.3f}s "
            f"({looped / mixed:.2f}x)"
        )


if __name__ == "__main__":
    main()
