"""Reward functions under TRL's contract: loading them, calling them, and combining their outputs."""

import asyncio
import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


RewardFunc = str | PreTrainedModel | Callable[..., list[float | None]]


def reward_func_name(reward_func: Any) -> str:
    if isinstance(reward_func, nn.Module):
        return reward_func.config._name_or_path.split("/")[-1]
    return getattr(reward_func, "__name__", type(reward_func).__name__)


def load_reward_funcs(
    reward_funcs: RewardFunc | list[RewardFunc],
    reward_processing_classes: PreTrainedTokenizerBase | list[PreTrainedTokenizerBase] | None,
    model_init_kwargs: dict | None = None,
) -> tuple[list, list[PreTrainedTokenizerBase | None]]:
    """Resolve `reward_funcs` as GRPOTrainer does: a string is a sequence-classification reward model to load."""
    reward_funcs = list(reward_funcs) if isinstance(reward_funcs, list) else [reward_funcs]
    if not reward_funcs:
        raise ValueError("`reward_funcs` is empty: BaNEL needs at least one reward function.")
    if reward_processing_classes is None:
        reward_processing_classes = [None] * len(reward_funcs)
    elif not isinstance(reward_processing_classes, list):
        reward_processing_classes = [reward_processing_classes]
    if len(reward_processing_classes) != len(reward_funcs):
        raise ValueError(
            f"The number of reward processing classes ({len(reward_processing_classes)}) must match the number of "
            f"reward functions ({len(reward_funcs)})."
        )
    for i, reward_func in enumerate(reward_funcs):
        if isinstance(reward_func, str):
            reward_funcs[i] = AutoModelForSequenceClassification.from_pretrained(
                reward_func, num_labels=1, **(model_init_kwargs or {})
            )
        if isinstance(reward_funcs[i], PreTrainedModel):
            tokenizer = reward_processing_classes[i] or AutoTokenizer.from_pretrained(
                reward_funcs[i].config._name_or_path
            )
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            reward_funcs[i].config.pad_token_id = tokenizer.pad_token_id
            reward_processing_classes[i] = tokenizer
        elif not callable(reward_funcs[i]):
            raise ValueError(f"Reward function {i} is neither a callable, a model nor a model id: {reward_func!r}.")
    return reward_funcs, reward_processing_classes


def _as_reward(value: Any, name: str, index: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Reward function {name!r} returned {value!r} ({type(value).__name__}) for sample {index}; expected a "
            "float or None."
        )
    value = float(value)
    return None if math.isnan(value) else value


def _check_outputs(outputs: Any, name: str, num_samples: int) -> list[float | None]:
    if outputs is None or isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__len__"):
        raise TypeError(f"Reward function {name!r} returned {type(outputs).__name__}; expected a list of floats.")
    if len(outputs) != num_samples:
        raise ValueError(
            f"Reward function {name!r} returned {len(outputs)} rewards, but {num_samples} were expected (one per "
            "prompt-completion pair)."
        )
    return [_as_reward(value, name, i) for i, value in enumerate(outputs)]


@torch.inference_mode()
def _reward_model_scores(model: nn.Module, tokenizer, prompts: list, completions: list) -> list[float]:
    if isinstance(prompts[0], list):  # conversational
        texts = [tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
    else:
        texts = [p + c for p, c in zip(prompts, completions)]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    inputs = inputs.to(model.device)
    return model(**inputs).logits[:, 0].tolist()


def call_reward_funcs(
    reward_funcs: list,
    reward_processing_classes: list,
    prompts: list,
    completions: list,
    completion_ids: list[list[int]],
    **reward_kwargs,
) -> list[list[float | None]]:
    """
    Call every reward function once on the batch, with TRL's signature
    `f(prompts=..., completions=..., completion_ids=..., **dataset_columns)`, and return one row of rewards per
    sample (None where a function returned None or NaN). Async functions run concurrently.
    """
    num_samples = len(prompts)
    columns: list[list[float | None] | None] = [None] * len(reward_funcs)
    pending_async = {}
    for i, (reward_func, tokenizer) in enumerate(zip(reward_funcs, reward_processing_classes)):
        name = reward_func_name(reward_func)
        try:
            if isinstance(reward_func, nn.Module):
                outputs = _reward_model_scores(reward_func, tokenizer, prompts, completions)
            elif inspect.iscoroutinefunction(reward_func) or inspect.iscoroutinefunction(
                getattr(reward_func, "__call__", None)
            ):
                pending_async[i] = reward_func(
                    prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs
                )
                continue
            else:
                outputs = reward_func(
                    prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs
                )
        except Exception as error:
            for coroutine in pending_async.values():
                coroutine.close()
            raise RuntimeError(
                f"Reward function {name!r} raised {type(error).__name__} on a batch of {num_samples} samples "
                f"(first: prompt={prompts[0]!r}, completion={completions[0]!r}). Nothing of this batch was recorded; "
                "fix the function and call `train()` again to resume."
            ) from error
        columns[i] = _check_outputs(outputs, name, num_samples)
    if pending_async:
        async def gather():
            return await asyncio.gather(*pending_async.values())

        for i, outputs in zip(pending_async, asyncio.run(gather())):
            columns[i] = _check_outputs(outputs, reward_func_name(reward_funcs[i]), num_samples)
    return [list(row) for row in zip(*columns)]


def weighted_reward(rewards: list[float | None], weights: list[float]) -> float | None:
    """GRPO's combination: the weighted sum over the functions that gave a reward; None if none did."""
    given = [(r, w) for r, w in zip(rewards, weights) if r is not None]
    return sum(r * w for r, w in given) if given else None
