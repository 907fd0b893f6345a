"""Sampling queries from the attacker, which is unconditional: its only input is the BOS token."""

import contextlib

from .queries import MAX_DIGITS


@contextlib.contextmanager
def _seeded(seed: int | None):
    # Seed torch's CPU generator inside the block only, leaving the global random state as it was.
    import torch

    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sample_queries(
    attacker,
    tokenizer,
    n: int,
    batch_size: int = 2000,
    temperature: float = 1.0,
    seed: int | None = 0,
    max_new_tokens: int = 2 * MAX_DIGITS + 4,
) -> list[str]:
    """
    Sample `n` unconditional attacker completions (input: the BOS token alone).

    Pure ancestral sampling at `temperature` (no top-k / top-p), under `torch.inference_mode`; the attacker is put back
    in training mode afterwards if it was in it.

    Args:
        attacker ([`~transformers.PreTrainedModel`]):
            The attacker, e.g. from [`load_attacker`].
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The task's tokenizer.
        n (`int`):
            Number of completions.
        batch_size (`int`, *optional*, defaults to `2000`):
            Completions generated per call to `generate`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature.
        seed (`int`, *optional*, defaults to `0`):
            Makes the result reproducible without touching the global random state; `None` uses the global one.
        max_new_tokens (`int`, *optional*, defaults to `2 * MAX_DIGITS + 4`):
            Longest completion, in tokens.

    Returns:
        `list[str]`: the decoded texts without special tokens, e.g. `["4057+622=", "3+19=", ...]`.
    """
    import torch

    was_training = attacker.training
    attacker.eval()
    device = next(attacker.parameters()).device
    completions: list[str] = []
    with _seeded(seed), torch.inference_mode():
        while len(completions) < n:
            current_batch_size = min(batch_size, n - len(completions))
            input_ids = torch.full((current_batch_size, 1), tokenizer.bos_token_id, dtype=torch.long, device=device)
            generated = attacker.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            completions.extend(tokenizer.batch_decode(generated[:, 1:], skip_special_tokens=True))
    if was_training:
        attacker.train()
    return completions
