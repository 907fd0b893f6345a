"""
The BaNEL training script, `banel-trl train`: as TRL's `trl/scripts/grpo.py`, from a YAML config and/or command-line
arguments.

    python -m banel_trl.scripts.banel --config run.yaml --max_reward_evaluations 3000

runs in this process; `banel-trl train` takes the same arguments and also starts multi-process runs through
`accelerate launch`.
"""

import argparse
from dataclasses import dataclass, field

import torch
from datasets import load_dataset
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from banel_trl.config import BanelConfig
from banel_trl.report import write_report
from banel_trl.scripts.utils import get_reward_func
from banel_trl.trainer import BanelTrainer


@dataclass
class BanelScriptArguments(ScriptArguments):
    """
    Script arguments of `banel-trl train`.

    Args:
        reward_funcs (`list[str]`, *optional*):
            Reward functions: names from the registry (`gsm8k_exact_match`, `addition_attack`,
            `addition_attack_no_leading_zeros`, and TRL's `accuracy_reward`, `reasoning_accuracy_reward`,
            `think_format_reward`, `get_soft_overlong_punishment`, as in `trl grpo`) or dotted import paths (e.g.
            `'my_lib.rewards.my_reward'`).
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
            "addition_attack_no_leading_zeros, and TRL's accuracy_reward, reasoning_accuracy_reward, "
            "think_format_reward, get_soft_overlong_punishment) or dotted import paths (e.g. "
            "'my_lib.rewards.my_reward')."
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


def _load_reward_funcs(script_args: BanelScriptArguments) -> list:
    reward_funcs = [get_reward_func(name) for name in script_args.reward_funcs]
    if script_args.reward_model_name_or_path:
        reward_funcs.append(script_args.reward_model_name_or_path)
    if not reward_funcs:
        raise ValueError(
            "No reward function: set `reward_funcs` (registry names or import paths) and/or "
            "`reward_model_name_or_path`."
        )
    return reward_funcs


def _set_model_init_kwargs(model_args: ModelConfig, training_args: BanelConfig) -> None:
    """Put the model arguments into `training_args.model_init_kwargs`, under the config's own `model_init_kwargs`."""
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


def _load_datasets(script_args: BanelScriptArguments, training_args: BanelConfig, dataset_args: DatasetMixtureConfig):
    """The train split and, with `do_eval`, the test split (else `None`)."""
    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    else:
        raise ValueError(
            "Give a dataset: `dataset_name` (a Hub id or a builder), or a `datasets` list in the YAML config."
        )
    if script_args.dataset_train_split not in dataset:
        raise ValueError(
            f"The dataset has no split {script_args.dataset_train_split!r}; its splits are "
            f"{list(dataset)}. Set `dataset_train_split`."
        )
    eval_dataset = None
    if training_args.do_eval:
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"`do_eval` needs the split {script_args.dataset_test_split!r}; the dataset has "
                f"{list(dataset)}. Set `dataset_test_split`."
            )
        eval_dataset = dataset[script_args.dataset_test_split]
    return dataset[script_args.dataset_train_split], eval_dataset


def main(
    script_args: BanelScriptArguments,
    training_args: BanelConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig,
) -> BanelTrainer:
    """
    Run BaNEL from parsed arguments, as TRL's scripts do: load the rewards, the dataset and the model, train, save the
    posterior, evaluate (with `do_eval`), write the report and push to the Hub (with `push_to_hub`).

    Returns:
        [`BanelTrainer`]: the trained trainer.
    """
    if model_args.model_name_or_path is None:
        raise ValueError("`model_name_or_path` is required: the proposal p_theta (a Hub id or a local path).")
    reward_funcs = _load_reward_funcs(script_args)
    _set_model_init_kwargs(model_args, training_args)
    train_dataset, eval_dataset = _load_datasets(script_args, training_args, dataset_args)

    trainer = BanelTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
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
        trainer.accelerator.print(
            f"Posterior success rate on {script_args.dataset_test_split}: "
            f"{metrics['eval_success_rate']:.4g} ({metrics['eval_num_samples']} samples)."
        )
    if script_args.write_report and trainer.accelerator.is_main_process:
        _, plot_path = write_report(training_args.output_dir, patterns=False)
        trainer.accelerator.print(
            f"Plot: {plot_path} (`banel-trl report {training_args.output_dir}` adds what the regions reject)."
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
        trainer.accelerator.print(f"Pushed to https://huggingface.co/{trainer.hub_model_id}.")
    return trainer


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> TrlParser:
    """
    The parser of the script's arguments: [`BanelScriptArguments`], [`BanelConfig`], TRL's `ModelConfig` and
    `DatasetMixtureConfig`.

    Args:
        subparsers (`argparse._SubParsersAction`, *optional*):
            Add the parser to these as the `train` command (their `parser_class` must be `TrlParser`).
        prog (`str`, *optional*):
            The program name shown in the usage (without `subparsers`).

    Returns:
        `TrlParser`: the parser.
    """
    dataclass_types = (BanelScriptArguments, BanelConfig, ModelConfig, DatasetMixtureConfig)
    if subparsers is not None:
        return subparsers.add_parser("train", help="Run the BaNEL training script", dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
