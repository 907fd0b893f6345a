"""Log-likelihoods of completions under a causal LM: the one scoring path of the fits, the regions and the samplers."""

from collections.abc import Sequence

import torch
from trl.trainer.utils import selective_log_softmax


LOG_SOFTMAX_BLOCK_SIZE = 2**24  # logits per log-softmax block in `completion_log_probs` (64 MiB in float32)


def completion_mask_from_ids(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """1 for every completion token up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_token_ids), device=completion_ids.device))
    eos_before = is_eos.long().cumsum(dim=1) - is_eos.long()
    return (eos_before == 0).long()


def completion_log_probs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """
    Per-token log-probabilities `(N, C)` of the completion given the prompt (0 on padding), with logits scaled by
    `temperature`. Prompts are left-padded and completions right-padded; positions follow the attention mask so a
    sequence scores the same whatever the padding of its batch.
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    num_completion_tokens = completion_ids.size(1)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=num_completion_tokens + 1,
        use_cache=False,
    ).logits[:, :-1]
    # TRL's selective_log_softmax bounds memory by looping over rows; handing it blocks of rows as single rows keeps
    # that bound (one block's temporaries) without a Python step per row, which small vocabularies would pay for.
    rows_per_block = max(1, LOG_SOFTMAX_BLOCK_SIZE // logits[0].numel())
    token_log_probs = [
        selective_log_softmax(block.reshape(1, -1, block.size(-1)), ids.reshape(1, -1), temperature).view_as(ids)
        for block, ids in zip(logits.split(rows_per_block), completion_ids.split(rows_per_block), strict=True)
    ]
    return torch.cat(token_log_probs) * completion_mask
