"""Prompts in, token ids out: tokenising the dataset's prompts and batching negatives for the fit."""

import pandas as pd
import torch
from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase
from trl.data_utils import is_conversational
from trl.trainer.utils import pad


def check_dataset(dataset, name: str) -> None:
    """Refuse a dataset BaNEL cannot draw prompts from, naming it (`name`) and what to fix."""
    if dataset is None:
        raise ValueError(f"`{name}` is required: BaNEL samples completions for its prompts.")
    _check_dataset_type(dataset, name)
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty.")
    if "prompt" not in dataset.column_names:
        raise ValueError(f"`{name}` must have a 'prompt' column; its columns are {dataset.column_names}.")
    for i, prompt in enumerate(dataset["prompt"][:]):  # the whole column at once: per-row reads are 100x slower
        problem = _prompt_problem(prompt)
        if problem is not None:
            raise ValueError(
                f"Prompt {i} of `{name}` is {shorten(prompt)} ({type(prompt).__name__}): {problem}. Prompts must be "
                "strings (\"\" for unconditional generation) or lists of {'role': ..., 'content': ...} messages, as "
                "in TRL."
            )


def prompt_dataset(dataset, name: str, named: bool = False):
    """
    `dataset` checked (`check_dataset`) and in memory: an `IterableDataset` (streaming) is read once, since BaNEL draws
    its prompts afresh every round (it must be finite). With `named`, a dict of datasets (a `DatasetDict`, as
    `Trainer.evaluate` takes for `eval_dataset`) is accepted too: each one checked, under its name.
    """
    if named and isinstance(dataset, dict) and dataset and all(_is_dataset(split) for split in dataset.values()):
        return {key: prompt_dataset(split, f"{name}[{key!r}]") for key, split in dataset.items()}
    if isinstance(dataset, IterableDataset):
        dataset = Dataset.from_list(list(dataset))
    check_dataset(dataset, name)
    return dataset


def _is_dataset(dataset) -> bool:
    return isinstance(dataset, Dataset | IterableDataset)


def _check_dataset_type(dataset, name: str) -> None:
    """Refuse anything but a map-style `datasets.Dataset`, with the call that makes one."""
    if isinstance(dataset, dict):  # DatasetDict and IterableDatasetDict included
        if all(_is_dataset(split) for split in dataset.values()):
            raise ValueError(
                f"`{name}` is a {type(dataset).__name__} of splits {list(dataset)}: pass one split, e.g. "
                f"`{name}=dataset[{next(iter(dataset), 'train')!r}]`."
            )
        raise ValueError(f"`{name}` must be a Dataset, got a dict: pass `Dataset.from_dict({{'prompt': [...]}})`.")
    if isinstance(dataset, list | tuple):
        raise ValueError(
            f"`{name}` must be a Dataset, got a {type(dataset).__name__}: pass `Dataset.from_list(rows)`."
        )
    if isinstance(dataset, pd.DataFrame):
        raise ValueError(
            f"`{name}` must be a Dataset, got a pandas DataFrame: pass `Dataset.from_pandas(df, preserve_index=False)`."
        )
    if not isinstance(dataset, Dataset):
        raise ValueError(
            f"`{name}` must be a `datasets.Dataset` with a 'prompt' column, got {type(dataset).__name__}: build one "
            "with `Dataset.from_list`, `Dataset.from_dict` or `datasets.load_dataset`."
        )


def _prompt_problem(prompt) -> str | None:
    """What is wrong with one prompt, with its fix; `None` for a standard (text) or conversational prompt."""
    if isinstance(prompt, str):
        return None
    if prompt is None:
        return "a missing prompt; drop those rows, e.g. `dataset.filter(lambda x: x['prompt'] is not None)`"
    if isinstance(prompt, bytes):
        return "bytes, not text; decode the column, e.g. `dataset.map(lambda x: {'prompt': x['prompt'].decode()})`"
    if isinstance(prompt, dict):
        return "a dict; a conversational prompt is a list of messages (`[message]` for a single one)"
    if isinstance(prompt, list):
        if not prompt:
            return "an empty list; a conversational prompt needs at least one message"
        if all(isinstance(message, dict) and "role" in message and "content" in message for message in prompt):
            return None
        return "a list whose items are not all {'role', 'content'} messages"
    return "not text; convert the column, e.g. `dataset.map(lambda x: {'prompt': str(x['prompt'])})`"


def shorten(value, width: int = 60) -> str:
    """`repr(value)`, cut to `width` characters."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def tokenize_prompts(
    prompts: list, tokenizer: PreTrainedTokenizerBase, chat_template_kwargs: dict | None = None
) -> list[list[int]]:
    """
    Token ids of each prompt, as GRPOTrainer builds them: conversational prompts go through the chat template with a
    generation prompt, standard ones through the tokenizer. An empty prompt becomes the BOS token, so an unconditional
    generator is trained from a dataset of empty prompts.
    """
    if is_conversational({"prompt": prompts[0]}):
        prompt_ids = tokenizer.apply_chat_template(
            prompts, add_generation_prompt=True, tokenize=True, return_dict=True, **(chat_template_kwargs or {})
        )["input_ids"]
    else:
        prompt_ids = tokenizer(text=prompts)["input_ids"]
    prompt_ids = [list(ids) for ids in prompt_ids]
    if any(not ids for ids in prompt_ids):
        if tokenizer.bos_token_id is None:
            raise ValueError(
                "An empty prompt needs a BOS token to start generation, but the tokenizer has none. Set "
                "`tokenizer.bos_token`, or give every prompt at least one token."
            )
        prompt_ids = [ids or [tokenizer.bos_token_id] for ids in prompt_ids]
    return prompt_ids


def decode_completions(
    completion_ids: list[list[int]], tokenizer: PreTrainedTokenizerBase, conversational: bool
) -> list:
    """Completions in GRPO's reward-function format: text, or an assistant message for conversational prompts."""
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    if conversational:
        return [[{"role": "assistant", "content": text}] for text in texts]
    return texts


def pad_prompts(
    prompt_ids: list[list[int]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts (to a multiple of `pad_to_multiple_of` tokens when set); returns `(input_ids, attention_mask)`."""
    tensors = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
    input_ids = pad(tensors, padding_value=pad_token_id, padding_side="left", pad_to_multiple_of=pad_to_multiple_of)
    attention_mask = pad(
        [torch.ones_like(t) for t in tensors],
        padding_value=0,
        padding_side="left",
        pad_to_multiple_of=pad_to_multiple_of,
    )
    return input_ids, attention_mask


class NegativesCollator:
    """
    Batches `{"prompt_ids", "completion_ids"}` examples into the layout scored by `completion_log_probs`: prompts
    left-padded, completions right-padded, each to a multiple of `pad_to_multiple_of` tokens when it is set (GRPO's
    option, for accelerators that compile once per shape; the masks keep the padding out of the likelihoods).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prompt_ids, prompt_mask = pad_prompts(
            [e["prompt_ids"] for e in examples], self.pad_token_id, self.pad_to_multiple_of
        )
        completions = [torch.tensor(e["completion_ids"], dtype=torch.long) for e in examples]
        multiple = self.pad_to_multiple_of
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": pad(completions, padding_value=self.pad_token_id, pad_to_multiple_of=multiple),
            "completion_mask": pad(
                [torch.ones_like(c) for c in completions], padding_value=0, pad_to_multiple_of=multiple
            ),
        }
