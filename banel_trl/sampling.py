"""Drawing candidates for a dataset's prompts: a seeded prompt stream, batched proposals and their decoding."""

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from .data import pad_prompts, tokenize_prompts
from .distributed import gather_to_all, rank_share
from .posterior import BanelPosterior, Proposal
from .rejection import SamplingStats, sample_until


# Every draw of a run comes from a seed stream of its own, offsets of `args.seed + k` for round k: a resumed run draws
# what the uninterrupted run did, and each process samples from its own (process 0 from the single-process one).
RANK_SEED_OFFSET = 3_000_017  # process r samples from the stream's seed + r * this
REFERENCE_SEED_OFFSET = 1_000_003  # the unevaluated posterior samples a round's reference is fit on
DISTILLATION_SEED_OFFSET = 2_000_003  # the samples a round's posterior is distilled from
EVALUATION_SEED_OFFSET = 4_000_037  # `evaluate`'s samples


def generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, args) -> GenerationConfig:
    """
    The sampling settings of `p_theta` from a [`BanelConfig`]'s GRPO-named fields (`cache_implementation` included);
    `generation_kwargs` override them (`do_sample`, `top_k`, `max_new_tokens`...), except `temperature`, which the
    likelihoods must share.
    """
    eos = model.generation_config.eos_token_id
    settings = {
        "max_new_tokens": args.max_completion_length,
        "do_sample": True,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "cache_implementation": args.cache_implementation,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": eos if eos is not None else tokenizer.eos_token_id,
    }
    overrides = dict(args.generation_kwargs or {})
    if "temperature" in overrides and overrides["temperature"] != args.temperature:
        raise ValueError(
            "`generation_kwargs` sets `temperature`, which BaNEL also applies to every likelihood it computes: set "
            "`temperature` itself instead, so that sampling and scoring use the same one."
        )
    if overrides.get("num_beams", 1) > 1 or overrides.get("do_sample", True) is False:
        raise ValueError(
            f"`generation_kwargs` asks for {'beam search' if overrides.get('num_beams', 1) > 1 else 'greedy decoding'}"
            ": BaNEL's posterior is `p_theta` conditioned by rejection, so its candidates must be samples of `p_theta`."
            " Remove `num_beams` and `do_sample`; use `top_k`, `top_p` or `min_p` to narrow the sampling."
        )
    return GenerationConfig(**{**settings, **overrides})


def prompt_stream(dataset: Dataset, seed: int, shuffle: bool = True) -> Iterator[dict]:
    """The dataset's examples, forever: reshuffled from `seed` every pass, or in their order (`shuffle=False`)."""
    rng = random.Random(seed)
    while True:
        order = list(range(len(dataset)))
        if shuffle:
            rng.shuffle(order)
        yield from (dataset[i] for i in order)


