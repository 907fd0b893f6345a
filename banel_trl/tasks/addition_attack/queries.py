"""
The text of the addition task: the query format, the training distribution of queries, and parsing.

A query is `"<a>+<b>="` where each operand has 1 to `MAX_DIGITS` (= 4) decimal digits. The training distribution
([`sample_operand`]) first draws the number of digits uniformly from `1..4` and then the value uniformly among the
numbers with exactly that many digits, so operands never have a leading zero (`0` itself is a valid 1-digit operand).

The target answers with the digits of `a+b` reversed (least-significant digit first): `"58+67="` is answered `"521"`
(58+67 = 125). [`target_answer`] undoes the reversal.
"""

import re


MAX_DIGITS = 4
"""Largest number of characters allowed in one operand (training data: 1-4 digits)."""

QUERY_RE = re.compile(r"^(\d+)\+(\d+)=$")
"""A syntactically valid query, once stripped of whitespace: two runs of digits joined by `+`, then `=`."""


def sample_operand(rng, max_digits: int = MAX_DIGITS) -> int:
    """
    Draw one operand of the training distribution: its number of digits uniform in `1..max_digits`, then its value
    uniform among the numbers with exactly that many digits.

    Args:
        rng (`random.Random`):
            The random number generator (anything with a `randint` method).
        max_digits (`int`, *optional*, defaults to `MAX_DIGITS`):
            Largest number of digits.

    Returns:
        `int`: the operand.
    """
    num_digits = rng.randint(1, max_digits)
    smallest = 0 if num_digits == 1 else 10 ** (num_digits - 1)
    return rng.randint(smallest, 10**num_digits - 1)


def sample_query(rng, max_digits: int = MAX_DIGITS) -> tuple[int, int]:
    """Draw the two operands of a query of the training distribution (see [`sample_operand`])."""
    return sample_operand(rng, max_digits), sample_operand(rng, max_digits)


def format_query(a: int | str, b: int | str) -> str:
    """The query text of two operands: `(10, 23) -> "10+23="` (strings are kept verbatim, e.g. `"007"`)."""
    return f"{a}+{b}="


def format_target_example(a: int, b: int) -> str:
    """The target's full training text without special tokens: the query, then the sum with its digits reversed."""
    return format_query(a, b) + str(a + b)[::-1]


def parse_query(text: str, max_digits: int = MAX_DIGITS) -> tuple[str, str] | None:
    """
    Read the two operands of a query.

    Args:
        text (`str`):
            The attacker's text. It is valid when it matches `QUERY_RE` after stripping whitespace and each operand
            has at most `max_digits` characters (leading zeros count as characters).
        max_digits (`int`, *optional*, defaults to `MAX_DIGITS`):
            Largest number of characters of an operand.

    Returns:
        `tuple[str, str] | None`: the two operand strings, or `None` when `text` is not a valid query.
    """
    match = QUERY_RE.match(text.strip())
    if match is None:
        return None
    a, b = match.group(1), match.group(2)
    if len(a) > max_digits or len(b) > max_digits:
        return None
    return a, b


def has_leading_zero(operand: str) -> bool:
    """Whether an operand string has a leading zero, such as `"007"` (`"0"` alone has none)."""
    return len(operand) > 1 and operand[0] == "0"


def target_answer(generated: str) -> str:
    """The target's generated answer text (digits in reversed order) turned into the answer in normal order."""
    return generated.strip()[::-1]
