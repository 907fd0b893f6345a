"""
The SMILES prior: a small Llama causal LM pretrained on MOSES, saved with its tokenizer like any Hub model.

The MOSES training set (1.58M drug-like molecules from ZINC) ships inside the `molsets` wheel on PyPI
(`moses/dataset/data/train.csv.gz`). The wheel is downloaded once with `pip download molsets --no-deps` (its pinned
dependencies are not installed) and the file is read from the wheel's zip. The tokenizer is a byte-pair encoding
learned on SMILES strings (7.5 tokens per MOSES molecule at 512 tokens, against 35 characters), which makes every
generation several times cheaper on a CPU.

    python examples/molecules/prior.py                        # build into examples/molecules/.cache/prior (cached)
    python examples/molecules/prior.py --out /tmp/p --quick   # a tiny prior in about a minute (tests)
"""

import argparse
import gzip
import json
import math
import os
import random
import subprocess
import sys
import time
import warnings
import zipfile

import torch
from rdkit import Chem, RDLogger
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")
DEFAULT_PRIOR_PATH = os.path.join(CACHE_DIR, "prior")
MOSES_TRAIN = "moses/dataset/data/train.csv.gz"
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Longest MOSES molecule is 24 tokens at 512 BPE tokens (on 50,000 molecules); room for an unfinished sample.
MAX_COMPLETION_LENGTH = 32

RDLogger.DisableLog("rdApp.*")


def moses_wheel(cache_dir: str = CACHE_DIR) -> str:
    """Path of the `molsets` wheel, downloaded into `cache_dir` without its dependencies on first use."""
    os.makedirs(cache_dir, exist_ok=True)
    wheels = [name for name in os.listdir(cache_dir) if name.startswith("molsets-") and name.endswith(".whl")]
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", "molsets", "--no-deps", "--quiet", "-d", cache_dir]
        subprocess.run(command, check=True)
        wheels = [name for name in os.listdir(cache_dir) if name.startswith("molsets-") and name.endswith(".whl")]
    return os.path.join(cache_dir, sorted(wheels)[-1])


def load_moses_train(cache_dir: str = CACHE_DIR) -> list[str]:
    """The 1,584,663 SMILES of the MOSES training split, in the file's order."""
    with zipfile.ZipFile(moses_wheel(cache_dir)) as wheel:
        lines = gzip.decompress(wheel.read(MOSES_TRAIN)).decode().splitlines()
    return [line.split(",")[0] for line in lines[1:]]


