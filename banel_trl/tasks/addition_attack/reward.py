"""
The attack's reward: 1.0 when the attacker's text is a valid query that the target answers wrongly, 0.0 otherwise.

A text is a valid query when it matches `^\\d+\\+\\d+=$` after stripping whitespace and each operand has at most
`MAX_DIGITS` characters. With `allow_leading_zeros=False` (the paper's harder variant) a query whose operand has a
leading zero (`"007+1="`) earns 0.
"""

import os
from collections.abc import Iterable, Sequence

from .loading import load_target
from .queries import MAX_DIGITS, format_query, has_leading_zero, parse_query, target_answer


def _completion_text(completion) -> str:
    # TRL passes plain strings for standard data, a list of messages for conversational.
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return completion[-1].get("content", "")
    if isinstance(completion, dict):
        return completion.get("content", "")
    return str(completion)


class AdditionAttackReward:
    """
    TRL reward function: 1.0 iff the completion is a valid query the target gets wrong.

    `__call__(prompts, completions, **kwargs) -> list[float]` follows TRL's reward-function contract; `prompts` is
    ignored (the attacker is unconditional). [`~AdditionAttackReward.details`] returns per-query diagnostics. The
    target answers greedily, always under `torch.inference_mode`, and its parameters are frozen.

    Args:
        target (`Qwen2ForCausalLM` or `str`):
            The target adder, or a path for [`load_target`].
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The shared tokenizer ([`build_tokenizer`] or [`load_tokenizer`]).
        allow_leading_zeros (`bool`, *optional*, defaults to `True`):
            If `False`, queries with an operand such as `"007"` earn 0 (the harder variant).
        batch_size (`int`, *optional*, defaults to `1024`):
            Queries per call to the target's `generate`.
        device (`str`, *optional*, defaults to `"cpu"`):
            Device the target runs on.
        max_digits (`int`, *optional*, defaults to `MAX_DIGITS`):
            Largest number of characters of an operand of a valid query.
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
        for parameter in self.target.parameters():
            parameter.requires_grad_(False)
        self.tokenizer = tokenizer
        self.allow_leading_zeros = allow_leading_zeros
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.max_digits = max_digits
        self.__name__ = "addition_attack" if allow_leading_zeros else "addition_attack_no_lz"

    def target_answers(self, queries: Sequence[str]) -> list[str]:
        """
        The target's greedy answers to valid queries.

        Args:
            queries (`Sequence[str]`):
                Valid query strings, e.g. `"58+67="`.

        Returns:
            `list[str]`: one answer per query, digits in normal order (e.g. `"125"`).
        """
        import torch

        tokenizer = self.tokenizer
        answers: list[str] = []
        max_new_tokens = self.max_digits + 2  # up to max_digits + 1 answer digits, then <eos>
        with torch.inference_mode():
            for start in range(0, len(queries), self.batch_size):
                prompts = [tokenizer.bos_token + query for query in queries[start : start + self.batch_size]]
                encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
                inputs = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
                generated = self.target.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
                for row in generated[:, inputs["input_ids"].shape[1] :].tolist():
                    answers.append(target_answer(self._decode_answer(row)))
        return answers

    def _decode_answer(self, token_ids: list[int]) -> str:
        # The generated tokens up to the first <eos> or <pad>, as text (still reversed).
        characters = []
        for token_id in token_ids:
            if token_id == self.tokenizer.eos_token_id or token_id == self.tokenizer.pad_token_id:
                break
            characters.append(self.tokenizer.convert_ids_to_tokens(token_id))
        return "".join(characters)

    def details(self, completions: Iterable) -> list[dict]:
        """
        Per-completion diagnostics of the reward.

        Args:
            completions (`Iterable`):
                Completions as TRL passes them: strings, or conversations whose last message holds the text.

        Returns:
            `list[dict]`: one dict per completion with `text`, `valid`, `leading_zero`, `answer` (the target's, `None`
            when not asked), `truth` (the true sum, `None` for an invalid query), `correct` (`None` when not asked) and
            `reward`.
        """
        rows = []
        to_evaluate: list[tuple[int, str]] = []  # (row index, normalised query) of the queries the target must answer
        for text in map(_completion_text, completions):
            operands = parse_query(text, self.max_digits)
            row = {
                "text": text,
                "valid": operands is not None,
                "leading_zero": False,
                "answer": None,
                "truth": None,
                "correct": None,
                "reward": 0.0,
            }
            if operands is not None:
                a, b = operands
                row["leading_zero"] = has_leading_zero(a) or has_leading_zero(b)
                row["truth"] = str(int(a) + int(b))
                if self.allow_leading_zeros or not row["leading_zero"]:
                    to_evaluate.append((len(rows), format_query(a, b)))
            rows.append(row)
        if to_evaluate:
            answers = self.target_answers([query for _, query in to_evaluate])
            for (index, _), answer in zip(to_evaluate, answers, strict=True):
                rows[index]["answer"] = answer
                rows[index]["correct"] = answer == rows[index]["truth"]
                rows[index]["reward"] = 0.0 if rows[index]["correct"] else 1.0
        return rows

    def __call__(self, prompts=None, completions=None, **kwargs) -> list[float]:
        if completions is None:
            raise ValueError("AdditionAttackReward needs `completions`")
        return [row["reward"] for row in self.details(completions)]


def success_rate(reward: AdditionAttackReward, queries: Sequence[str]) -> float:
    """
    Mean reward of attacker texts.

    Args:
        reward ([`AdditionAttackReward`]):
            The reward function.
        queries (`Sequence[str]`):
            The attacker's texts.

    Returns:
        `float`: the share of `queries` that earn 1.0 (`0.0` when there are none).
    """
    if len(queries) == 0:
        return 0.0
    rewards = reward(prompts=[""] * len(queries), completions=list(queries))
    return sum(rewards) / len(rewards)
