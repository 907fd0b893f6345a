"""Prompts in, token ids out: tokenising the dataset's prompts and batching negatives for the fit."""

import torch
from datasets import IterableDataset
from transformers import PreTrainedTokenizerBase
from trl.data_utils import is_conversational
from trl.trainer.utils import pad


def check_dataset(dataset, name: str) -> None:
    """Refuse a dataset BaNEL cannot draw prompts from, naming it (`name`) and what to fix."""
    if dataset is None:
        raise ValueError(f"`{name}` is required: BaNEL samples completions for its prompts.")
    if isinstance(dataset, IterableDataset):
        raise ValueError(f"`{name}` must be a map-style Dataset (BaNEL cycles through its prompts).")
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty.")
    if "prompt" not in dataset.column_names:
        raise ValueError(f"`{name}` must have a 'prompt' column; its columns are {dataset.column_names}.")


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


def pad_prompts(prompt_ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation; returns `(input_ids, attention_mask)`."""
    tensors = [torch.tensor(ids, dtype=torch.long) for ids in prompt_ids]
    input_ids = pad(tensors, padding_value=pad_token_id, padding_side="left")
    attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")
    return input_ids, attention_mask


class NegativesCollator:
    """Batches `{"prompt_ids", "completion_ids"}` examples into the layout scored by `completion_log_probs`."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prompt_ids, prompt_mask = pad_prompts([e["prompt_ids"] for e in examples], self.pad_token_id)
        completions = [torch.tensor(e["completion_ids"], dtype=torch.long) for e in examples]
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": pad(completions, padding_value=self.pad_token_id),
            "completion_mask": pad([torch.ones_like(c) for c in completions], padding_value=0),
        }
