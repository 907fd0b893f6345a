# ruff: noqa: T201
# (a command-line script: its progress and its report go to stdout)
"""Train the target adder and the pretrained attacker from scratch, then measure.

    python examples/addition_attack/build_models.py            # full build, ~13 min on 1 core
    python examples/addition_attack/build_models.py --quick    # smoke test, minutes

Both models are tiny `Qwen2ForCausalLM` trained with a plain PyTorch loop
(AdamW, linear warm-up + cosine decay) on freshly sampled queries (see
`banel_trl/tasks/addition_attack` for the format).  The training data never contains leading zeros;
the attacker sees the queries alone (`<bos>a+b=<eos>`), the target sees
`<bos>a+b=<reversed sum><eos>` with the loss on the answer only.

Outputs `<out>/target` and `<out>/attacker` (model + tokenizer,
safetensors) and `<out>/build_report.json` with the measured figures
(`out` recorded relative to the repository root).
Uses one CPU thread (`torch.set_num_threads(1)`).
"""

import argparse
import json
import math
import os
import random
import time

import torch

from banel_trl.tasks import addition_attack as task


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def repo_relative(path: str) -> str:
    """`path` relative to the repository root, so that the report records no machine-specific absolute path."""
    return os.path.relpath(os.path.abspath(path), REPO_ROOT)


# --------------------------------------------------------------------------- data
def target_batch(rng: random.Random, tokenizer, batch_size: int):
    """Right-padded target batch; labels only on the answer digits and <eos>."""
    sequences, labels = [], []
    for _ in range(batch_size):
        a, b = task.sample_query(rng)
        query = [tokenizer.bos_token_id] + tokenizer.convert_tokens_to_ids(list(task.format_query(a, b)))
        answer = tokenizer.convert_tokens_to_ids(list(str(a + b)[::-1])) + [tokenizer.eos_token_id]
        sequences.append(query + answer)
        labels.append([-100] * len(query) + answer)
    return _pad(sequences, labels, tokenizer.pad_token_id)


def attacker_batch(rng: random.Random, tokenizer, batch_size: int):
    """Right-padded attacker batch: <bos>a+b=<eos>, loss on every token after <bos>."""
    sequences, labels = [], []
    for _ in range(batch_size):
        a, b = task.sample_query(rng)
        query = tokenizer.convert_tokens_to_ids(list(task.format_query(a, b)))
        ids = [tokenizer.bos_token_id] + query + [tokenizer.eos_token_id]
        sequences.append(ids)
        labels.append([-100] + ids[1:])
    return _pad(sequences, labels, tokenizer.pad_token_id)


def _pad(sequences, labels, pad_id):
    length = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    padded_labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, (sequence, sequence_labels) in enumerate(zip(sequences, labels, strict=True)):
        ids[i, : len(sequence)] = torch.tensor(sequence)
        padded_labels[i, : len(sequence_labels)] = torch.tensor(sequence_labels)
        attention_mask[i, : len(sequence)] = 1
    return ids, attention_mask, padded_labels


