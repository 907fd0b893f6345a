"""Reward functions under TRL's contract: loading them, calling them, and combining their outputs."""

import asyncio
import contextlib
import copy
import inspect
import logging
import math
import numbers
import reprlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .data import decode_completions
from .reward_logs import RewardLogs


logger = logging.getLogger(__name__)

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


class RewardFunctionError(RuntimeError):
    """
    A reward function raised, or broke TRL's contract, on a batch. `rows` maps the index of every sample whose
    results are all usable to its row of rewards: the trainer records those (they were paid for) before raising.
    """

    def __init__(self, message: str, rows: dict[int, list[float | None]] | None = None):
        super().__init__(message)
        self.rows = rows or {}


def _describe(prompts: list, completions: list, index: int) -> str:
    return f"sample {index} (prompt={prompts[index]!r}, completion={completions[index]!r})"


class _UnusableReward(ValueError):
    """Why a value is no reward, in a message that names it."""


def _as_reward(value: Any) -> float | None:
    """
    A reward as a float, None for no reward (None or NaN). Python, numpy and torch numbers and booleans count, as do
    numpy arrays and tensors of one element; raises `_UnusableReward` for anything else (inf, 10**400, a string...).
    """
    if (
        isinstance(value, (torch.Tensor, np.ndarray, np.generic))
        and (value.numel() if isinstance(value, torch.Tensor) else value.size) == 1
    ):
        value = value.item()
    if value is None:
        return None
    if not isinstance(value, numbers.Real):
        raise _UnusableReward(f"{reprlib.repr(value)} ({type(value).__name__}); expected a float or None")
    try:
        value = float(value)
    except OverflowError:
        raise _UnusableReward(
            f"{reprlib.repr(value)} ({type(value).__name__}), which overflows a float; expected a finite float, or "
            "None or NaN for no reward"
        ) from None
    if math.isinf(value):
        raise _UnusableReward(f"{value} (not finite); expected a finite float, or None or NaN for no reward")
    return None if math.isnan(value) else value


def _check_outputs(outputs: Any, name: str, prompts: list, completions: list) -> tuple[list, dict[int, str]]:
    """
    The function's rewards (None where unusable) and, per unusable sample, why; raises [`RewardFunctionError`] if the
    output is not one value per sample of the batch (`prompts`, as handed over: the function had a copy).
    """
    num_samples, values = len(prompts), None
    if not (outputs is None or isinstance(outputs, (str, bytes, dict)) or not hasattr(outputs, "__len__")):
        try:
            values = list(outputs)
        except Exception:  # sized but not iterable: a 0-d array or tensor
            pass
    if values is None:
        raise RewardFunctionError(
            f"Reward function {name!r} returned {type(outputs).__name__} for a batch of {num_samples} samples "
            f"(first: {_describe(prompts, completions, 0)}); expected a list of floats. Nothing of this batch was "
            "recorded; fix the function and call `train()` again to resume."
        )
    if len(values) != num_samples:
        raise RewardFunctionError(
            f"Reward function {name!r} returned {len(values)} rewards for a batch of {num_samples} samples (first: "
            f"{_describe(prompts, completions, 0)}); expected one per prompt-completion pair. Nothing of this batch "
            "was recorded; fix the function and call `train()` again to resume."
        )
    rewards, problems = [], {}
    for index, value in enumerate(values):
        try:
            rewards.append(_as_reward(value))
        except Exception as error:  # a value that cannot be a finite float: unusable for this sample only
            rewards.append(None)
            problems[index] = (
                str(error)
                if isinstance(error, _UnusableReward)
                else f"{reprlib.repr(value)} ({type(value).__name__}), unreadable as a float ({error!r})"
            )
    return rewards, problems


def _raised(name: str, error: BaseException, prompts: list, completions: list) -> RewardFunctionError:
    return RewardFunctionError(
        f"Reward function {name!r} raised {type(error).__name__}: {error} on a batch of {len(prompts)} samples "
        f"(first: {_describe(prompts, completions, 0)}). Nothing of this batch was recorded; fix the function and "
        "call `train()` again to resume."
    )


@torch.inference_mode()
def _reward_model_scores(model: nn.Module, tokenizer, prompts: list, completions: list) -> list[float]:
    if isinstance(prompts[0], list):  # conversational
        texts = [
            tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions, strict=True)
        ]
    else:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    inputs = inputs.to(model.device)
    return model(**inputs).logits[:, 0].tolist()


