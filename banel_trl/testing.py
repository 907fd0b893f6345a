"""Tiny offline models for tests and examples: a character tokenizer and a small Qwen2, no Hub access needed."""

import random

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification


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


def _tiny_qwen2_config(tokenizer: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, **kwargs) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )


def tiny_qwen2(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Qwen2 causal LM sized for CPU tests."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_tiny_qwen2_config(tokenizer, hidden_size, num_layers, tie_word_embeddings=True))
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


CHECKSUM_MODULUS = 50


def checksum_is_zero(completions, **kwargs):
    """
    The checksum task's reward (TRL's contract): 1 for a completion whose letters, weighted by position, sum to 0
    modulo `CHECKSUM_MODULUS` (letter `a` is 1, `b` 2, ...; spaces are ignored).
    """
    letters = ["".join(completion.split()) for completion in completions]
    weighted = [sum((i + 1) * (ord(letter) - ord("a") + 1) for i, letter in enumerate(text)) for text in letters]
    return [float(bool(text) and total % CHECKSUM_MODULUS == 0) for text, total in zip(letters, weighted, strict=True)]


def checksum_proposal(seed: int = 0, length: int = 10, alphabet: str = "abcdefgh"):
    """
    The checksum task's proposal, a task whose successes look like ordinary samples: a tiny Qwen2 pretrained on
    `length`-letter strings from a random Markov chain over `alphabet` (its transitions drawn from `seed`). A success
    ([`checksum_is_zero`]) is a hash of the whole string, about 1 in `CHECKSUM_MODULUS` of most kinds of string:
    failures tell little of where successes are, and BaNEL must at least keep the pretrained rate. Returns
    `(tokenizer, model)`.
    """
    tokenizer = char_tokenizer(alphabet)
    rng = random.Random(seed)
    transitions = {letter: [rng.expovariate(1.0) for _ in alphabet] for letter in alphabet}

    def string() -> str:
        letters = [rng.choice(alphabet)]
        while len(letters) < length:
            letters.append(rng.choices(alphabet, weights=transitions[letters[-1]])[0])
        return "".join(letters)

    texts = [string() for _ in range(5000)]
    return tokenizer, pretrain(tiny_qwen2(tokenizer, seed=seed), tokenizer, texts, steps=300, seed=seed)


# Offline stand-ins for the Hub fixtures of TRL's tests (tests/test_grpo_trainer_port.py).
ZEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ,.'-?!"
ZEN_PROMPTS = [  # trl-internal-testing/zen, standard_prompt_only: 17 train prompts, then 2 test prompts
    "Beautiful is better than", "Explicit is", "Simple is better", "Complex", "Flat is better than",
    "Sparse is better", "Readability", "Special cases aren't special", "Although practicality beats",
    "Errors should never", "Unless explicitly", "In the face of ambiguity, refuse", "There should be one--",
    "Although that way may not be", "Now is better than", "Although never is often better than",
    "If the implementation is hard to explain,", "If the implementation is easy to explain,", "Namespaces are one",
]  # fmt: skip
ZEN_QUESTIONS = [  # conversational_prompt_only: the same split
    "What is better than ugly?", "What is better than implicit?", "What is better than complex?",
    "What is better than complicated?", "What is better than nested?", "What is better than dense?",
    "What counts?", "Are special cases enough to break the rules?", "What beats purity?",
    "What should never pass silently?", "When can errors pass silently?", "What should you do in the face of ambiguity?",
    "How many ways should there be to do it?", "For whom may the way not be obvious at first?",
    "What is better than never?", "Is never better than right now?", "What does it mean if the implementation is hard?",
    "What does it mean if the implementation is easy?", "Any great ideas?",
]  # fmt: skip


def zen_dataset(config_name: str = "standard_prompt_only", split: str | None = None, streaming: bool = False):
    """
    Offline stand-in for `load_dataset("trl-internal-testing/zen", config_name, split=split, streaming=streaming)`:
    `"standard_prompt_only"` or `"conversational_prompt_only"`, splits `"train"` (17 prompts) and `"test"` (2).
    """
    from datasets import Dataset, DatasetDict, IterableDatasetDict

    if config_name == "standard_prompt_only":
        rows = [{"prompt": prompt} for prompt in ZEN_PROMPTS]
    elif config_name == "conversational_prompt_only":
        rows = [{"prompt": [{"role": "user", "content": question}]} for question in ZEN_QUESTIONS]
    else:
        raise ValueError(f"No offline zen config {config_name!r}.")
    splits = {"train": Dataset.from_list(rows[:-2]), "test": Dataset.from_list(rows[-2:])}
    if streaming:
        splits = IterableDatasetDict({name: dataset.to_iterable_dataset() for name, dataset in splits.items()})
    else:
        splits = DatasetDict(splits)
    return splits if split is None else splits[split]


def tiny_reward_model(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised Qwen2 reward model (one score) sized for CPU tests: its scores are all near 0."""
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(_tiny_qwen2_config(tokenizer, hidden_size, num_layers, num_labels=1))
