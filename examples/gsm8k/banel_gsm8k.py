"""
BaNEL on hard GSM8K questions (the paper's second experiment), one run per question.

1. Load GSM8K (`openai/gsm8k`, or a local JSONL in its format) and build conversational prompts.
2. Select the hard questions: sample `selection_samples` completions of the base model per question and keep those it
   solves at a rate below `max_base_success_rate`.
3. For each hard question, run BaNEL on that single prompt with the exact-match reward (successes are never trained
   on), and after every round measure the posterior's success rate on `eval_samples` samples.
4. Report, per question, the cumulative best success rate against the reward evaluations used, with Clopper-Pearson
   intervals (alpha = 0.05): `gsm8k_results.json`, `gsm8k_results.png` and a table on stdout.

    python examples/gsm8k/banel_gsm8k.py --config examples/gsm8k/qwen2.5-0.5b-instruct.yaml

Every field of the config can be overridden on the command line (`--num_questions 3`, `--max_reward_evaluations
500`, ...). See docs/gsm8k.md.
"""

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import ModelConfig, TrlParser

from banel_trl import BanelCallback, BanelConfig, BanelTrainer, PosteriorAcceptanceError
from banel_trl.report import clopper_pearson
from banel_trl.sampling import generation_config as banel_generation_config
from banel_trl.tasks.gsm8k import (
    DEFAULT_INSTRUCTION,
    estimate_success_rates,
    gsm8k_exact_match,
    load_gsm8k,
    to_conversational,
)


logger = logging.getLogger(__name__)


@dataclass
class GSM8KArguments:
    """
    Arguments of the GSM8K experiment.

    Args:
        dataset_name (`str`, *optional*, defaults to `"openai/gsm8k"`):
            Hub id of GSM8K, or a local `.json`/`.jsonl` file with `question` and `answer` columns.
        dataset_config (`str`, *optional*, defaults to `"main"`):
            Configuration of the Hub dataset.
        dataset_split (`str`, *optional*, defaults to `"test"`):
            Split of the Hub dataset.
        num_candidate_questions (`int`, *optional*, defaults to `200`):
            Questions screened for difficulty (the first ones of the split).
        selection_samples (`int`, *optional*, defaults to `64`):
            Completions sampled per question to estimate the base model's success rate.
        max_base_success_rate (`float`, *optional*, defaults to `0.05`):
            A question is hard when its estimated base success rate is below this.
        num_questions (`int`, *optional*, defaults to `10`):
            Hard questions BaNEL runs on, one run each.
        eval_samples (`int`, *optional*, defaults to `1000`):
            Samples of the posterior drawn to measure its success rate before training and after each round.
        instruction (`str`, *optional*):
            Appended to every question.
    """

    dataset_name: str = field(default="openai/gsm8k", metadata={"help": "Hub id of GSM8K, or a local JSON(L) file."})
    dataset_config: str = field(default="main", metadata={"help": "Configuration of the Hub dataset."})
    dataset_split: str = field(default="test", metadata={"help": "Split of the Hub dataset."})
    num_candidate_questions: int = field(default=200, metadata={"help": "Questions screened for difficulty."})
    selection_samples: int = field(default=64, metadata={"help": "Samples per question to estimate the base rate."})
    max_base_success_rate: float = field(
        default=0.05, metadata={"help": "Keep questions whose estimated base success rate is below this."}
    )
    num_questions: int = field(default=10, metadata={"help": "Hard questions to run BaNEL on, one run each."})
    eval_samples: int = field(
        default=1000, metadata={"help": "Posterior samples per success-rate measurement (before and after rounds)."}
    )
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "Appended to every question."})


class SuccessRateCurve(BanelCallback):
    """After every round, measure the posterior's success rate on the run's question and keep the cumulative best."""

    def __init__(self, eval_dataset: Dataset, base: dict):
        self.eval_dataset = eval_dataset
        self.points = [base]

    def on_round_end(self, args, state, control, trainer=None, metrics=None, **kwargs):
        newest = trainer.posterior.regions[-1]
        if metrics["round"] not in (newest.round, newest.reviewed_round):
            # The round neither added a region (too few successes, see `RegionPolicy`) nor changed one: the posterior is
            # the one just measured, and measuring it again would only cost reward calls.
            point = {**self.points[-1], "round": metrics["round"], "nre_used": trainer.num_reward_evaluations}
        else:
            point = measure(trainer, self.eval_dataset, round_index=metrics["round"], best=self.points[-1])
        self.points.append(point)


def measure(trainer: BanelTrainer, eval_dataset: Dataset, round_index: int, best: dict | None) -> dict:
    """The posterior's success rate with its Clopper-Pearson interval, and the best so far (`best` is the previous)."""
    point = {"round": round_index, "nre_used": trainer.num_reward_evaluations}
    try:
        metrics = trainer.evaluate(eval_dataset)
    except PosteriorAcceptanceError as error:
        logger.warning(f"Round {round_index}: the posterior could not be sampled ({error}); not measured.")
        point.update(success_rate=None, ci=None, num_samples=0)
    else:
        num_samples, successes = metrics["eval_num_samples"], metrics["eval_num_successes"]
        point.update(
            success_rate=successes / num_samples, ci=clopper_pearson(successes, num_samples), num_samples=num_samples
        )
    if best is None or (point["success_rate"] is not None and point["success_rate"] > best["best_success_rate"]):
        point.update(best_success_rate=point["success_rate"], best_ci=point["ci"])
    else:
        point.update(best_success_rate=best["best_success_rate"], best_ci=best["best_ci"])
    return point


