"""
The task's character-level tokenizer and its two committed models, the target adder and the attacker.

Both models are tiny `Qwen2ForCausalLM` saved with the tokenizer under `models/target` and `models/attacker` next to
this file (`examples/addition_attack/build_models.py` trains them). The tokenizer does not add special tokens by
itself: `tokenizer("12+3=")` gives one id per character.
"""

import os


PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]
"""The special tokens, in id order (0 to 3)."""
CHARS = list("0123456789+=")
"""The characters of the vocabulary, in id order (4 to 15)."""

TASK_DIR = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(TASK_DIR, "models")
DEFAULT_TARGET_PATH = os.path.join(MODELS_DIR, "target")
DEFAULT_ATTACKER_PATH = os.path.join(MODELS_DIR, "attacker")


def build_tokenizer():
    """
    Build the task's character-level tokenizer offline.

    Vocabulary (ids): `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3, `'0'..'9'`=4..13, `'+'`=14, `'='`=15 (16 tokens).
    No special tokens are added automatically; padding side is left (for generation).

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]
    """
    from banel_trl.testing import character_tokenizer

    roles = ["pad_token", "bos_token", "eos_token", "unk_token"]
    return character_tokenizer(
        CHARS,
        dict(zip(roles, SPECIAL_TOKENS, strict=True)),
        fuse_decoder=True,
        model_max_length=64,
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str = DEFAULT_TARGET_PATH):
    """
    Load the saved tokenizer with its exact character-level pipeline.

    Prefer this (or [`build_tokenizer`]) over `AutoTokenizer.from_pretrained`: because the model config says `qwen2`,
    transformers 5 maps `AutoTokenizer` to `Qwen2Tokenizer`, which swaps in Qwen's byte-level pre-tokenizer. That gives
    identical ids and decoding on the task alphabet (digits, `+`, `=`, special tokens) but silently drops
    out-of-vocabulary characters such as spaces instead of mapping them to `<unk>`.

    Args:
        path (`str`, *optional*, defaults to `DEFAULT_TARGET_PATH`):
            A folder holding the saved tokenizer (both model folders hold the same one).

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


def _load_model(path: str):
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(path)
    model.eval()
    return model


def load_target(path: str = DEFAULT_TARGET_PATH):
    """Load the target adder (`Qwen2ForCausalLM`) in eval mode, from `path` (defaults to the committed model)."""
    return _load_model(path)


def load_attacker(path: str = DEFAULT_ATTACKER_PATH):
    """Load the pretrained attacker (`Qwen2ForCausalLM`) in eval mode, from `path` (defaults to the committed model)."""
    return _load_model(path)
