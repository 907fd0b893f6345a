"""Addition adversarial-attack task (first benchmark of BaNEL, arXiv 2510.09596).

Two tiny autoregressive transformers (``Qwen2ForCausalLM``) share one
character-level tokenizer:

* the **target** is trained from scratch to answer addition queries;
* the **attacker** is pretrained on the queries alone, so it generates
  in-distribution queries such as ``"4057+622="``.

Query format
    ``"<a>+<b>="`` where each operand has 1 to :data:`MAX_DIGITS` (= 4) decimal
    digits.  The training distribution (:func:`sample_operand`) first draws the
    number of digits uniformly from ``1..4`` and then the value uniformly among
    the numbers with exactly that many digits, so operands never have a leading
    zero (``0`` itself is a valid 1-digit operand).

Answer format (target only)
    The target reads ``<bos>a+b=`` and emits the digits of ``a+b`` **reversed**
    (least-significant digit first), then ``<eos>``.  Reversed answers let a small
    transformer compute carries left-to-right and train much faster.  For example
    ``"<bos>10+23=33<eos>"`` and ``"<bos>58+67=521<eos>"`` (58+67 = 125).
    :func:`target_answer` undoes the reversal.

Reward
    :class:`AdditionAttackReward` gives 1.0 when the attacker's text is a
    syntactically valid query (``^\\d+\\+\\d+=$`` after stripping whitespace,
    each operand at most :data:`MAX_DIGITS` characters) and the target's greedy
    answer differs from the true sum, 0.0 otherwise.  With
    ``allow_leading_zeros=False`` (the paper's harder variant) a query whose
    operand has a leading zero (``"007+1="``) earns 0.

The attacker is unconditional: its prompt is just the BOS token
(``tokenizer.bos_token``, i.e. the string ``"<bos>"``; the tokenizer does not
add special tokens by itself, ``tokenizer("12+3=")`` gives one id per
character).

Nothing heavy happens at import time.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Iterable, Sequence

MAX_DIGITS = 4
"""Largest number of characters allowed in one operand (training data: 1-4 digits)."""

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
CHARS = list("0123456789+=")

QUERY_RE = re.compile(r"^(\d+)\+(\d+)=$")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TARGET_PATH = os.path.join(HERE, "models", "target")
DEFAULT_ATTACKER_PATH = os.path.join(HERE, "models", "attacker")

__all__ = [
    "MAX_DIGITS",
    "QUERY_RE",
    "DEFAULT_TARGET_PATH",
    "DEFAULT_ATTACKER_PATH",
    "build_tokenizer",
    "load_tokenizer",
    "sample_operand",
    "sample_query",
    "format_query",
    "format_target_example",
    "parse_query",
    "has_leading_zero",
    "target_answer",
    "load_target",
    "load_attacker",
    "sample_queries",
    "AdditionAttackReward",
    "success_rate",
]


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer():
    """Character-level ``PreTrainedTokenizerFast`` built offline.

    Vocabulary (ids): ``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<unk>``=3,
    ``'0'..'9'``=4..13, ``'+'``=14, ``'='``=15 (16 tokens).  No special tokens
    are added automatically; padding side is left (for generation).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )
    return hf


def load_tokenizer(path: str = DEFAULT_TARGET_PATH):
    """Load the saved tokenizer with its exact character-level pipeline.

    Prefer this (or :func:`build_tokenizer`) over ``AutoTokenizer.from_pretrained``:
    because the model config says ``qwen2``, transformers 5 maps ``AutoTokenizer``
    to ``Qwen2Tokenizer``, which swaps in Qwen's byte-level pre-tokenizer.  That
    gives identical ids/decoding on the task alphabet (digits, ``+``, ``=``,
    special tokens) but silently drops out-of-vocabulary characters such as
    spaces instead of mapping them to ``<unk>``.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


# --------------------------------------------------------------------------- data
def sample_operand(rng, max_digits: int = MAX_DIGITS) -> int:
    """Draw an operand: #digits uniform in 1..max_digits, then value uniform.

    ``rng`` is a ``random.Random`` (or anything with ``randint``).
    """
    n = rng.randint(1, max_digits)
    lo = 0 if n == 1 else 10 ** (n - 1)
    return rng.randint(lo, 10**n - 1)


def sample_query(rng, max_digits: int = MAX_DIGITS) -> tuple[int, int]:
    return sample_operand(rng, max_digits), sample_operand(rng, max_digits)


def format_query(a: int | str, b: int | str) -> str:
    """``(10, 23) -> "10+23="`` (strings are kept verbatim, e.g. ``"007"``)."""
    return f"{a}+{b}="


def format_target_example(a: int, b: int) -> str:
    """Full target training text without special tokens: query + reversed sum."""
    return format_query(a, b) + str(a + b)[::-1]


def parse_query(text: str, max_digits: int = MAX_DIGITS) -> tuple[str, str] | None:
    """Return the two operand strings if ``text`` is a valid query, else None.

    Valid: ``^\\d+\\+\\d+=$`` after stripping whitespace, each operand at most
    ``max_digits`` characters (leading zeros count as characters).
    """
    m = QUERY_RE.match(text.strip())
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if len(a) > max_digits or len(b) > max_digits:
        return None
    return a, b


def has_leading_zero(operand: str) -> bool:
    return len(operand) > 1 and operand[0] == "0"


def target_answer(generated: str) -> str:
    """Target's generated answer text (digits, reversed) -> answer in normal order."""
    return generated.strip()[::-1]


# --------------------------------------------------------------------------- models
def _load(path):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(path)
    model.eval()
    return model


