"""The `banel-trl` command line: `train` (TRL-style, YAML configs), `demo` (the addition attack) and `report`."""

import argparse
import importlib
import importlib.resources
import math
import os
import sys
from dataclasses import dataclass, field

import yaml
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser


DEMO_CONFIG = "demo.yaml"  # in banel_trl/configs/: every setting of `banel-trl demo`
LAUNCHED_ENV = "BANEL_TRL_LAUNCHED"  # set for the processes `accelerate launch` starts, so they train instead


def _addition_attack_reward(allow_leading_zeros: bool):
    from .tasks import addition_attack as task

    return task.AdditionAttackReward(
        task.load_target(), task.load_tokenizer(), allow_leading_zeros=allow_leading_zeros
    )


def _gsm8k_exact_match():
    from .tasks.gsm8k import gsm8k_exact_match

    return gsm8k_exact_match


# Name -> factory of the reward function (factories: some rewards load a model).
REWARD_FUNCS = {
    "gsm8k_exact_match": _gsm8k_exact_match,
    "addition_attack": lambda: _addition_attack_reward(allow_leading_zeros=True),
    "addition_attack_no_leading_zeros": lambda: _addition_attack_reward(allow_leading_zeros=False),
}


def get_reward_func(name: str):
    """
    Resolve a reward function named on the command line, as TRL's scripts do.

    Args:
        name (`str`):
            A registry name (a key of `REWARD_FUNCS`: `gsm8k_exact_match`, `addition_attack`,
            `addition_attack_no_leading_zeros`) or a dotted import path (`my_lib.rewards.my_reward`), looked up from
            the current directory too.

    Returns:
        `Callable`: the reward function, under TRL's reward-function contract.
    """
    if name in REWARD_FUNCS:
        return REWARD_FUNCS[name]()
    if "." in name:
        module_path, attribute = name.rsplit(".", 1)
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_path)
        except ImportError as error:
            raise ValueError(
                f"Could not import module {module_path!r} for reward function {name!r}: {error}"
            ) from None
        if not hasattr(module, attribute):
            raise ValueError(f"Module {module_path!r} has no attribute {attribute!r} (reward function {name!r}).")
        return getattr(module, attribute)
    raise ValueError(
        f"Could not load reward function {name!r}. Expected one of {sorted(REWARD_FUNCS)} or a dotted import path "
        "(e.g. 'my_lib.rewards.my_reward')."
    )


@dataclass
class BanelScriptArguments(ScriptArguments):
    """
    Script arguments of `banel-trl train`.

    Args:
        reward_funcs (`list[str]`, *optional*):
            Reward functions: names from the registry (`gsm8k_exact_match`, `addition_attack`,
            `addition_attack_no_leading_zeros`) or dotted import paths (e.g. `'my_lib.rewards.my_reward'`).
        reward_model_name_or_path (`str`, *optional*):
            A sequence-classification reward model (Hub id or local path), used as a reward function.
        write_report (`bool`, *optional*, defaults to `True`):
            Write `banel_report.png` and `banel_report.md` into `output_dir` at the end (as `banel-trl report`,
            without failure patterns).
    """

    reward_funcs: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Reward functions: registry names (gsm8k_exact_match, addition_attack, "
            "addition_attack_no_leading_zeros) or dotted import paths (e.g. 'my_lib.rewards.my_reward')."
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A sequence-classification reward model (Hub id or local path), used as a reward function."},
    )
    write_report: bool = field(
        default=True,
        metadata={"help": "Write banel_report.png and banel_report.md into output_dir at the end."},
    )


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


