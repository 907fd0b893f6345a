"""Log-likelihoods of completions under a causal LM: the one scoring path of the fits, the regions and the samplers."""

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from peft import PeftModel
from trl.trainer.utils import selective_log_softmax

from .regions import BASE_ADAPTER


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


@contextmanager
def only_adapter(model: torch.nn.Module, negative_models: dict[str, torch.nn.Module], name: str):
    """
    Yield the module that scores the model `name`: a separate negative model as it is, or `model` under the adapter
    `name` alone (`BASE_ADAPTER`: none), after which the active adapter and which parameters require gradients, both of
    which `set_adapter` changes, are restored. `p_theta` without adapters needs no switch.
    """
    if name in negative_models:
        yield negative_models[name]
    elif not isinstance(model, PeftModel) or name == model.active_adapter:
        yield model
    elif name == BASE_ADAPTER:
        with model.disable_adapter():
            yield model
    else:
        previous = model.active_adapter
        requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
        model.set_adapter(name)
        try:
            yield model
        finally:
            model.set_adapter(previous)
            for parameter, flag in requires_grad:
                parameter.requires_grad_(flag)


def sequence_log_probs(
    model: torch.nn.Module,
    negative_models: dict[str, torch.nn.Module],
    names: list[str],
    samples: torch.Tensor,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float,
    batch_size: int,
) -> torch.Tensor:
    """
    Sequence log-likelihoods `(len(names), len(samples))` of the candidates `samples` (indices into the batch) under
    each named model (see [`only_adapter`]), `batch_size` rows per forward pass.
    """
    num_samples = len(samples)
    # Row r scores sample r % n under model r // n, in chunks of one model each, run as a plain forward with that
    # adapter active (PEFT's mixed-adapter batches do not support every layer type, e.g. fused MoE experts).
    rows = torch.arange(num_samples * len(names), device=samples.device)
    log_probs = torch.empty(len(rows), device=samples.device)
    chunks = [chunk for per_name in rows.split(num_samples) for chunk in per_name.split(batch_size)]
    for chunk in chunks:
        chunk_samples = samples[chunk % num_samples]
        chunk_prompt_mask, chunk_completion_mask = prompt_mask[chunk_samples], completion_mask[chunk_samples]
        # Drop the columns that are padding in every row of the chunk: left of the prompts, right of completions.
        used_completion = chunk_completion_mask.any(dim=0).long()
        prompt_start = int(chunk_prompt_mask.any(dim=0).long().argmax())
        completion_end = len(used_completion) - int(used_completion.flip(0).argmax())
        with only_adapter(model, negative_models, names[int(chunk[0]) // num_samples]) as scorer:
            token_log_probs = completion_log_probs(
                scorer,
                prompt_ids[chunk_samples, prompt_start:],
                chunk_prompt_mask[:, prompt_start:],
                completion_ids[chunk_samples, :completion_end],
                chunk_completion_mask[:, :completion_end],
                temperature,
            )
        log_probs[chunk] = token_log_probs.sum(dim=1).float()
    return log_probs.view(len(names), num_samples)