class CandidateSampler:
    """
    Draws candidates of a [`BanelPosterior`] for a dataset's prompts, as BaNEL's rounds do: `num_generations`
    completions per prompt, `generation_batch_size` per call to `generate`, prompts taken from a stream that
    [`~CandidateSampler.restart`] reshuffles from a seed (or starts again at the first prompt), so that a resumed run
    draws the same candidates again.

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
        shuffle_dataset (`bool`, *optional*, defaults to `True`):
            Draw prompts in an order shuffled from the seed of [`~CandidateSampler.restart`]; `False`: in the dataset's
            order, from the first prompt, cycling.
        pad_to_multiple_of (`int`, *optional*):
            Left-pad each batch of prompts to a multiple of this many tokens.
        dataset ([`~datasets.Dataset`], *optional*):
            The prompts [`~CandidateSampler.reseed`] restarts from.
        accelerator ([`~accelerate.Accelerator`], *optional*):
            The processes that sample; one when `None`.
        full_determinism (`bool`, *optional*, defaults to `False`):
            Seed with `transformers.enable_full_determinism` (`TrainingArguments.full_determinism`).
    """

    def __init__(
        self,
        posterior: BanelPosterior,
        tokenizer: PreTrainedTokenizerBase,
        generation_config: GenerationConfig,
        num_generations: int,
        generation_batch_size: int,
        chat_template_kwargs: dict | None = None,
        shuffle_dataset: bool = True,
        pad_to_multiple_of: int | None = None,
        dataset: Dataset | None = None,
        accelerator: Accelerator | None = None,
        full_determinism: bool = False,
    ):
        self.posterior = posterior
        self.tokenizer = tokenizer
        self.generation_config = generation_config
        self.num_generations = num_generations
        self.generation_batch_size = generation_batch_size
        self.chat_template_kwargs = chat_template_kwargs
        self.shuffle_dataset = shuffle_dataset
        self.pad_to_multiple_of = pad_to_multiple_of
        self.dataset = dataset
        self.accelerator = accelerator
        self.full_determinism = full_determinism
        self._prompt_ids: dict[str, list[int]] = {}
        self._prompts: Iterator[dict] | None = None

    @classmethod
    def for_run(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        args,
        dataset,
        accelerator,
        proposal_sampler=None,
    ) -> "CandidateSampler":
        """The sampler of a run's posterior over `model` (`p_theta`), with the settings of a [`BanelConfig`]."""
        config = generation_config(model, tokenizer, args)
        posterior = BanelPosterior(
            model,
            temperature=args.temperature,
            scoring_batch_size=args.per_device_eval_batch_size,
            max_sampling_attempts=args.max_sampling_attempts,
            generation_config=config,
            disable_tqdm=args.disable_tqdm,
            proposal_sampler=proposal_sampler,
        )
        return cls(
            posterior,
            tokenizer,
            config,
            args.num_generations,
            args.generation_batch_size,
            args.chat_template_kwargs,
            shuffle_dataset=args.shuffle_dataset,
            pad_to_multiple_of=args.pad_to_multiple_of,
            dataset=dataset,
            accelerator=accelerator,
            full_determinism=args.full_determinism,
        )

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of `prompt` (tokenised once, then cached)."""
        key = repr(prompt)
        if key not in self._prompt_ids:
            self._prompt_ids[key] = tokenize_prompts([prompt], self.tokenizer, self.chat_template_kwargs)[0]
        return self._prompt_ids[key]

    def check_prompt_lengths(self, datasets: dict, max_completion_length: int, context: int | None) -> None:
        """
        Refuse a dataset whose longest prompt leaves no room for a completion in the model's `context`, naming it by
        its key in `datasets` (a value may be `None`, or a dict of datasets by name).
        """
        for name, dataset in datasets.items():
            if isinstance(dataset, dict):
                self.check_prompt_lengths(
                    {f"{name}[{key!r}]": d for key, d in dataset.items()}, max_completion_length, context
                )
            elif dataset is not None and context is not None:
                longest = self.longest_prompt(dataset)
                if longest + max_completion_length > context:
                    raise ValueError(
                        f"The longest prompt of `{name}` has {longest} tokens: with `max_completion_length`="
                        f"{max_completion_length}, that exceeds the model's context of {context} tokens. Shorten or "
                        "filter the prompts, or lower `max_completion_length`."
                    )

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
        """Draw prompts from `dataset` from now on, in the order `seed` gives (its own with `shuffle_dataset=False`)."""
        self._prompts = prompt_stream(dataset, seed, self.shuffle_dataset)

    def reseed(self, seed: int, own_stream: bool = False) -> None:
        """
        Seed torch and the prompt stream from `seed` alone, so that a resumed run draws what the uninterrupted run
        would have. With `own_stream`, each process samples from its own seed (the main process's is `seed`).
        """
        rank = self.accelerator.process_index if own_stream and self.accelerator is not None else 0
        set_seed(seed + RANK_SEED_OFFSET * rank, deterministic=self.full_determinism)
        self.restart(self.dataset, seed)

    def batch_size(self, stats: SamplingStats, wanted: int, processes: int = 1) -> int:
        """
        Candidates to propose next in a rejection loop that has drawn `stats` and wants `wanted` kept, shared by
        `processes` that each propose a batch: as many as the missing ones take at the share of proposals kept so far
        (the first batch: one per missing), in whole prompts of `num_generations`, at most `generation_batch_size`. A
        loop that keeps every proposal draws what it needs; one that keeps 5e-4 draws full batches.
        """
        kept_share = (stats.kept + 1) / (stats.proposed + 1)
        prompts = math.ceil(max(wanted - stats.kept, 1) / kept_share / processes / self.num_generations)
        return min(prompts * self.num_generations, self.generation_batch_size)

    def propose_batch(
        self, size: int | None = None, adapter: str | None = None, regions: list | None = None
    ) -> tuple[list[dict], Proposal]:
        """
        Draw `size` candidates (`generation_batch_size` by default): `num_generations` per prompt, scored against
        every active region (or sampled from another `adapter` and scored against `regions`, see
        [`~BanelPosterior.propose`]).
        """
        size = self.generation_batch_size if size is None else size
        examples = [next(self._prompts) for _ in range(size // self.num_generations)]
        examples = [example for example in examples for _ in range(self.num_generations)]
        input_ids, attention_mask = self._pad(examples)
        return examples, self.posterior.propose(input_ids, attention_mask, self.generation_config, adapter, regions)

    def accepted(self, examples: list[dict], proposal: Proposal) -> list[tuple[dict, list[int], str]]:
        """`(example, completion_ids, completion text)` of each candidate of `proposal` the posterior accepted."""
        accepted = []
        for j in proposal.accepted.nonzero().flatten().tolist():
            completion_ids = proposal.completion_ids[j, : int(proposal.completion_mask[j].sum())].tolist()
            completion = self.tokenizer.decode(completion_ids, skip_special_tokens=True)
            accepted.append((examples[j], completion_ids, completion))
        return accepted

    def sample_accepted(
        self,
        num_samples: int,
        max_sampling_attempts: int,
        exclude: Callable[[Any, str], bool] | None = None,
        disable_tqdm: bool = False,
    ) -> list[tuple[Any, list[int]]]:
        """
        Up to `num_samples` accepted candidates `(prompt, completion_ids)` in the order drawn; `exclude(prompt,
        completion)` leaves a candidate out. Draws within the bounds of [`sample_until`].
        """
        samples = []

        def draw(stats) -> tuple[int, int, int]:
            examples, proposal = self.propose_batch(self.batch_size(stats, num_samples))
            accepted = self.accepted(examples, proposal)
            kept = [
                (e["prompt"], ids) for e, ids, text in accepted if exclude is None or not exclude(e["prompt"], text)
            ]
            samples.extend(kept)
            return len(examples), len(accepted), len(kept)

        sample_until(num_samples, max_sampling_attempts, draw, "Posterior samples", disable_tqdm)
        return samples[:num_samples]

    def posterior_samples(
        self, seed: int, num_samples: int, max_sampling_attempts: int, exclude=None, disable_tqdm: bool = False
    ) -> list[dict]:
        """
        Up to `num_samples` unevaluated samples of the posterior from the stream `seed`, as fit examples: each process
        draws its share from its own stream, and every process gets them all, in rank order.
        """
        self.reseed(seed, own_stream=True)
        share = rank_share(self.accelerator, num_samples)
        main = self.accelerator is None or self.accelerator.is_local_main_process
        samples = self.sample_accepted(share, max_sampling_attempts, exclude, disable_tqdm or not main)
        samples = gather_to_all(self.accelerator, samples)[:num_samples]
        return [{"prompt_ids": self.prompt_ids(prompt), "completion_ids": ids} for prompt, ids in samples]

    def generate(self, examples: list[dict]) -> list[list[int]]:
        """One accepted completion of the posterior per example, as token ids (exact rejection sampling)."""
        input_ids, attention_mask = self._pad(examples)
        sequences = self.posterior.generate(input_ids, attention_mask, generation_config=self.generation_config)
        pad_token_id = self.tokenizer.pad_token_id
        return [[t for t in row.tolist() if t != pad_token_id] for row in sequences[:, input_ids.size(1) :]]

    def _pad(self, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        prompt_ids = [self.prompt_ids(example["prompt"]) for example in examples]
        input_ids, attention_mask = pad_prompts(prompt_ids, self.tokenizer.pad_token_id, self.pad_to_multiple_of)
        device = self.posterior.model.device
        return input_ids.to(device), attention_mask.to(device)
