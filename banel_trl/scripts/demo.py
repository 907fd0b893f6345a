"""
The demo, `banel-trl demo`: BaNEL on the built-in addition attack (`banel_trl.tasks.addition_attack`), offline, in a
few minutes on a CPU. Its settings are in `banel_trl/configs/demo.yaml`.

    python -m banel_trl.scripts.demo --max_reward_evaluations 3000
"""

import argparse
import importlib.resources
import math
from dataclasses import dataclass, field

import yaml
from datasets import Dataset
from trl import TrlParser

from banel_trl.config import BanelConfig
from banel_trl.posterior import PosteriorAcceptanceError
from banel_trl.report import clopper_pearson, write_report
from banel_trl.tasks import addition_attack
from banel_trl.trainer import BanelTrainer


DEMO_CONFIG = "demo.yaml"  # in banel_trl/configs/: every setting of `banel-trl demo`


@dataclass
class DemoArguments:
    """
    Arguments of `banel-trl demo`. Their values, and the demo's [`BanelConfig`], are in `banel_trl/configs/demo.yaml`.

    Args:
        base_eval_samples (`int`):
            Samples of the pretrained attacker `p_theta` drawn to measure the base success rate.
        posterior_eval_samples (`int`):
            Accepted samples of the BaNEL posterior drawn to measure its success rate.
        allow_leading_zeros (`bool`):
            Whether queries with leading zeros (`"007+1="`) can succeed; `False` is the paper's harder variant.
    """

    # No defaults here: they are in banel_trl/configs/demo.yaml, the one place of the demo's settings.
    base_eval_samples: int = field(metadata={"help": "Samples of p_theta drawn to measure the base success rate."})
    posterior_eval_samples: int = field(
        metadata={"help": "Accepted samples of the posterior drawn to measure its success rate."}
    )
    allow_leading_zeros: bool = field(
        metadata={"help": "Whether queries with leading zeros can succeed (False: harder variant)."}
    )


def _measure_base(demo_args: DemoArguments, training_args: BanelConfig, attacker, tokenizer, reward) -> dict:
    """The pretrained attacker's success rate on `base_eval_samples` samples (printed)."""
    print(f"Measuring the pretrained attacker's success rate on {demo_args.base_eval_samples} samples...", flush=True)
    queries = addition_attack.sample_queries(
        attacker,
        tokenizer,
        demo_args.base_eval_samples,
        seed=training_args.seed,
        max_new_tokens=training_args.max_completion_length,
    )
    successes = int(sum(reward(prompts=[tokenizer.bos_token] * len(queries), completions=queries)))
    rate, ci = successes / len(queries), clopper_pearson(successes, len(queries))
    print(
        f"Base model p_theta: success rate {rate:.2e} (95% CI [{ci[0]:.1e}, {ci[1]:.1e}], {successes}/{len(queries)})",
        flush=True,
    )
    return {"base_success_rate": rate, "base_success_rate_ci": ci}


def _measure_posterior(demo_args: DemoArguments, training_args: BanelConfig, trainer: BanelTrainer, tokenizer) -> dict:
    """The posterior's success rate on `posterior_eval_samples` accepted samples (printed)."""
    print(
        f"Measuring the posterior's success rate on {demo_args.posterior_eval_samples} accepted samples...",
        flush=True,
    )
    num_prompts = math.ceil(demo_args.posterior_eval_samples / training_args.num_generations)
    try:
        metrics = trainer.evaluate(Dataset.from_dict({"prompt": [tokenizer.bos_token] * num_prompts}))
    except PosteriorAcceptanceError as error:
        raise PosteriorAcceptanceError(
            f"{error} The run is saved in {training_args.output_dir}: `banel-trl report {training_args.output_dir}` "
            "shows the acceptance rate per round. See docs/troubleshooting.md, 'Acceptance collapse'."
        ) from None
    num_samples, successes = metrics["eval_num_samples"], metrics["eval_num_successes"]
    ci = clopper_pearson(successes, num_samples)
    print(
        f"BaNEL posterior: success rate {metrics['eval_success_rate']:.2e} (95% CI [{ci[0]:.1e}, "
        f"{ci[1]:.1e}], {successes}/{num_samples})",
        flush=True,
    )
    return {"posterior_success_rate": metrics["eval_success_rate"], "posterior_success_rate_ci": ci}


def main(demo_args: DemoArguments, training_args: BanelConfig) -> dict:
    """
    BaNEL on the addition attack: measure the pretrained attacker's success rate, run BaNEL with the demo's budget,
    measure the posterior's success rate, and write the report with its plot. Prints as it goes.

    Returns:
        `dict`: `base_success_rate`, `posterior_success_rate` (each with `_ci`, a 95% Clopper-Pearson interval),
        `num_reward_evaluations`, `num_successes`, `plot` and `report` (paths).
    """
    tokenizer = addition_attack.load_tokenizer()
    attacker = addition_attack.load_attacker()
    reward = addition_attack.AdditionAttackReward(
        addition_attack.load_target(), tokenizer, allow_leading_zeros=demo_args.allow_leading_zeros
    )
    base = _measure_base(demo_args, training_args, attacker, tokenizer, reward)

    print(
        f"Running BaNEL: {training_args.max_reward_evaluations} reward evaluations, "
        f"{training_args.samples_per_round} per round, into {training_args.output_dir}...",
        flush=True,
    )
    trainer = BanelTrainer(
        model=attacker,
        reward_funcs=reward,
        args=training_args,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}),  # the attacker is unconditional
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    print(
        f"BaNEL used {trainer.num_reward_evaluations} reward evaluations and found {len(trainer.successes)} "
        f"successes (recorded, never trained on); regions: {len(trainer.posterior.regions)}.",
        flush=True,
    )

    posterior = _measure_posterior(demo_args, training_args, trainer, tokenizer)
    if base["base_success_rate"] > 0:
        print(f"Improvement: {posterior['posterior_success_rate'] / base['base_success_rate']:.1f}x", flush=True)

    report_path, plot_path = write_report(training_args.output_dir, posterior=trainer.posterior, tokenizer=tokenizer)
    print(f"Plot: {plot_path}\nReport (rounds, successes, what the regions reject): {report_path}", flush=True)
    return {
        **base,
        **posterior,
        "num_reward_evaluations": trainer.num_reward_evaluations,
        "num_successes": len(trainer.successes),
        "plot": plot_path,
        "report": report_path,
    }


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """
    The demo's parser: [`DemoArguments`] and [`BanelConfig`], with `banel_trl/configs/demo.yaml` as its defaults.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser to these as the `demo` command (their `parser_class` must be `TrlParser`).
        prog (`str`, *optional*):
            The program name shown in the usage (without `subparsers`).

    Returns:
        `TrlParser`: the parser.
    """
    dataclass_types = (DemoArguments, BanelConfig)
    if subparsers is not None:
        parser = subparsers.add_parser("demo", help="Run the BaNEL demo", dataclass_types=dataclass_types)
    else:
        parser = TrlParser(dataclass_types, prog=prog)
    with importlib.resources.files("banel_trl.configs").joinpath(DEMO_CONFIG).open() as file:
        unused = parser.set_defaults_with_config(**yaml.safe_load(file))
    if unused:
        raise ValueError(f"{DEMO_CONFIG} has keys that are no demo argument nor BanelConfig field: {unused[::2]}")
    return parser


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
