"""GSM8K, the second experiment of BaNEL (arXiv 2510.09596): prompts, an exact-match reward, hard questions."""

import os
import re
from decimal import Decimal, InvalidOperation

import torch
from datasets import Dataset, load_dataset

from ..data import pad_prompts, tokenize_prompts


DEFAULT_INSTRUCTION = "Solve the problem step by step. Put the final answer, a number, after '####'."
_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?"
_HASHES = re.compile(r"####\s*(" + _NUMBER + ")")
_BOXED = re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}")
_ANY_NUMBER = re.compile(_NUMBER)


def normalize_number(text: str) -> Decimal | None:
    """`"$1,200"`, `"1200.00"` and `"1200"` all give `Decimal(1200)`; anything else that is not a number gives None."""
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value.normalize() if value.is_finite() else None


def extract_final_number(text: str) -> Decimal | None:
    """
    The final numeric answer of a solution: after the last `####` (GSM8K's format), else in the last `\\boxed{...}`,
    else the last number in the text. Dollar signs, thousands separators and trailing zeros are ignored.
    """
    for pattern in (_HASHES, _BOXED, _ANY_NUMBER):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    return None


def _text(completion) -> str:
    """A completion as text: TRL passes strings for standard prompts and a list of messages for conversational."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def gsm8k_exact_match(completions: list, answer: list[str], **kwargs) -> list[float]:
    """
    TRL reward function: 1.0 when the completion's final number (see [`extract_final_number`]) equals the reference
    answer's, else 0.0. `answer` is the dataset column: a GSM8K solution ending in `#### 42`, or the number itself.
    """
    rewards = []
    for completion, reference in zip(completions, answer, strict=True):
        expected = extract_final_number(reference)
        if expected is None:
            raise ValueError(f"The reference answer {reference!r} holds no number.")
        rewards.append(float(extract_final_number(_text(completion)) == expected))
    return rewards


def load_gsm8k(
    dataset_name: str = "openai/gsm8k", dataset_config: str | None = "main", split: str = "test"
) -> Dataset:
    """
    GSM8K problems with `question` and `answer` columns: from the Hub (`openai/gsm8k`, config `main`), or from a local
    `.json`/`.jsonl` file in the same format.
    """
    if os.path.isfile(dataset_name):
        dataset = load_dataset("json", data_files=dataset_name, split="train")
    else:
        dataset = load_dataset(dataset_name, dataset_config, split=split)
    missing = {"question", "answer"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"{dataset_name} lacks the GSM8K columns {sorted(missing)}; its columns are {dataset.column_names}."
        )
    return dataset


def to_conversational(dataset: Dataset, instruction: str = DEFAULT_INSTRUCTION) -> Dataset:
    """A `prompt` column of one user message (question, then `instruction`) for the chat template; `answer` stays."""
    return dataset.map(
        lambda example: {"prompt": [{"role": "user", "content": f"{example['question']}\n\n{instruction}".strip()}]}
    )


@torch.no_grad()
def estimate_success_rates(
    model,
    tokenizer,
    dataset: Dataset,
    num_samples: int,
    generation_config,
    batch_size: int = 64,
) -> list[int]:
    """
    Successes of `model` on each question of `dataset` (with `prompt` and `answer` columns) among `num_samples`
    sampled completions, to select the questions the base model rarely solves.

    Args:
        model ([`~transformers.PreTrainedModel`]):
            The base model `p_theta`.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer, with a chat template.
        dataset ([`~datasets.Dataset`]):
            Conversational prompts and answers (see [`to_conversational`]).
        num_samples (`int`):
            Completions sampled per question.
        generation_config ([`~transformers.GenerationConfig`]):
            Sampling settings, those of the BaNEL run.
        batch_size (`int`, *optional*, defaults to `64`):
            Sequences per call to `generate`.

    Returns:
        `list[int]`: the number of successes of each question.
    """
    model.eval()
    successes = []
    for example in dataset:
        prompt_ids = tokenize_prompts([example["prompt"]], tokenizer)[0]
        count = 0
        for start in range(0, num_samples, batch_size):
            rows = min(batch_size, num_samples - start)
            input_ids, attention_mask = pad_prompts([prompt_ids] * rows, tokenizer.pad_token_id)
            device = model.device
            sequences = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
            )
            completions = tokenizer.batch_decode(sequences[:, input_ids.size(1) :], skip_special_tokens=True)
            count += int(sum(gsm8k_exact_match(completions, [example["answer"]] * rows)))
        successes.append(count)
    return successes
