"""Train the target adder and the pretrained attacker from scratch, then measure.

    python examples/addition_attack/build_models.py            # full build, ~13 min on 1 core
    python examples/addition_attack/build_models.py --quick    # smoke test, minutes

Both models are tiny ``Qwen2ForCausalLM`` trained with a plain PyTorch loop
(AdamW, linear warm-up + cosine decay) on freshly sampled queries (see
``banel_trl/tasks/addition_attack`` for the format).  The training data never contains leading zeros;
the attacker sees the queries alone (``<bos>a+b=<eos>``), the target sees
``<bos>a+b=<reversed sum><eos>`` with the loss on the answer only.

Outputs ``<out>/target`` and ``<out>/attacker`` (model + tokenizer,
safetensors) and ``<out>/build_report.json`` with the measured figures.
Uses one CPU thread (``torch.set_num_threads(1)``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time

import torch

from banel_trl.tasks import addition_attack as task


# --------------------------------------------------------------------------- data
def target_batch(rng: random.Random, tok, bs: int):
    """Right-padded target batch; labels only on the answer digits and <eos>."""
    seqs, labs = [], []
    for _ in range(bs):
        a, b = task.sample_query(rng)
        q = [tok.bos_token_id] + tok.convert_tokens_to_ids(list(task.format_query(a, b)))
        ans = tok.convert_tokens_to_ids(list(str(a + b)[::-1])) + [tok.eos_token_id]
        seqs.append(q + ans)
        labs.append([-100] * len(q) + ans)
    return _pad(seqs, labs, tok.pad_token_id)


def attacker_batch(rng: random.Random, tok, bs: int):
    """Right-padded attacker batch: <bos>a+b=<eos>, loss on every token after <bos>."""
    seqs, labs = [], []
    for _ in range(bs):
        a, b = task.sample_query(rng)
        ids = [tok.bos_token_id] + tok.convert_tokens_to_ids(list(task.format_query(a, b))) + [tok.eos_token_id]
        seqs.append(ids)
        labs.append([-100] + ids[1:])
    return _pad(seqs, labs, tok.pad_token_id)


def _pad(seqs, labs, pad_id):
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labs)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
        att[i, : len(s)] = 1
    return ids, att, lab


# --------------------------------------------------------------------------- model
def make_model(tok, hidden: int, layers: int, heads: int, inter: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def lr_at(step: int, total: int, peak: float, warmup: int, final_frac: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@torch.no_grad()
def target_exact_error(model, tok, rng: random.Random, n: int, bs: int = 1000) -> float:
    """Teacher-forced exact-match error on fresh queries.

    All answer positions argmax-correct  <=>  greedy decoding is exactly right,
    so this equals the greedy error rate, at the cost of one forward pass.
    """
    model.eval()
    wrong = 0
    for i in range(0, n, bs):
        ids, att, lab = target_batch(rng, tok, min(bs, n - i))
        logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
        tgt = lab[:, 1:]
        ok = (logits.argmax(-1) == tgt) | (tgt == -100)
        wrong += int((~ok.all(-1)).sum())
    model.train()
    return wrong / n


def train(model, tok, batch_fn, steps: int, bs: int, lr: float, seed: int, name: str,
          callback=None, check_every: int = 100, log_every: int = 200):
    """AdamW + warm-up/cosine loop on fresh batches.

    ``callback(model, step) -> bool`` runs every ``check_every`` steps; returning
    True stops training early.  Returns (seconds, steps done).
    """
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 50)
    model.train()
    t0 = time.time()
    run = 0.0
    done = steps
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        ids, att, lab = batch_fn(rng, tok, bs)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run = 0.98 * run + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(f"[{name}] step {step + 1}/{steps} loss {run:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if callback is not None and (step + 1) % check_every == 0 and callback(model, step + 1):
            done = step + 1
            print(f"[{name}] early stop at step {done}", flush=True)
            break
    model.eval()
    return time.time() - t0, done


class TargetStopper:
    """Stop the target once its in-distribution error falls to ``threshold``.

    The error drops steeply (a few %% -> 0 within ~1000 steps), so a fixed step
    count would land the base attack success rate anywhere between 0 and 1e-2
    depending on the machine's numerics.  Every check we screen on
    ``n_screen`` fresh queries; if that error is at most ``screen`` we measure on
    ``n_full`` fresh queries and stop when the error is <= ``threshold``.
    """

    def __init__(self, tok, seed: int, threshold: float, n_full: int = 30_000,
                 n_screen: int = 5_000, screen: float = 2e-3):
        self.tok, self.rng = tok, random.Random(seed)
        self.threshold, self.n_full, self.n_screen, self.screen = threshold, n_full, n_screen, screen
        self.history = []

    def __call__(self, model, step: int) -> bool:
        if self.threshold <= 0:
            return False
        err = target_exact_error(model, self.tok, self.rng, self.n_screen)
        self.history.append((step, self.n_screen, err))
        msg = f"[target] step {step}: error {err:.3%} on {self.n_screen}"
        stop = False
        if err <= self.screen:
            err = target_exact_error(model, self.tok, self.rng, self.n_full)
            self.history.append((step, self.n_full, err))
            msg += f", {err:.4%} on {self.n_full}"
            stop = err <= self.threshold
        print(msg, flush=True)
        return stop


# --------------------------------------------------------------------------- measure
def measure(target, attacker, tok, n: int, seed: int, rng_seed: int, n_target_eval: int):
    out = {}
    t0 = time.time()
    out["target_error_in_dist"] = target_exact_error(target, tok, random.Random(rng_seed), n_target_eval)
    out["target_error_n"] = n_target_eval
    out["time_target_eval_s"] = time.time() - t0

    t0 = time.time()
    queries = task.sample_queries(attacker, tok, n, batch_size=2000, temperature=1.0, seed=seed)
    out["time_sample_s"] = time.time() - t0

    t0 = time.time()
    r_lz = task.AdditionAttackReward(target, tok, allow_leading_zeros=True)
    rows = r_lz.details(queries)
    out["time_reward_s"] = time.time() - t0
    n_valid = sum(r["valid"] for r in rows)
    n_lz = sum(r["valid"] and r["leading_zero"] for r in rows)
    succ = [r for r in rows if r["reward"] > 0]
    succ_no_lz = [r for r in succ if not r["leading_zero"]]
    lz_rows = [r for r in rows if r["valid"] and r["leading_zero"]]
    out.update(
        n_samples=n,
        valid_rate=n_valid / n,
        leading_zero_query_rate=n_lz / n,
        target_error_on_leading_zero_queries=(sum(r["reward"] for r in lz_rows) / len(lz_rows)) if lz_rows else None,
        success_rate_allow_leading_zeros=len(succ) / n,
        success_rate_no_leading_zeros=len(succ_no_lz) / n,
        n_successes_allow_leading_zeros=len(succ),
        n_successes_no_leading_zeros=len(succ_no_lz),
        share_successes_with_leading_zero=(1 - len(succ_no_lz) / len(succ)) if succ else None,
        example_successes=[f"{r['text']} -> {r['answer']} (true {r['truth']})" for r in succ[:20]],
        example_invalid=[r["text"] for r in rows if not r["valid"]][:10],
    )
    # sanity: the no-leading-zero reward object must agree with the filter above
    r_nolz = task.AdditionAttackReward(target, tok, allow_leading_zeros=False)
    check = task.success_rate(r_nolz, [r["text"] for r in succ] + [r["text"] for r in lz_rows[:200]])
    assert abs(check * (len(succ) + len(lz_rows[:200])) - len(succ_no_lz)) < 1e-6, "reward variants disagree"
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.dirname(task.DEFAULT_TARGET_PATH))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny run to check the pipeline (figures meaningless)")
    ap.add_argument("--threads", type=int, default=1)
    # target
    ap.add_argument("--target-steps", type=int, default=6000, help="cosine schedule length / max steps")
    ap.add_argument("--target-stop-error", type=float, default=3e-4,
                    help="stop once in-distribution error <= this (on --stop-eval-n fresh queries); 0: never")
    ap.add_argument("--stop-eval-n", type=int, default=30_000)
    ap.add_argument("--check-every", type=int, default=100)
    ap.add_argument("--target-bs", type=int, default=128)
    ap.add_argument("--target-lr", type=float, default=2e-3)
    ap.add_argument("--target-hidden", type=int, default=128)
    ap.add_argument("--target-layers", type=int, default=3)
    ap.add_argument("--target-inter", type=int, default=384)
    # attacker
    ap.add_argument("--attacker-steps", type=int, default=400)
    ap.add_argument("--attacker-bs", type=int, default=128)
    ap.add_argument("--attacker-lr", type=float, default=2e-3)
    ap.add_argument("--attacker-hidden", type=int, default=64)
    ap.add_argument("--attacker-layers", type=int, default=2)
    ap.add_argument("--attacker-inter", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    # measurement
    ap.add_argument("--n-samples", type=int, default=60_000)
    ap.add_argument("--n-target-eval", type=int, default=100_000)
    ap.add_argument("--skip-target", action="store_true", help="reuse <out>/target")
    ap.add_argument("--skip-attacker", action="store_true", help="reuse <out>/attacker")
    args = ap.parse_args(argv)

    if args.quick:
        args.target_steps, args.attacker_steps, args.target_stop_error = 300, 200, 0.0
        args.n_samples, args.n_target_eval = 4000, 4000

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    tok = task.build_tokenizer()
    report = {"args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads()}
    t_all = time.time()

    tdir, adir = os.path.join(args.out, "target"), os.path.join(args.out, "attacker")
    if args.skip_target:
        target = task.load_target(tdir)
    else:
        target = make_model(tok, args.target_hidden, args.target_layers, args.heads, args.target_inter, args.seed)
        report["target_params"] = sum(p.numel() for p in target.parameters())
        print(f"target params: {report['target_params']:,}", flush=True)
        stopper = TargetStopper(tok, args.seed + 1000, args.target_stop_error, n_full=args.stop_eval_n)
        report["time_train_target_s"], report["target_steps_done"] = train(
            target, tok, target_batch, args.target_steps, args.target_bs, args.target_lr, args.seed + 1, "target",
            callback=stopper, check_every=args.check_every,
        )
        report["target_stop_history"] = stopper.history
        target.save_pretrained(tdir)
        tok.save_pretrained(tdir)

    if args.skip_attacker:
        attacker = task.load_attacker(adir)
    else:
        attacker = make_model(tok, args.attacker_hidden, args.attacker_layers, args.heads, args.attacker_inter, args.seed + 2)
        report["attacker_params"] = sum(p.numel() for p in attacker.parameters())
        print(f"attacker params: {report['attacker_params']:,}", flush=True)
        report["time_train_attacker_s"], _ = train(
            attacker, tok, attacker_batch, args.attacker_steps, args.attacker_bs, args.attacker_lr, args.seed + 3,
            "attacker", log_every=100,
        )
        attacker.save_pretrained(adir)
        tok.save_pretrained(adir)
    report["time_train_total_s"] = time.time() - t_all

    print("measuring ...", flush=True)
    t0 = time.time()
    report.update(measure(target, attacker, tok, args.n_samples, seed=args.seed + 4,
                          rng_seed=args.seed + 5, n_target_eval=args.n_target_eval))
    report["time_measure_s"] = time.time() - t0
    report["time_total_s"] = time.time() - t_all

    with open(os.path.join(args.out, "build_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    keys = ["target_steps_done", "target_error_in_dist", "valid_rate", "leading_zero_query_rate", "target_error_on_leading_zero_queries",
            "success_rate_allow_leading_zeros", "success_rate_no_leading_zeros", "n_successes_allow_leading_zeros",
            "n_successes_no_leading_zeros", "share_successes_with_leading_zero", "time_train_target_s",
            "time_train_attacker_s", "time_sample_s", "time_reward_s", "time_measure_s", "time_total_s"]
    print("\n=== build report ===")
    for k in keys:
        if k in report:
            v = report[k]
            print(f"{k:40s} {v:.6g}" if isinstance(v, float) else f"{k:40s} {v}")
    print("example successes:")
    for s in report["example_successes"]:
        print("   ", s)
    ok = 1e-4 <= report["success_rate_allow_leading_zeros"] <= 2e-3
    print(f"base success rate (leading zeros allowed) in [1e-4, 2e-3]: {ok}")


if __name__ == "__main__":
    main()