def _await_all(pending: dict[int, Any], names: list[str], prompts: list, completions: list) -> dict[int, Any]:
    """
    Run the started async reward calls `pending` (function index -> coroutine) concurrently. Every call runs to
    completion (it is being paid for) before an error is raised.
    """

    async def gather():
        return await asyncio.gather(*pending.values(), return_exceptions=True)

    results = dict(zip(pending, asyncio.run(gather()), strict=True))
    for i, outputs in results.items():
        if isinstance(outputs, BaseException):
            if not isinstance(outputs, Exception):
                raise outputs
            raise _raised(names[i], outputs, prompts, completions) from outputs
    return results


def _call(reward_func: Any, tokenizer, inputs: dict, trainer_state, log_kwargs: dict) -> Any:
    """
    One reward function on a batch: a reward model's scores, a coroutine for an async function (not started yet), or
    the outputs of a callable. A callable gets its own deep copy of `inputs` (prompts, completions, ids and dataset
    columns): whatever it does to them, the batch, the other functions and the ledger keep what was paid for. It also
    gets `trainer_state` and `log_kwargs` (GRPO's `log_extra` and `log_metric`) as they are.
    """
    if isinstance(reward_func, nn.Module):
        return _reward_model_scores(reward_func, tokenizer, inputs["prompts"], inputs["completions"])
    return reward_func(**copy.deepcopy(inputs), trainer_state=trainer_state, **log_kwargs)


def _discard(*args) -> None:
    """What `log_extra` and `log_metric` do when nobody collects the logs."""


def _is_async(reward_func: Any) -> bool:
    return inspect.iscoroutinefunction(reward_func) or (
        callable(reward_func) and inspect.iscoroutinefunction(type(reward_func).__call__)
    )


def call_reward_funcs(
    reward_funcs: list,
    reward_processing_classes: list,
    prompts: list,
    completions: list,
    completion_ids: list[list[int]],
    trainer_state=None,
    log_extra: Callable[[str, list], None] | None = None,
    log_metric: Callable[[str, float], None] | None = None,
    **reward_kwargs,
) -> list[list[float | None]]:
    """
    Call every reward function once on the batch, with TRL's signature `f(prompts=..., completions=...,
    completion_ids=..., trainer_state=..., log_extra=..., log_metric=..., **dataset_columns)`, and return one row of
    rewards per sample (None where a function returned None or NaN). Async functions run concurrently. Each function
    gets deep copies of the batch's prompts, completions, ids and columns (not of `trainer_state`, `log_extra` and
    `log_metric`, which discard what is logged when `None`): one that edits them in place changes neither what is
    recorded nor what the other functions see. Reward models get none of these.

    Raises [`RewardFunctionError`] naming the function and the sample when a function raises, returns something
    other than one reward per sample, or returns a value that is not a finite float, None or NaN (a string, inf,
    10**400...). When only some values are unusable, the error's `rows` holds the rewards of the samples whose values
    all are.
    """
    num_samples = len(prompts)
    inputs = dict(prompts=prompts, completions=completions, completion_ids=completion_ids, **reward_kwargs)
    columns: list[list[float | None] | None] = [None] * len(reward_funcs)
    problems: dict[int, list[str]] = {}
    names = [reward_func_name(reward_func) for reward_func in reward_funcs]
    log_kwargs = dict(log_extra=log_extra or _discard, log_metric=log_metric or _discard)

    def check(i: int, outputs: Any) -> None:
        columns[i], function_problems = _check_outputs(outputs, names[i], prompts, completions)
        for index, problem in function_problems.items():
            problems.setdefault(index, []).append(f"reward function {names[i]!r} returned {problem}")

    pending_async = {}
    for i, (reward_func, tokenizer) in enumerate(zip(reward_funcs, reward_processing_classes, strict=True)):
        try:
            outputs = _call(reward_func, tokenizer, inputs, trainer_state, log_kwargs)
            if _is_async(reward_func):
                pending_async[i] = outputs
                continue
            check(i, outputs)  # raises RewardFunctionError only
        except BaseException as error:
            for coroutine in pending_async.values():
                coroutine.close()  # never started: nothing paid
            if isinstance(error, RewardFunctionError) or not isinstance(error, Exception):
                raise
            raise _raised(names[i], error, prompts, completions) from error
    if pending_async:
        for i, outputs in _await_all(pending_async, names, prompts, completions).items():
            check(i, outputs)
    rows = [list(row) for row in zip(*columns, strict=True)]
    if problems:
        first = min(problems)
        raise RewardFunctionError(
            f"Unusable rewards for {len(problems)} of {num_samples} samples; "
            f"{_describe(prompts, completions, first)}: {'; '.join(problems[first])}. Rewards must be finite floats, "
            f"or None or NaN for no reward. The {num_samples - len(problems)} other samples of the batch were "
            "recorded; fix the function and call `train()` again to resume.",
            rows={index: row for index, row in enumerate(rows) if index not in problems},
        )
    return rows