# --------------------------------------------------------------------------- model
def make_model(tokenizer, hidden: int, layers: int, heads: int, inter: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def lr_at(step: int, total: int, peak: float, warmup: int, final_frac: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def target_exact_error(model, tokenizer, rng: random.Random, n: int, batch_size: int = 1000) -> float:
    """Teacher-forced exact-match error on fresh queries.

    All answer positions argmax-correct  <=>  greedy decoding is exactly right,
    so this equals the greedy error rate, at the cost of one forward pass.
    """
    model.eval()
    wrong = 0
    for start in range(0, n, batch_size):
        ids, attention_mask, labels = target_batch(rng, tokenizer, min(batch_size, n - start))
        logits = model(input_ids=ids, attention_mask=attention_mask).logits[:, :-1]
        targets = labels[:, 1:]
        correct = (logits.argmax(-1) == targets) | (targets == -100)
        wrong += int((~correct.all(-1)).sum())
    model.train()
    return wrong / n


def train(
    model,
    tokenizer,
    batch_fn,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    name: str,
    callback=None,
    check_every: int = 100,
    log_every: int = 200,
):
    """AdamW + warm-up/cosine loop on fresh batches.

    `callback(model, step) -> bool` runs every `check_every` steps; returning
    True stops training early.  Returns (seconds, steps done).
    """
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 50)
    model.train()
    start_time = time.time()
    running_loss = 0.0
    done = steps
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        ids, attention_mask, labels = batch_fn(rng, tokenizer, batch_size)
        loss = model(input_ids=ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running_loss = 0.98 * running_loss + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(
                f"[{name}] step {step + 1}/{steps} loss {running_loss:.4f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{time.time() - start_time:.0f}s",
                flush=True,
            )
        if callback is not None and (step + 1) % check_every == 0 and callback(model, step + 1):
            done = step + 1
            print(f"[{name}] early stop at step {done}", flush=True)
            break
    model.eval()
    return time.time() - start_time, done


class TargetStopper:
    """Stop the target once its in-distribution error falls to `threshold`.

    The error drops steeply (a few %% -> 0 within ~1000 steps), so a fixed step
    count would land the base attack success rate anywhere between 0 and 1e-2
    depending on the machine's numerics.  Every check we screen on
    `n_screen` fresh queries; if that error is at most `screen` we measure on
    `n_full` fresh queries and stop when the error is <= `threshold`.
    """

    def __init__(
        self, tokenizer, seed: int, threshold: float, n_full: int = 30_000, n_screen: int = 5_000, screen: float = 2e-3
    ):
        self.tokenizer, self.rng = tokenizer, random.Random(seed)
        self.threshold, self.n_full, self.n_screen, self.screen = threshold, n_full, n_screen, screen
        self.history = []

    def __call__(self, model, step: int) -> bool:
        if self.threshold <= 0:
            return False
        error = target_exact_error(model, self.tokenizer, self.rng, self.n_screen)
        self.history.append((step, self.n_screen, error))
        message = f"[target] step {step}: error {error:.3%} on {self.n_screen}"
        stop = False
        if error <= self.screen:
            error = target_exact_error(model, self.tokenizer, self.rng, self.n_full)
            self.history.append((step, self.n_full, error))
            message += f", {error:.4%} on {self.n_full}"
            stop = error <= self.threshold
        print(message, flush=True)
        return stop


# --------------------------------------------------------------------------- measure
def measure(target, attacker, tokenizer, n: int, seed: int, rng_seed: int, n_target_eval: int):
    out = {}
    start_time = time.time()
    out["target_error_in_dist"] = target_exact_error(target, tokenizer, random.Random(rng_seed), n_target_eval)
    out["target_error_n"] = n_target_eval
    out["time_target_eval_s"] = time.time() - start_time

    start_time = time.time()
    queries = task.sample_queries(attacker, tokenizer, n, batch_size=2000, temperature=1.0, seed=seed)
    out["time_sample_s"] = time.time() - start_time

    start_time = time.time()
    reward_with_leading_zeros = task.AdditionAttackReward(target, tokenizer, allow_leading_zeros=True)
    rows = reward_with_leading_zeros.details(queries)
    out["time_reward_s"] = time.time() - start_time
    n_valid = sum(row["valid"] for row in rows)
    n_leading_zero = sum(row["valid"] and row["leading_zero"] for row in rows)
    successes = [row for row in rows if row["reward"] > 0]
    successes_no_lz = [row for row in successes if not row["leading_zero"]]
    lz_rows = [row for row in rows if row["valid"] and row["leading_zero"]]
    lz_error = sum(row["reward"] for row in lz_rows) / len(lz_rows) if lz_rows else None
    out.update(
        n_samples=n,
        valid_rate=n_valid / n,
        leading_zero_query_rate=n_leading_zero / n,
        target_error_on_leading_zero_queries=lz_error,
        success_rate_allow_leading_zeros=len(successes) / n,
        success_rate_no_leading_zeros=len(successes_no_lz) / n,
        n_successes_allow_leading_zeros=len(successes),
        n_successes_no_leading_zeros=len(successes_no_lz),
        share_successes_with_leading_zero=(1 - len(successes_no_lz) / len(successes)) if successes else None,
        example_successes=[f"{row['text']} -> {row['answer']} (true {row['truth']})" for row in successes[:20]],
        example_invalid=[row["text"] for row in rows if not row["valid"]][:10],
    )
    # sanity: the no-leading-zero reward object must agree with the filter above
    reward_no_leading_zeros = task.AdditionAttackReward(target, tokenizer, allow_leading_zeros=False)
    checked = [row["text"] for row in successes] + [row["text"] for row in lz_rows[:200]]
    check = task.success_rate(reward_no_leading_zeros, checked)
    assert abs(check * len(checked) - len(successes_no_lz)) < 1e-6, "reward variants disagree"
    return out


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.dirname(task.DEFAULT_TARGET_PATH))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the pipeline (figures meaningless)")
    parser.add_argument("--threads", type=int, default=1)
    # target
    parser.add_argument("--target-steps", type=int, default=6000, help="cosine schedule length / max steps")
    parser.add_argument(
        "--target-stop-error",
        type=float,
        default=3e-4,
        help="stop once in-distribution error <= this (on --stop-eval-n fresh queries); 0: never",
    )
    parser.add_argument("--stop-eval-n", type=int, default=30_000)
    parser.add_argument("--check-every", type=int, default=100)
    parser.add_argument("--target-bs", type=int, default=128)
    parser.add_argument("--target-lr", type=float, default=2e-3)
    parser.add_argument("--target-hidden", type=int, default=128)
    parser.add_argument("--target-layers", type=int, default=3)
    parser.add_argument("--target-inter", type=int, default=384)
    # attacker
    parser.add_argument("--attacker-steps", type=int, default=400)
    parser.add_argument("--attacker-bs", type=int, default=128)
    parser.add_argument("--attacker-lr", type=float, default=2e-3)
    parser.add_argument("--attacker-hidden", type=int, default=64)
    parser.add_argument("--attacker-layers", type=int, default=2)
    parser.add_argument("--attacker-inter", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    # measurement
    parser.add_argument("--n-samples", type=int, default=60_000)
    parser.add_argument("--n-target-eval", type=int, default=100_000)
    parser.add_argument("--skip-target", action="store_true", help="reuse <out>/target")
    parser.add_argument("--skip-attacker", action="store_true", help="reuse <out>/attacker")
    args = parser.parse_args(argv)
    if args.quick:
        args.target_steps, args.attacker_steps, args.target_stop_error = 300, 200, 0.0
        args.n_samples, args.n_target_eval = 4000, 4000
    return args


def build_target(args, tokenizer, report: dict):
    """Train the target and save it (with the tokenizer) to `<out>/target`, or load it with `--skip-target`."""
    target_dir = os.path.join(args.out, "target")
    if args.skip_target:
        return task.load_target(target_dir)
    target = make_model(tokenizer, args.target_hidden, args.target_layers, args.heads, args.target_inter, args.seed)
    report["target_params"] = sum(p.numel() for p in target.parameters())
    print(f"target params: {report['target_params']:,}", flush=True)
    stopper = TargetStopper(tokenizer, args.seed + 1000, args.target_stop_error, n_full=args.stop_eval_n)
    report["time_train_target_s"], report["target_steps_done"] = train(
        target,
        tokenizer,
        target_batch,
        args.target_steps,
        args.target_bs,
        args.target_lr,
        args.seed + 1,
        "target",
        callback=stopper,
        check_every=args.check_every,
    )
    report["target_stop_history"] = stopper.history
    target.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    return target


def build_attacker(args, tokenizer, report: dict):
    """Pretrain the attacker and save it (with the tokenizer) to `<out>/attacker`, or load it with `--skip-attacker`."""
    attacker_dir = os.path.join(args.out, "attacker")
    if args.skip_attacker:
        return task.load_attacker(attacker_dir)
    attacker = make_model(
        tokenizer, args.attacker_hidden, args.attacker_layers, args.heads, args.attacker_inter, args.seed + 2
    )
    report["attacker_params"] = sum(p.numel() for p in attacker.parameters())
    print(f"attacker params: {report['attacker_params']:,}", flush=True)
    report["time_train_attacker_s"], _ = train(
        attacker,
        tokenizer,
        attacker_batch,
        args.attacker_steps,
        args.attacker_bs,
        args.attacker_lr,
        args.seed + 3,
        "attacker",
        log_every=100,
    )
    attacker.save_pretrained(attacker_dir)
    tokenizer.save_pretrained(attacker_dir)
    return attacker


SUMMARY_KEYS = [
    "target_steps_done",
    "target_error_in_dist",
    "valid_rate",
    "leading_zero_query_rate",
    "target_error_on_leading_zero_queries",
    "success_rate_allow_leading_zeros",
    "success_rate_no_leading_zeros",
    "n_successes_allow_leading_zeros",
    "n_successes_no_leading_zeros",
    "share_successes_with_leading_zero",
    "time_train_target_s",
    "time_train_attacker_s",
    "time_sample_s",
    "time_reward_s",
    "time_measure_s",
    "time_total_s",
]


def print_summary(report: dict):
    print("\n=== build report ===")
    for key in SUMMARY_KEYS:
        if key in report:
            value = report[key]
            print(f"{key:40s} {value:.6g}" if isinstance(value, float) else f"{key:40s} {value}")
    print("example successes:")
    for success in report["example_successes"]:
        print("   ", success)
    ok = 1e-4 <= report["success_rate_allow_leading_zeros"] <= 2e-3
    print(f"base success rate (leading zeros allowed) in [1e-4, 2e-3]: {ok}")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    tokenizer = task.build_tokenizer()
    # `out` relative to the repository root: the report is committed, a machine's absolute path means nothing elsewhere
    report_args = {**vars(args), "out": repo_relative(args.out)}
    report = {"args": report_args, "torch": torch.__version__, "threads": torch.get_num_threads()}
    start_time = time.time()

    target = build_target(args, tokenizer, report)
    attacker = build_attacker(args, tokenizer, report)
    report["time_train_total_s"] = time.time() - start_time

    print("measuring ...", flush=True)
    measure_start = time.time()
    measured = measure(
        target,
        attacker,
        tokenizer,
        args.n_samples,
        seed=args.seed + 4,
        rng_seed=args.seed + 5,
        n_target_eval=args.n_target_eval,
    )
    report.update(measured)
    report["time_measure_s"] = time.time() - measure_start
    report["time_total_s"] = time.time() - start_time

    with open(os.path.join(args.out, "build_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    print_summary(report)


if __name__ == "__main__":
    main()