def build_tokenizer(smiles: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """
    A byte-pair encoding learned on whole SMILES strings (no pre-tokenizer, `Fuse` decoder so that decoding joins the
    pieces without spaces). It adds no special tokens by itself: the prompt is the BOS token, `"<bos>"`.
    """
    from tokenizers import Tokenizer, decoders, models, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    backend.train_from_iterator(smiles, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_model(tokenizer, hidden_size: int, num_layers: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def encode(tokenizer, smiles: list[str]) -> list[list[int]]:
    """`<bos> SMILES <eos>` token ids of each molecule."""
    ids = tokenizer(smiles, add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id, *row, tokenizer.eos_token_id] for row in ids]


def pretrain(model, tokenizer, smiles: list[str], steps: int, batch_size: int, learning_rate: float, seed: int):
    """Next-token maximum likelihood on random batches of `smiles`: AdamW, linear warm-up then cosine decay."""
    rows = encode(tokenizer, smiles)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, steps // 20)

    def schedule(step):
        return (
            (step + 1) / warmup
            if step < warmup
            else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    progress = tqdm(range(steps), desc="pretraining the SMILES prior")
    for _ in progress:
        batch = [rows[i] for i in rng.sample(range(len(rows)), batch_size)]
        width = max(map(len, batch))
        input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in batch])
        attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    return losses


@torch.no_grad()
def sample_smiles(model, tokenizer, num_samples: int, seed: int, batch_size: int = 2048) -> list[str]:
    """
    `num_samples` unconditional ancestral samples at temperature 1 (decoded text, not canonicalised), seeded by
    `seed`. The same distribution as `model.generate(do_sample=True)` from the BOS token, but finished rows leave the
    batch (and the KV cache) at once: a batch no longer runs to its longest molecule, about 3x less compute here.
    """
    from transformers import DynamicCache

    torch.manual_seed(seed)
    samples = []
    while len(samples) < num_samples:
        n = min(batch_size, num_samples - len(samples))
        tokens = torch.full((n, 1), tokenizer.bos_token_id)
        rows = torch.arange(n)  # index in the batch of each row still generating
        completions = [[] for _ in range(n)]
        cache = DynamicCache()
        for _ in range(MAX_COMPLETION_LENGTH):
            with warnings.catch_warnings():  # `past_key_values` is named `cache` from transformers 5.25, not in 5.0
                warnings.simplefilter("ignore", FutureWarning)
                logits = model(input_ids=tokens, past_key_values=cache, use_cache=True).logits[:, -1]
            tokens = torch.multinomial(torch.softmax(logits.float(), dim=-1), 1)
            for row, token in zip(rows.tolist(), tokens[:, 0].tolist(), strict=True):
                completions[row].append(token)
            going = tokens[:, 0] != tokenizer.eos_token_id
            if not going.all():
                if not going.any():
                    break
                keep = going.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                rows, tokens = rows[keep], tokens[keep]
        samples += tokenizer.batch_decode(completions, skip_special_tokens=True)
    return samples


def canonical(smiles: str) -> str | None:
    """RDKit canonical SMILES, or None when RDKit cannot parse it (an invalid molecule)."""
    molecule = Chem.MolFromSmiles(smiles) if smiles else None
    return Chem.MolToSmiles(molecule) if molecule is not None else None


def moses_metrics(samples: list[str], train: set[str]) -> dict:
    """
    MOSES's definitions: validity is the share of samples RDKit parses; uniqueness the share of distinct canonical
    SMILES among the valid ones; novelty the share of those distinct molecules absent from the training set (compared
    as strings with the training set's SMILES, which are RDKit canonical).
    """
    valid = [c for c in map(canonical, samples) if c is not None]
    unique = set(valid)
    return {
        "samples": len(samples),
        "validity": len(valid) / len(samples),
        "uniqueness": len(unique) / max(len(valid), 1),
        "novelty": len(unique - train) / max(len(unique), 1),
    }


def load_prior(path: str = DEFAULT_PRIOR_PATH):
    """The prior and its tokenizer, loaded as any Hub model is."""
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def build_prior(
    out: str,
    train: list[str],
    num_molecules: int,
    steps: int,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    hidden_size: int = 128,
    num_layers: int = 4,
    vocab_size: int = 512,
    eval_samples: int = 10_000,
    seed: int = 0,
) -> dict:
    """
    Train the prior on `num_molecules` molecules drawn (seeded) from `train` (MOSES train, or any list of SMILES), save
    it with its tokenizer and a `build_report.json` of its MOSES metrics on `eval_samples` samples (novelty against
    the whole of `train`).
    """
    start = time.time()
    subset = random.Random(seed).sample(train, min(num_molecules, len(train)))
    tokenizer = build_tokenizer(subset, vocab_size)
    model = build_model(tokenizer, hidden_size, num_layers, seed)
    losses = pretrain(model, tokenizer, subset, steps, batch_size, learning_rate, seed)
    train_seconds = time.time() - start
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model, tokenizer = load_prior(out)  # measured as a user loads it
    sample_start = time.time()
    samples = sample_smiles(model, tokenizer, eval_samples, seed=seed + 1)
    report = {
        **moses_metrics(samples, set(train)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_molecules": num_molecules,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "vocab_size": vocab_size,
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "train_seconds": train_seconds,
        "sample_seconds": time.time() - sample_start,
        "seed": seed,
    }
    with open(os.path.join(out, "build_report.json"), "w") as file:
        json.dump(report, file, indent=1)
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", default=DEFAULT_PRIOR_PATH, help="where the model and tokenizer are saved")
    parser.add_argument("--num_molecules", type=int, default=400_000, help="MOSES train molecules trained on")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--vocab_size", type=int, default=512)
    parser.add_argument("--eval_samples", type=int, default=10_000, help="samples for validity/uniqueness/novelty")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="rebuild even if `--out` holds a built prior")
    parser.add_argument("--quick", action="store_true", help="a tiny prior: 20k molecules, 150 steps, 64 dims")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(num_molecules=20_000, steps=150, hidden_size=64, num_layers=2, eval_samples=2000)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if os.path.exists(os.path.join(args.out, "build_report.json")) and not args.force:
        print(f"{args.out} holds a built prior (--force rebuilds it)")
        with open(os.path.join(args.out, "build_report.json")) as file:
            print(file.read())
        return
    report = build_prior(
        args.out,
        load_moses_train(),
        num_molecules=args.num_molecules,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        vocab_size=args.vocab_size,
        eval_samples=args.eval_samples,
        seed=args.seed,
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
