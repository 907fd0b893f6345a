"""Tiny offline models for tests and examples: a character tokenizer and a small Qwen2, no Hub access needed."""

import random

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Renders a conversation as its contents joined by "|", then "=" where the assistant's turn starts.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['content'] }}{% if not loop.last %}|{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}={% endif %}"
)


def character_tokenizer(
    characters: list[str], special_tokens: dict[str, str], fuse_decoder: bool = False, **tokenizer_kwargs
) -> PreTrainedTokenizerFast:
    """
    A character-level tokenizer built offline: one token per character, and the special tokens.

    Ids are the special tokens first, in the order of `special_tokens`, then `characters` in order. Any other character
    maps to the unknown token. No special token is added by encoding itself, and padding is on the left (for
    generation).

    Args:
        characters (`list[str]`):
            The vocabulary's characters, in id order, without repeats.
        special_tokens (`dict[str, str]`):
            The special tokens by role, e.g. `{"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>"}`; `"unk_token"` is required.
        fuse_decoder (`bool`, *optional*, defaults to `False`):
            Decode tokens joined with nothing between them (`"ab"`) instead of with spaces (`"a b"`).
        **tokenizer_kwargs:
            Further arguments of [`~transformers.PreTrainedTokenizerFast`], e.g. `model_max_length`.

    Returns:
        [`~transformers.PreTrainedTokenizerFast`]
    """
    vocab = {token: i for i, token in enumerate([*special_tokens.values(), *characters])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special_tokens["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    if fuse_decoder:
        backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="left", **special_tokens, **tokenizer_kwargs)


def char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character of `alphabet` (plus `|` and `=` for the chat template) and pad/bos/eos/unk."""
    tokenizer = character_tokenizer(sorted(set(alphabet) | {"|", "="}), SPECIAL_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Qwen2 causal LM sized for CPU tests."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def pretrain(model, tokenizer, texts: list[str], steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed=0):
    """Fit `model` by maximum likelihood on `<s>text</s>` sequences (a proposal p_theta for tests and examples)."""
    generator = torch.Generator().manual_seed(seed)
    encoded = [[tokenizer.bos_token_id, *tokenizer(t)["input_ids"], tokenizer.eos_token_id] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(encoded), (batch_size,), generator=generator).tolist()
        length = max(len(encoded[i]) for i in rows)
        input_ids = torch.full((batch_size, length), tokenizer.pad_token_id)
        for b, i in enumerate(rows):
            input_ids[b, : len(encoded[i])] = torch.tensor(encoded[i])
        labels = input_ids.masked_fill(input_ids == tokenizer.pad_token_id, -100)
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


def starts_with_b(completions, **kwargs):
    """The toy task's reward (TRL's contract): 1 for a completion starting with "b"."""
    return [float(completion.startswith("b")) for completion in completions]


def rare_b_proposal(seed: int = 0, length: int = 6, rate: float = 0.02):
    """
    The toy task's proposal: a tiny Qwen2 pretrained on `length`-letter strings over "abcd" that start with "b" only
    `rate` of the time. Successes (strings starting with "b") are rare and structurally unlike the failures.
    Returns `(tokenizer, model)`.
    """
    tokenizer = char_tokenizer("abcd")
    rng = random.Random(seed)
    texts = [
        ("b" if rng.random() < rate else rng.choice("acd")) + "".join(rng.choice("abcd") for _ in range(length - 1))
        for _ in range(5000)
    ]
    return tokenizer, pretrain(tiny_qwen2(tokenizer, seed=seed), tokenizer, texts, steps=300, seed=seed)