def load_target(path: str = DEFAULT_TARGET_PATH):
    """Load the target adder (``Qwen2ForCausalLM``) in eval mode."""
    return _load(path)


def load_attacker(path: str = DEFAULT_ATTACKER_PATH):
    """Load the pretrained attacker (``Qwen2ForCausalLM``) in eval mode."""
    return _load(path)


@contextlib.contextmanager
def _seeded(seed):
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sample_queries(
    attacker,
    tokenizer,
    n: int,
    batch_size: int = 2000,
    temperature: float = 1.0,
    seed: int | None = 0,
    max_new_tokens: int = 2 * MAX_DIGITS + 4,
) -> list[str]:
    """Sample ``n`` unconditional attacker completions (input: the BOS token alone).

    Pure ancestral sampling at ``temperature`` (no top-k / top-p).  Returns the
    decoded texts without special tokens, e.g. ``["4057+622=", "3+19=", ...]``.
    ``seed`` makes the result reproducible without touching the global RNG
    (``None``: use the global RNG).
    """
    import torch

    was_training = attacker.training
    attacker.eval()
    device = next(attacker.parameters()).device
    out: list[str] = []
    with _seeded(seed), torch.inference_mode():
        while len(out) < n:
            bs = min(batch_size, n - len(out))
            input_ids = torch.full((bs, 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
            gen = attacker.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.extend(tokenizer.batch_decode(gen[:, 1:], skip_special_tokens=True))
    if was_training:
        attacker.train()
    return out


# --------------------------------------------------------------------------- reward
def _completion_text(c) -> str:
    # TRL passes plain strings for standard data, a list of messages for conversational.
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):
        return c[-1].get("content", "")
    if isinstance(c, dict):
        return c.get("content", "")
    return str(c)


class AdditionAttackReward:
    """TRL reward function: 1.0 iff the completion is a valid query the target gets wrong.

    Parameters
    ----------
    target:
        ``Qwen2ForCausalLM`` or a path for :func:`load_target`.
    tokenizer:
        the shared tokenizer (:func:`build_tokenizer` or loaded from the model dir).
    allow_leading_zeros:
        if False, queries with an operand such as ``"007"`` earn 0 (harder variant).
    batch_size, device, max_digits:
        batching of the target's greedy decoding (always under ``torch.inference_mode``).

    ``__call__(prompts, completions, **kwargs) -> list[float]`` follows TRL's
    reward-function contract; ``prompts`` is ignored (the attacker is unconditional).
    :meth:`details` returns per-query diagnostics.
    """

    def __init__(
        self,
        target,
        tokenizer,
        allow_leading_zeros: bool = True,
        batch_size: int = 1024,
        device: str = "cpu",
        max_digits: int = MAX_DIGITS,
    ):
        import torch

        if isinstance(target, (str, os.PathLike)):
            target = load_target(str(target))
        self.target = target.to(device).eval()
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.allow_leading_zeros = allow_leading_zeros
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.max_digits = max_digits
        self.__name__ = "addition_attack" if allow_leading_zeros else "addition_attack_no_lz"

    # ---- target
    def target_answers(self, queries: Sequence[str]) -> list[str]:
        """Greedy target answers (normal digit order) for valid query strings."""
        import torch

        tok = self.tokenizer
        answers: list[str] = []
        max_new = self.max_digits + 2  # up to max_digits+1 answer digits, then <eos>
        with torch.inference_mode():
            for i in range(0, len(queries), self.batch_size):
                chunk = [tok.bos_token + q for q in queries[i : i + self.batch_size]]
                enc = tok(chunk, return_tensors="pt", padding=True, padding_side="left")
                enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                gen = self.target.generate(
                    **enc,
                    do_sample=False,
                    max_new_tokens=max_new,
                    eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :].tolist()
                for row in new:
                    text = []
                    for t in row:
                        if t == tok.eos_token_id or t == tok.pad_token_id:
                            break
                        text.append(tok.convert_ids_to_tokens(t))
                    answers.append(target_answer("".join(text)))
        return answers

    # ---- reward
    def details(self, completions: Iterable) -> list[dict]:
        """Per completion: text, valid, leading_zero, answer, correct, reward."""
        texts = [_completion_text(c) for c in completions]
        rows = []
        to_eval = []
        for t in texts:
            parsed = parse_query(t, self.max_digits)
            row = {"text": t, "valid": parsed is not None, "leading_zero": False,
                   "answer": None, "truth": None, "correct": None, "reward": 0.0}
            if parsed is not None:
                a, b = parsed
                row["leading_zero"] = has_leading_zero(a) or has_leading_zero(b)
                row["truth"] = str(int(a) + int(b))
                if self.allow_leading_zeros or not row["leading_zero"]:
                    to_eval.append(len(rows))
            rows.append(row)
        if to_eval:
            answers = self.target_answers([format_query(*parse_query(rows[j]["text"], self.max_digits)) for j in to_eval])
            for j, ans in zip(to_eval, answers):
                rows[j]["answer"] = ans
                rows[j]["correct"] = ans == rows[j]["truth"]
                rows[j]["reward"] = 0.0 if rows[j]["correct"] else 1.0
        return rows

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("AdditionAttackReward needs `completions`")
        return [r["reward"] for r in self.details(completions)]


def success_rate(reward: AdditionAttackReward, queries: Sequence[str]) -> float:
    """Mean reward of ``queries`` (attacker texts) under ``reward``."""
    if len(queries) == 0:
        return 0.0
    r = reward(prompts=[""] * len(queries), completions=list(queries))
    return sum(r) / len(r)