def run_question(
    index: int,
    example: dict,
    gsm8k_args: GSM8KArguments,
    training_args: BanelConfig,
    model_args: ModelConfig,
    tokenizer,
) -> dict:
    """One BaNEL run on one question, in `output_dir/question_<index>`; returns its success-rate curve."""
    args = dataclasses.replace(training_args, output_dir=os.path.join(training_args.output_dir, f"question_{index}"))
    train_dataset = Dataset.from_list([example])
    eval_dataset = Dataset.from_list([example] * math.ceil(gsm8k_args.eval_samples / args.num_generations))
    trainer = BanelTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=gsm8k_exact_match,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    base = measure(trainer, eval_dataset, round_index=-1, best=None)  # no region yet: the base model itself
    curve = SuccessRateCurve(eval_dataset, base)
    trainer.add_callback(curve)
    trainer.train()
    trainer.save_model()
    return {
        "index": index,
        "question": example["question"],
        "answer": example["answer"],
        "num_reward_evaluations": trainer.num_reward_evaluations,
        "num_successes_found": len(trainer.successes),
        "curve": curve.points,
    }


def plot_results(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for result in results:
        points = [p for p in result["curve"] if p["best_success_rate"] is not None]
        nres = [p["nre_used"] for p in points]
        (line,) = ax.plot(nres, [p["best_success_rate"] for p in points], "o-", label=f"question {result['index']}")
        ax.fill_between(
            nres,
            [p["best_ci"][0] for p in points],
            [p["best_ci"][1] for p in points],
            color=line.get_color(),
            alpha=0.2,
        )
    ax.set(
        xlabel="reward evaluations (NREs)",
        ylabel="cumulative best success rate",
        title="BaNEL on hard GSM8K questions (95% Clopper-Pearson)",
    )
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(gsm8k_args: GSM8KArguments, training_args: BanelConfig, model_args: ModelConfig) -> list[dict]:
    if model_args.model_name_or_path is None:
        raise ValueError("`model_name_or_path` is required.")
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "dtype": dtype,
        **(training_args.model_init_kwargs or {}),
    }
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    if tokenizer.chat_template is None:
        raise ValueError(
            f"The tokenizer of {model_args.model_name_or_path} has no chat template; use an instruct model."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"

    dataset = load_gsm8k(gsm8k_args.dataset_name, gsm8k_args.dataset_config, gsm8k_args.dataset_split)
    dataset = dataset.select(range(min(gsm8k_args.num_candidate_questions, len(dataset))))
    dataset = to_conversational(dataset, gsm8k_args.instruction)

    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **training_args.model_init_kwargs)
    if not training_args.use_cpu and torch.cuda.is_available():
        model.to("cuda")
    generation_config = banel_generation_config(model, tokenizer, training_args)
    set_seed(training_args.seed)
    successes = estimate_success_rates(
        model,
        tokenizer,
        dataset,
        gsm8k_args.selection_samples,
        generation_config,
        batch_size=training_args.generation_batch_size,
    )
    del model
    hard = [i for i, s in enumerate(successes) if s / gsm8k_args.selection_samples < gsm8k_args.max_base_success_rate]
    print(
        f"{len(hard)} of {len(dataset)} questions are hard (base success rate below "
        f"{gsm8k_args.max_base_success_rate} on {gsm8k_args.selection_samples} samples); running BaNEL on "
        f"{min(len(hard), gsm8k_args.num_questions)} of them."
    )

    results = []
    os.makedirs(training_args.output_dir, exist_ok=True)
    for index in hard[: gsm8k_args.num_questions]:
        result = run_question(index, dataset[index], gsm8k_args, training_args, model_args, tokenizer)
        result["selection"] = {"successes": successes[index], "samples": gsm8k_args.selection_samples}
        results.append(result)
        with open(os.path.join(training_args.output_dir, "gsm8k_results.json"), "w") as file:
            json.dump(results, file, indent=2)

    def rate(value, ci):
        return "–" if value is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    print("| question | NREs | successes found | base success rate [95% CI] | best posterior success rate [95% CI] |")
    print("|---|---|---|---|---|")
    for result in results:
        base, last = result["curve"][0], result["curve"][-1]
        print(
            f"| {result['index']} | {result['num_reward_evaluations']} | {result['num_successes_found']} | "
            f"{rate(base['success_rate'], base['ci'])} | {rate(last['best_success_rate'], last['best_ci'])} |"
        )
    if results:
        plot_results(results, os.path.join(training_args.output_dir, "gsm8k_results.png"))
    print(f"Results: {os.path.join(training_args.output_dir, 'gsm8k_results.json')}")
    return results


def make_parser() -> TrlParser:
    return TrlParser((GSM8KArguments, BanelConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