def make_train_parser(prog: str = "banel-trl train") -> TrlParser:
    from .config import BanelConfig

    return TrlParser((BanelScriptArguments, BanelConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def make_demo_parser(prog: str = "banel-trl demo") -> TrlParser:
    """The demo's parser, with `banel_trl/configs/demo.yaml` as its defaults."""
    from .config import BanelConfig

    parser = TrlParser((DemoArguments, BanelConfig), prog=prog)
    with importlib.resources.files("banel_trl.configs").joinpath(DEMO_CONFIG).open() as file:
        unused = parser.set_defaults_with_config(**yaml.safe_load(file))
    if unused:
        raise ValueError(f"{DEMO_CONFIG} has keys that are no demo argument nor BanelConfig field: {unused[::2]}")
    return parser


def _load_train_dataset(script_args, dataset_args):
    from datasets import load_dataset
    from trl import get_dataset

    if dataset_args.datasets:
        return get_dataset(dataset_args)
    if script_args.dataset_name:
        return load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    raise ValueError(
        "Give a dataset: `dataset_name` (a Hub id or a builder), or a `datasets` list in the YAML config."
    )


def train(script_args: BanelScriptArguments, training_args, model_args: ModelConfig, dataset_args):
    """
    Run BaNEL from parsed arguments, as TRL's scripts do: load the rewards, the dataset and the model, train, save the
    posterior, evaluate (with `do_eval`), write the report and push to the Hub (with `push_to_hub`).

    Returns:
        [`BanelTrainer`]: the trained trainer.
    """
    import torch
    from trl import get_peft_config, get_quantization_config

    from .report import write_report
    from .trainer import BanelTrainer

    if model_args.model_name_or_path is None:
        raise ValueError("`model_name_or_path` is required: the proposal p_theta (a Hub id or a local path).")
    reward_funcs = [get_reward_func(name) for name in script_args.reward_funcs]
    if script_args.reward_model_name_or_path:
        reward_funcs.append(script_args.reward_model_name_or_path)
    if not reward_funcs:
        raise ValueError("No reward function: set `reward_funcs` (registry names or import paths) and/or "
                         "`reward_model_name_or_path`.")

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model_init_kwargs = {
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
        "dtype": dtype,
    }
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_init_kwargs["quantization_config"] = quantization_config
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    dataset = _load_train_dataset(script_args, dataset_args)
    if script_args.dataset_train_split not in dataset:
        raise ValueError(f"The dataset has no split {script_args.dataset_train_split!r}; its splits are "
                         f"{list(dataset)}. Set `dataset_train_split`.")
    eval_dataset = None
    if training_args.do_eval:
        if script_args.dataset_test_split not in dataset:
            raise ValueError(f"`do_eval` needs the split {script_args.dataset_test_split!r}; the dataset has "
                             f"{list(dataset)}. Set `dataset_test_split`.")
        eval_dataset = dataset[script_args.dataset_test_split]

    trainer = BanelTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),  # the negative models' LoRA (`use_peft: true` to set it)
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(
        f"BaNEL: {trainer.num_reward_evaluations} reward evaluations, {len(trainer.successes)} successes; posterior "
        f"saved to {training_args.output_dir}."
    )
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.accelerator.print(f"Posterior success rate on {script_args.dataset_test_split}: "
                                  f"{metrics['eval_success_rate']:.4g} ({metrics['eval_num_samples']} samples).")
    if script_args.write_report and trainer.accelerator.is_main_process:
        _, plot_path = write_report(training_args.output_dir, patterns=False)
        trainer.accelerator.print(f"Plot: {plot_path} (`banel-trl report {training_args.output_dir}` adds what the "
                                  "regions reject).")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Pushed to https://huggingface.co/{trainer.hub_model_id}.")
    return trainer


def _remove_subsequence(items: list[str], subsequence: list[str]) -> list[str]:
    """`items` without the ordered `subsequence` (the arguments left for `accelerate launch`)."""
    remaining, result = iter(subsequence), []
    current = next(remaining, None)
    for item in items:
        if current is not None and item == current:
            current = next(remaining, None)
        else:
            result.append(item)
    return result


def run_train(argv: list[str]) -> int:
    """
    `banel-trl train`: parse the config and command line; train in this process, or, when arguments for `accelerate
    launch` remain (`--num_processes 2`, `--accelerate_config multi_gpu`, ...), start the run through it.
    """
    from accelerate.commands import launch as accelerate_launch
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    parser = make_train_parser()
    *arguments, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    launch_args = config_remaining + cli_remaining
    if not launch_args or os.environ.get(LAUNCHED_ENV) == "1":
        train(*arguments)
        return 0

    launch_args = resolve_accelerate_config_argument(launch_args)
    _, unknown = accelerate_launch.launch_command_parser().parse_known_args(launch_args + ["banel_trl.cli"])
    if unknown:
        raise ValueError(
            f"Unknown arguments {unknown}: they are no field of the script arguments, BanelConfig or ModelConfig, "
            "and no option of `accelerate launch`. See `banel-trl train --help`."
        )
    script_args = ["train", *_remove_subsequence(argv, cli_remaining)]
    accelerate_args = accelerate_launch.launch_command_parser().parse_args(
        [*launch_args, "--module", "banel_trl.cli", *script_args]
    )
    os.environ[LAUNCHED_ENV] = "1"
    accelerate_launch.launch_command(accelerate_args)
    return 0


def demo(demo_args: DemoArguments, training_args) -> dict:
    """
    BaNEL on the addition attack: measure the pretrained attacker's success rate, run BaNEL with the demo's budget,
    measure the posterior's success rate, and write the report with its plot. Prints as it goes.

    Returns:
        `dict`: `base_success_rate`, `posterior_success_rate` (each with `_ci`, a 95% Clopper-Pearson interval),
        `num_reward_evaluations`, `num_successes`, `plot` and `report` (paths).
    """
    from datasets import Dataset

    from .posterior import PosteriorAcceptanceError
    from .report import clopper_pearson, write_report
    from .tasks import addition_attack as task
    from .trainer import BanelTrainer

    tokenizer = task.load_tokenizer()
    attacker = task.load_attacker()
    reward = task.AdditionAttackReward(
        task.load_target(), tokenizer, allow_leading_zeros=demo_args.allow_leading_zeros
    )

    print(f"Measuring the pretrained attacker's success rate on {demo_args.base_eval_samples} samples...", flush=True)
    queries = task.sample_queries(attacker, tokenizer, demo_args.base_eval_samples, seed=training_args.seed,
                                  max_new_tokens=training_args.max_completion_length)
    base_successes = int(sum(reward(prompts=[tokenizer.bos_token] * len(queries), completions=queries)))
    base_rate = base_successes / len(queries)
    base_ci = clopper_pearson(base_successes, len(queries))
    print(f"Base model p_theta: success rate {base_rate:.2e} (95% CI [{base_ci[0]:.1e}, {base_ci[1]:.1e}], "
          f"{base_successes}/{len(queries)})", flush=True)

    print(f"Running BaNEL: {training_args.max_reward_evaluations} reward evaluations, "
          f"{training_args.samples_per_round} per round, into {training_args.output_dir}...", flush=True)
    trainer = BanelTrainer(
        model=attacker,
        reward_funcs=reward,
        args=training_args,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}),  # the attacker is unconditional
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()
    print(f"BaNEL used {trainer.num_reward_evaluations} reward evaluations and found {len(trainer.successes)} "
          f"successes (recorded, never trained on); {len(trainer.posterior.regions)} regions.", flush=True)

    print(f"Measuring the posterior's success rate on {demo_args.posterior_eval_samples} accepted samples...",
          flush=True)
    num_prompts = math.ceil(demo_args.posterior_eval_samples / training_args.num_generations)
    try:
        metrics = trainer.evaluate(Dataset.from_dict({"prompt": [tokenizer.bos_token] * num_prompts}))
    except PosteriorAcceptanceError as error:
        raise PosteriorAcceptanceError(
            f"{error} The run is saved in {training_args.output_dir}: `banel-trl report {training_args.output_dir}` "
            "shows the acceptance rate per round. See docs/troubleshooting.md, 'Acceptance collapse'."
        ) from None
    num_samples = metrics["eval_num_samples"]
    posterior_successes = round(metrics["eval_success_rate"] * num_samples)
    posterior_ci = clopper_pearson(posterior_successes, num_samples)
    print(f"BaNEL posterior: success rate {metrics['eval_success_rate']:.2e} (95% CI [{posterior_ci[0]:.1e}, "
          f"{posterior_ci[1]:.1e}], {posterior_successes}/{num_samples})", flush=True)
    if base_rate > 0:
        print(f"Improvement: {metrics['eval_success_rate'] / base_rate:.1f}x", flush=True)

    report_path, plot_path = write_report(training_args.output_dir, posterior=trainer.posterior, tokenizer=tokenizer)
    print(f"Plot: {plot_path}\nReport (rounds, successes, what the regions reject): {report_path}", flush=True)
    return {
        "base_success_rate": base_rate,
        "base_success_rate_ci": base_ci,
        "posterior_success_rate": metrics["eval_success_rate"],
        "posterior_success_rate_ci": posterior_ci,
        "num_reward_evaluations": trainer.num_reward_evaluations,
        "num_successes": len(trainer.successes),
        "plot": plot_path,
        "report": report_path,
    }


