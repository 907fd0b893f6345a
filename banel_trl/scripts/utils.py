"""The registry of the reward functions that the scripts accept by name."""

import importlib
import os
import sys

from trl.rewards import accuracy_reward, get_soft_overlong_punishment, reasoning_accuracy_reward, think_format_reward

from banel_trl.tasks import addition_attack
from banel_trl.tasks.gsm8k import gsm8k_exact_match


def _addition_attack_reward(allow_leading_zeros: bool) -> addition_attack.AdditionAttackReward:
    return addition_attack.AdditionAttackReward(
        addition_attack.load_target(), addition_attack.load_tokenizer(), allow_leading_zeros=allow_leading_zeros
    )


# Name -> factory of the reward function (factories: some rewards load a model). TRL's names resolve as in `trl grpo`
# (trl/scripts/grpo.py), with the same arguments.
REWARD_FUNCS = {
    "gsm8k_exact_match": lambda: gsm8k_exact_match,
    "addition_attack": lambda: _addition_attack_reward(allow_leading_zeros=True),
    "addition_attack_no_leading_zeros": lambda: _addition_attack_reward(allow_leading_zeros=False),
    "accuracy_reward": lambda: accuracy_reward,
    "reasoning_accuracy_reward": lambda: reasoning_accuracy_reward,
    "think_format_reward": lambda: think_format_reward,
    "get_soft_overlong_punishment": lambda: get_soft_overlong_punishment(
        max_completion_len=1280, soft_punish_cache=256
    ),
}


def get_reward_func(name: str):
    """
    Resolve a reward function named on the command line, as TRL's scripts do.

    Args:
        name (`str`):
            A registry name (a key of `REWARD_FUNCS`: `gsm8k_exact_match`, `addition_attack`,
            `addition_attack_no_leading_zeros`, and TRL's `accuracy_reward`, `reasoning_accuracy_reward`,
            `think_format_reward`, `get_soft_overlong_punishment`) or a dotted import path (`my_lib.rewards.my_reward`), looked up from
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
