"""
Addition adversarial-attack task (first benchmark of BaNEL, arXiv 2510.09596).

Two tiny autoregressive transformers (`Qwen2ForCausalLM`) share one character-level tokenizer:

- the target is trained from scratch to answer addition queries: it reads `<bos>a+b=` and emits the digits of `a+b`
  reversed (least-significant digit first), then `<eos>`, e.g. `"<bos>58+67=521<eos>"` (58+67 = 125);
- the attacker is pretrained on the queries alone, so it generates in-distribution queries such as `"4057+622="`. It
  is unconditional: its prompt is just the BOS token (`tokenizer.bos_token`, i.e. the string `"<bos>"`).

The reward ([`AdditionAttackReward`]) gives 1.0 when the attacker's text is a valid query that the target answers
wrongly. Modules:

- `queries`: the query and answer format, the training distribution of queries, parsing;
- `loading`: the tokenizer and the committed models;
- `generation`: sampling queries from the attacker;
- `reward`: the reward function and the success rate.

Nothing heavy happens at import time.
"""

from .generation import sample_queries
from .loading import (
    BOS_TOKEN,
    CHARS,
    DEFAULT_ATTACKER_PATH,
    DEFAULT_TARGET_PATH,
    EOS_TOKEN,
    MODELS_DIR,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    TASK_DIR,
    UNK_TOKEN,
    build_tokenizer,
    load_attacker,
    load_target,
    load_tokenizer,
)
from .queries import (
    MAX_DIGITS,
    QUERY_RE,
    format_query,
    format_target_example,
    has_leading_zero,
    parse_query,
    sample_operand,
    sample_query,
    target_answer,
)
from .reward import AdditionAttackReward, success_rate


HERE = TASK_DIR  # former name of TASK_DIR

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
    "PAD_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
    "SPECIAL_TOKENS",
    "CHARS",
    "TASK_DIR",
    "MODELS_DIR",
]
