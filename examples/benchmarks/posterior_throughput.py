"""
Benchmark: throughput of the BaNEL posterior's rejection sampler, and the cost of scoring K regions.

On the shipped addition-attack attacker (a 133k-parameter Qwen2, unconditional: the prompt is BOS) with K random LoRA
regions whose thresholds are calibrated in turn, as in training (region k rejects `--rejection_rate` of the
candidates regions 0..k-1 accept), it prints for each K:

- accepted samples per second of `BanelPosterior.propose` (what the trainer calls), plain `model.generate` samples
  per second at the same batch size, the acceptance rate, and the posterior efficiency
  = accepted/s / (plain samples/s x acceptance): 1.0 means scoring is free and only rejection costs;
- scoring one batch of candidates with all regions in mixed-adapter forwards, with one pass per region, and with
  early rejection (`stop_at_rejection=True`: a candidate rejected by a region is not scored under the later ones),
  each including `p_theta`'s forward pass, which `propose` takes from generation's logits instead unless
  `--score_p_theta_afresh`.

The last line is `posterior_efficiency K=10: <number>`. Timings interleave plain and posterior batches, so load
from other processes hits both alike.

    python examples/benchmarks/posterior_throughput.py --regions 1 5 10 20
"""

import argparse
import time

import torch
from peft import LoraConfig, get_peft_model
from region_scoring import one_pass_per_region
from transformers import GenerationConfig

from banel_trl import BanelPosterior, RejectionRegion
from banel_trl import posterior as posterior_module
from banel_trl.tasks.addition_attack import load_attacker


def calibrated_regions(posterior, num_regions, rejection_rate, input_ids, generation_config):
    """Regions `region_0..` with thresholds set in turn on a sample of p_theta, as calibrated training sets them."""
    all_regions = [RejectionRegion(f"region_{k}", 0.0, k) for k in range(num_regions)]
    proposal = posterior.propose(input_ids, torch.ones_like(input_ids), generation_config)
    log_ratios = posterior.log_ratios(
        proposal.prompt_ids, proposal.prompt_mask, proposal.completion_ids, proposal.completion_mask, all_regions
    )
    accepted = torch.ones(len(log_ratios), dtype=torch.bool)
    regions = []
    for k, region in enumerate(all_regions):
        threshold = torch.quantile(log_ratios[accepted, k], 1 - rejection_rate).item()
        regions.append(RejectionRegion(region.adapter_name, threshold, k))
        accepted &= log_ratios[:, k] <= threshold
    return regions


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--regions", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--batch_size", type=int, default=1024, help="candidates per generate call")
    parser.add_argument("--batches", type=int, default=5, help="timed generate calls per K, each way")
    parser.add_argument("--rejection_rate", type=float, default=0.5, help="share each region rejects")
    parser.add_argument("--scoring_batch_size", type=int, default=None, help="defaults to BanelPosterior's")
    parser.add_argument("--max_new_tokens", type=int, default=12)
    parser.add_argument("--prompt_length", type=int, default=1, help="BOS then random tokens: prompt cost of scoring")
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--score_p_theta_afresh",
        action="store_true",
        help="score p_theta with a forward pass instead of taking it from generation's logits",
    )
    options = parser.parse_args()
    if options.score_p_theta_afresh:
        posterior_module.MAX_GENERATION_LOGITS = 0

    torch.manual_seed(options.seed)
    model = load_attacker()
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    lora = LoraConfig(r=options.lora_rank, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, lora, adapter_name="region_0").eval()
    for k in range(1, max(options.regions)):
        model.add_adapter(f"region_{k}", lora)
    generation_config = GenerationConfig.from_dict(
        {**model.generation_config.to_dict(), "do_sample": True, "top_k": 0, "max_new_tokens": options.max_new_tokens}
    )
    settings = {} if options.scoring_batch_size is None else {"scoring_batch_size": options.scoring_batch_size}
    posterior = BanelPosterior(model, **settings)
    input_ids = torch.randint(4, model.config.vocab_size, (options.batch_size, options.prompt_length))
    input_ids[:, 0] = model.generation_config.bos_token_id
    attention_mask = torch.ones_like(input_ids)
    regions = calibrated_regions(
        posterior, max(options.regions), options.rejection_rate, input_ids.repeat(4, 1), generation_config
    )
    print(
        f"attacker Qwen2 ({num_parameters / 1e3:.0f}k parameters), "
        f"LoRA rank {options.lora_rank} on all linear layers, batches of {options.batch_size} candidates of at most "
        f"{options.max_new_tokens} tokens after {options.prompt_length} prompt tokens, "
        f"scoring_batch_size {posterior.scoring_batch_size}, "
        f"{torch.get_num_threads()} CPU thread(s), each region rejects {options.rejection_rate} of what the earlier "
        "ones accept"
    )

    def plain_generate():
        with model.disable_adapter():
            return model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
            )

    efficiencies = {}
    for num_regions in options.regions:
        posterior.regions = regions[:num_regions]
        plain_seconds = posterior_seconds = 0.0
        proposed = accepted = 0
        plain_generate()  # warm-up
        for _ in range(options.batches):
            seconds, _ = timed(plain_generate)
            plain_seconds += seconds
            seconds, proposal = timed(lambda: posterior.propose(input_ids, attention_mask, generation_config))
            posterior_seconds += seconds
            proposed += len(proposal.accepted)
            accepted += int(proposal.accepted.sum())
        plain_rate = options.batches * options.batch_size / plain_seconds
        accepted_rate = accepted / posterior_seconds
        acceptance = accepted / proposed
        # accepted/s / (plain/s x acceptance) = proposed/s with scoring / proposed/s without: exact even when few
        # candidates were accepted.
        efficiencies[num_regions] = proposed / posterior_seconds / plain_rate
        print(
            f"K={num_regions:2d}: accepted/s {accepted_rate:9.2f} | plain generate samples/s {plain_rate:8.1f} | "
            f"acceptance {acceptance:.2e} ({accepted}/{proposed}) | "
            f"posterior efficiency {efficiencies[num_regions]:.3f}"
        )

        batch = {
            "prompt_ids": proposal.prompt_ids,
            "prompt_mask": proposal.prompt_mask,
            "completion_ids": proposal.completion_ids,
            "completion_mask": proposal.completion_mask,
        }
        with torch.no_grad():
            mixed, full = timed(lambda batch=batch: posterior.log_ratios(**batch))
            looped, _ = timed(
                lambda batch=batch: one_pass_per_region(model, posterior.regions, batch, posterior.scoring_batch_size)
            )
            early, _ = timed(lambda batch=batch: posterior.log_ratios(**batch, stop_at_rejection=True))
        rows_scored = options.batch_size + int((~proposal.log_ratios.isnan()).sum())
        print(
            f"      scoring {options.batch_size} candidates: all regions, mixed-adapter forwards {mixed:.3f}s | one "
            f"pass per region {looped:.3f}s | early rejection {early:.3f}s ({rows_scored} of "
            f"{options.batch_size * (num_regions + 1)} rows) | generation {plain_seconds / options.batches:.3f}s"
        )
    if 10 in efficiencies:
        print(f"posterior_efficiency K=10: {efficiencies[10]:.3f}")


if __name__ == "__main__":
    main()
