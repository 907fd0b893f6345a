"""
The `banel-trl` command line: `train` (TRL-style, YAML configs), `demo` (the addition attack) and `report`.

It only dispatches, as `trl`'s command line does: each command parses its arguments with the `make_parser` of its
script in `banel_trl.scripts` and calls that script's `main`. `train` also starts multi-process runs through
`accelerate launch`.
"""

import argparse
import dataclasses
import logging
import os
import sys

from accelerate.commands import launch as accelerate_launch
from trl import GRPOConfig
from trl.cli.accelerate_config import resolve_accelerate_config_argument

from .config import BanelConfig
from .scripts import banel, demo, report


logger = logging.getLogger(__name__)


LAUNCHED_ENV = "BANEL_TRL_LAUNCHED"  # set for the processes `accelerate launch` starts, so they train instead


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


def _drop_grpo_only_options(arguments: list[str]) -> list[str]:
    """
    `arguments` without the options that are GRPOConfig fields BaNEL has no use for (`beta`, `loss_type`,
    `vllm_enable_sleep_mode`, ...) and their values, with one warning that names them all: a GRPO YAML config runs as
    it is.
    """
    grpo_only = {f.name for f in dataclasses.fields(GRPOConfig)} - {f.name for f in dataclasses.fields(BanelConfig)}
    kept, dropped, i = [], [], 0
    while i < len(arguments):
        name = arguments[i].removeprefix("--").split("=", 1)[0]
        if arguments[i].startswith("--") and name in grpo_only:
            dropped.append(name)
            takes_value = "=" not in arguments[i] and i + 1 < len(arguments)
            i += 2 if takes_value and not arguments[i + 1].startswith("--") else 1
        else:
            kept.append(arguments[i])
            i += 1
    if dropped:
        logger.warning(
            f"Ignoring GRPO-only settings that BaNEL has no use for: {', '.join(dropped)}. BaNEL fits its negative "
            "models by maximum likelihood and scores every sample with transformers (docs/migrating_from_grpo.md)."
        )
    return kept


def run_train(argv: list[str]) -> int:
    """
    `banel-trl train`: parse the config and command line; train in this process, or, when arguments for `accelerate
    launch` remain (`--num_processes 2`, `--accelerate_config multi_gpu`, ...), start the run through it.
    """
    parser = banel.make_parser(prog="banel-trl train")
    *arguments, config_remaining, cli_remaining = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True
    )
    config_remaining, cli_remaining = _drop_grpo_only_options(config_remaining), _drop_grpo_only_options(cli_remaining)
    launch_args = config_remaining + cli_remaining
    if not launch_args or os.environ.get(LAUNCHED_ENV) == "1":
        banel.main(*arguments)
        return 0

    launch_args = resolve_accelerate_config_argument(launch_args)
    known = accelerate_launch.launch_command_parser()._option_string_actions
    unknown = [name for name in (a.split("=", 1)[0] for a in launch_args if a.startswith("--")) if name not in known]
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


def run_demo(argv: list[str]) -> int:
    """`banel-trl demo`: the addition-attack demo, with `banel_trl/configs/demo.yaml` as its defaults."""
    demo.main(*demo.make_parser(prog="banel-trl demo").parse_args_and_config(argv))
    return 0


def run_report(argv: list[str]) -> int:
    """`banel-trl report`: the plot and summary of a run from its output folder."""
    report.main(report.parse_args(argv, prog="banel-trl report"))
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
