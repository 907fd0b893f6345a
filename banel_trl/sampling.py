"""Drawing candidates for a dataset's prompts: a seeded prompt stream, batched proposals and their decoding."""

import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .data import pad_prompts, tokenize_prompts
from .posterior import BanelPosterior, Proposal


def generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args) -> GenerationConfig:
    """The sampling settings of `p_theta` from a [`BanelConfig`]'s GRPO-named fields; `generation_kwargs` override."""
    eos = model.generation_config.eos_token_id
    return GenerationConfig(
        max_new_tokens=args.max_completion_length,
        do_sample=True,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        **(args.generation_kwargs or {}),
    )


def prompt_stream(dataset: Dataset, seed: int) -> Iterator[dict]:
    """The dataset's examples, reshuffled every pass, forever."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(dataset)))
        rng.shuffle(order)
        yield from (dataset[i] for i in order)


class CandidateSampler:
    """
    Draws candidates of a [`BanelPosterior`] for a dataset's prompts, as BaNEL's rounds do: `num_generations`
    completions per prompt, `generation_batch_size` per call to `generate`, prompts taken from a stream that
    [`~CandidateSampler.restart`] reshuffles from a seed, so that a resumed run draws the same candidates again.

    Args:
        posterior ([`BanelPosterior`]):
            The posterior whose candidates are drawn (its regions may grow between calls).
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Tokenizer of the prompts and completions, left-padding, with a pad token.
        generation_config ([`~transformers.GenerationConfig`]):
            Sampling settings of `p_theta`.
        num_generations (`int`):
            Completions per prompt in a batch.
        generation_batch_size (`int`):
            Candidates per batch, a multiple of `num_generations`.
        chat_template_kwargs (`dict`, *optional*):
            Passed to the chat template of conversational prompts.
    """

    def __init__(
        self,
        posterior: BanelPosterior,
        tokenizer: PreTrainedTokenizerBase,
        generation_config: GenerationConfig,
        num_generations: int,
        generation_batch_size: int,
        chat_template_kwargs: dict | None = None,
    ):
        self.posterior = posterior
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.num_generations = num_generations
        self.generation_batch_size = generation_batch_size
        self.chat_template_kwargs = chat_template_kwargs
        self._prompt_ids: dict[str, list[int]] = {}
        self._prompts: Iterator[dict] | None = None

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of `prompt` (tokenised once, then cached)."""
        key = repr(prompt)
        if key not in self._prompt_ids:
            self._prompt_ids[key] = tokenize_prompts([prompt], self.tokenizer, self.chat_template_kwargs)[0]
        return self._prompt_ids[key]

    def longest_prompt(self, dataset: Dataset) -> int:
        """Tokens in the longest prompt of `dataset`, tokenising in chunks the prompts not cached yet."""
        prompts = {repr(prompt): prompt for prompt in dataset["prompt"]}
        missing = [prompt for key, prompt in prompts.items() if key not in self._prompt_ids]
        for start in range(0, len(missing), 1024):
            chunk = missing[start : start + 1024]
            ids = tokenize_prompts(chunk, self.tokenizer, self.chat_template_kwargs)
            self._prompt_ids.update((repr(prompt), prompt_ids) for prompt, prompt_ids in zip(chunk, ids, strict=True))
        return max(len(self._prompt_ids[key]) for key in prompts)

    def restart(self, dataset: Dataset, seed: int) -> None:
        """Draw prompts from `dataset` from now on, in the order `seed` gives."""
        self._prompts = prompt_stream(dataset, seed)

    def propose_batch(self) -> tuple[list[dict], Proposal]:
        """Draw `generation_batch_size` candidates: `num_generations` per prompt, scored against every region."""
        examples = [next(self._prompts) for _ in range(self.generation_batch_size // self.num_generations)]
        examples = [example for example in examples for _ in range(self.num_generations)]
        input_ids, attention_mask = self._pad(examples)
        return examples, self.posterior.propose(input_ids, attention_mask, self.generation_config)

    def accepted(self, examples: list[dict], proposal: Proposal) -> list[tuple[dict, list[int], str]]:
        """`(example, completion_ids, completion text)` of each candidate of `proposal` the posterior accepted."""
        accepted = []
        for j in proposal.accepted.nonzero().flatten().tolist():
            completion_ids = proposal.completion_ids[j, : int(proposal.completion_mask[j].sum())].tolist()
            completion = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
            accepted.append((examples[j], completion_ids, completion))
        return accepted

    def sample_accepted(
        self, num_samples: int, max_proposed: int, exclude: Callable[[dict, str], bool] | None = None
    ) -> list[tuple[Any, list[int]]]:
        """
        Up to `num_samples` accepted candidates `(prompt, completion_ids)` in the order drawn, proposing at most
        `max_proposed` candidates; `exclude(example, completion)` leaves a candidate out.
        """
        samples, proposed = [], 0
        while len(samples) < num_samples and proposed < max_proposed:
            examples, proposal = self.propose_batch()
            proposed += len(examples)
            for example, completion_ids, completion in self.accepted(examples, proposal):
                if exclude is None or not exclude(example, completion):
                    samples.append((example["prompt"], completion_ids))
        return samples[:num_samples]

    def generate(self, examples: list[dict]) -> list[list[int]]:
        """One accepted completion of the posterior per example, as token ids (exact rejection sampling)."""
        input_ids, attention_mask = self._pad(examples)
        sequences = self.posterior.generate(input_ids, attention_mask, generation_config=self.generation_config)
        pad_token_id = self.tokenizer.pad_token_id
        return [[t for t in row.tolist() if t != pad_token_id] for row in sequences[:, input_ids.size(1) :]]

    def _pad(self, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = pad_prompts(
            [self.prompt_ids(example["prompt"]) for example in examples], self.tokenizer.pad_token_id
        )
        device = self.posterior.model.device
        return input_ids.to(device), attention_mask.to(device)