def run_demo(argv: list[str]) -> int:
    demo_args, training_args = make_demo_parser().parse_args_and_config(argv)
    demo(demo_args, training_args)
    return 0


def run_report(argv: list[str]) -> int:
    from .report import write_report

    parser = argparse.ArgumentParser(
        prog="banel-trl report",
        description="Report on a BaNEL run from its output folder: banel_report.png (NREs, successes, acceptance rate "
        "and negative loss per round) and banel_report.md (the rounds, the successes found, and the failures each "
        "region scores highest and lowest).",
    )
    parser.add_argument("output_dir", help="The output_dir of a BaNEL run (it holds banel_ledger.jsonl).")
    parser.add_argument("--model_name_or_path", default=None,
                        help="The proposal p_theta; defaults to the base model recorded in the run's folder.")
    parser.add_argument("--num_failures", type=int, default=512, help="Failures scored under every region.")
    parser.add_argument("--top_k", type=int, default=5, help="Failures listed at each end of a region's ranking.")
    parser.add_argument("--no_patterns", action="store_true",
                        help="Skip the failure patterns (they load the model and score failures).")
    args = parser.parse_args(argv)
    if args.num_failures < 1 or args.top_k < 1:
        parser.error("--num_failures and --top_k must be positive.")
    report_path, plot_path = write_report(
        args.output_dir,
        model_name_or_path=args.model_name_or_path,
        patterns=not args.no_patterns,
        num_failures=args.num_failures,
        top_k=args.top_k,
    )
    with open(report_path) as file:
        print(file.read())
    print(f"Plot: {plot_path}\nReport: {report_path}")
    return 0


COMMANDS = {
    "train": (run_train, "Run BaNEL from a YAML config and/or command-line arguments (TrlParser)."),
    "demo": (run_demo, "BaNEL on the built-in addition attack, offline, in a few minutes on a CPU."),
    "report": (run_report, "Plot and summarise a run from its output folder."),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `banel-trl` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="banel-trl", description="BaNEL for TRL: learning from failures only.")
    subparsers = parser.add_subparsers(dest="command", title="commands")
    for name, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    args, _ = parser.parse_known_args(argv[:1])
    if args.command is None:
        parser.print_help()
        return 0
    return COMMANDS[args.command][0](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