def check_reward_weights(reward_weights: list[float] | None, num_reward_funcs: int) -> list[float]:
    """GRPO's `reward_weights`, one per reward function; 1 for each when `None`."""
    if reward_weights is not None and len(reward_weights) != num_reward_funcs:
        raise ValueError(
            f"Number of reward weights ({len(reward_weights)}) must match number of reward functions "
            f"({num_reward_funcs})."
        )
    return reward_weights or [1.0] * num_reward_funcs


def weighted_reward(rewards: list[float | None], weights: list[float]) -> float | None:
    """GRPO's weighted sum over the functions that gave a reward; None if none did, or if the sum overflows."""
    given = [(r, w) for r, w in zip(rewards, weights, strict=True) if r is not None]
    total = sum(r * w for r, w in given) if given else None
    return total if total is not None and math.isfinite(total) else None


class RewardEvaluator:
    """
    A run's reward functions, called as [`~trl.GRPOTrainer`] calls them, and the success test on their weighted sum.

    Args:
        reward_funcs (`list`):
            Callables under TRL's contract, or sequence-classification reward models.
        reward_processing_classes (`list`):
            The reward models' tokenizers (None for callables).
        reward_weights (`list[float]`):
            One weight per function, as GRPO's `reward_weights`.
        success_threshold (`float`):
            A sample succeeds when its weighted reward reaches it.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Decodes the completions handed to the functions.
        conversational (`bool`):
            Whether completions are handed over as assistant messages (conversational prompts) or as text.
        device (`torch.device`):
            Where the run's random state lives (see [`~RewardEvaluator.__call__`]).

    What the functions log with `log_extra` and `log_metric` accumulates in `logs` (a [`RewardLogs`]) until
    [`~RewardEvaluator.pop_logs`] returns it. `warned` holds the kinds of warning about the rewards given once per
    run.
    """

    def __init__(
        self,
        reward_funcs: list,
        reward_processing_classes: list,
        reward_weights: list[float],
        success_threshold: float,
        tokenizer: PreTrainedTokenizerBase,
        conversational: bool,
        device: torch.device,
    ):
        self.reward_funcs = reward_funcs
        self.reward_processing_classes = reward_processing_classes
        self.reward_weights = reward_weights
        self.success_threshold = success_threshold
        self.tokenizer = tokenizer
        self.conversational = conversational
        self.device = device
        self.names = [reward_func_name(reward_func) for reward_func in reward_funcs]
        self.logs = RewardLogs()
        self.warned: set[str] = set()

    def __call__(
        self, examples: list[dict], completion_ids: list[list[int]], trainer_state=None
    ) -> list[list[float | None]]:
        """
        The reward functions on a batch, with TRL's arguments: prompts, completions, ids, `trainer_state`, `log_extra`,
        `log_metric` and the examples' other columns, each function its own deep copy of them; see
        [`call_reward_funcs`]. What they log is added to `logs` once the batch's rewards are all usable. They run on a
        fork of torch's random state: whatever they draw (a reward that samples from a model, say) leaves the run's
        own draws unchanged, so a resumed run, which does not call them again for recorded batches, still samples
        what the uninterrupted run did.
        """
        extra, metric_values = {}, {}

        def log_extra(column: str, values: list) -> None:
            extra.setdefault(column, []).extend(values)

        def log_metric(name: str, value: float) -> None:
            metric_values.setdefault(name, []).append(float(value))

        devices = [] if self.device.type == "cpu" else [self.device]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            rows = call_reward_funcs(
                self.reward_funcs,
                self.reward_processing_classes,
                [example["prompt"] for example in examples],
                decode_completions(completion_ids, self.tokenizer, self.conversational),
                completion_ids,
                trainer_state=trainer_state,
                log_extra=log_extra,
                log_metric=log_metric,
                **{key: [example[key] for example in examples] for key in examples[0] if key != "prompt"},
            )
        self.logs.add_batch(extra, metric_values, len(examples))  # a batch that raised logs nothing: not recorded
        return rows

    def pop_logs(self) -> RewardLogs:
        """What the functions logged since the last call (see [`RewardLogs`]); the next batches log afresh."""
        logs, self.logs = self.logs, RewardLogs()
        return logs

    @contextlib.contextmanager
    def logs_apart(self):
        """
        Keep the logs of the calls made in the block apart, in the [`RewardLogs`] it yields (an evaluation's, say):
        the logs pending before the block are pending again after it, unchanged.
        """
        pending, self.logs = self.logs, RewardLogs()
        try:
            yield self.logs
        finally:
            self.logs = pending

    def reward(self, rewards: list[float | None]) -> float | None:
        """The weighted reward of one sample's row of rewards (see [`weighted_reward`])."""
        return weighted_reward(rewards, self.reward_weights)

    def is_success(self, reward: float | None) -> bool:
        return reward is not None and reward >= self.success_threshold
