"""
The peers BaNEL is measured against on the addition attack, each under the same budget of reward evaluations (NREs):
TRL's GRPOTrainer on the task reward, GRPOTrainer on RND and pseudo-count novelty bonuses (successes filtered out of
the learning signal, as in the paper), the pretrained attacker at a higher temperature, and a hand-written rule.
"""

import random
import time

import torch
from datasets import Dataset
from evaluation import model_success_rate, rate_summary
from trl import GRPOConfig, GRPOTrainer

from banel_trl.tasks import addition_attack as task
from banel_trl.tasks.addition_attack import parse_query


GENERATIONS_PER_STEP = 64
NUM_GENERATIONS = 8


class MeteredReward:
    """
    The task reward, counting every evaluation (one NRE per generation) and recording the success rate of each batch.
    As a GRPO reward function it returns the task reward; `bonus` makes it return a novelty bonus instead (0 for an
    invalid query), with each success's bonus replaced by the mean of its group's failures so that a success carries
    no advantage. `is_valid` says which completions may earn a bonus (default: a well-formed addition query), so that
    other tasks (examples/molecules) reuse the harness.
    """

    def __init__(self, reward, bonus=None, is_valid=None):
        self.reward = reward
        self.bonus = bonus
        self.is_valid = is_valid or (lambda completion: parse_query(completion) is not None)
        self.__name__ = reward.__name__ if bonus is None else type(bonus).__name__
        self.nre = 0
        self.curve = []  # (NREs so far, success rate of this batch)
        self.successes = []

    def __call__(self, prompts, completions, **kwargs):
        rewards = self.reward(completions=completions)
        self.nre += len(rewards)
        self.curve.append((self.nre, sum(rewards) / len(rewards)))
        self.successes += [c for c, r in zip(completions, rewards, strict=True) if r]
        if self.bonus is None:
            return rewards
        # Syntax is free to check: an invalid query earns no bonus, else novelty alone drives the attacker off-format.
        valid = [self.is_valid(completion) for completion in completions]
        bonus = [b if ok else 0.0 for b, ok in zip(self.bonus(completions), valid, strict=True)]
        for start in range(0, len(bonus), NUM_GENERATIONS):
            group = range(start, start + NUM_GENERATIONS)
            failures = [bonus[i] for i in group if not rewards[i]]
            for i in group:
                if rewards[i]:
                    bonus[i] = sum(failures) / len(failures) if failures else 0.0
        return bonus


def one_hot_queries(queries: list[str], width: int = 2 * task.MAX_DIGITS + 2) -> torch.Tensor:
    """(N, width * 13) position-wise one-hot encoding of the query characters (13th symbol: padding / other)."""
    alphabet = {c: i for i, c in enumerate("0123456789+=")}
    features = torch.zeros(len(queries), width, 13)
    for n, query in enumerate(queries):
        for position in range(width):
            char = query[position] if position < len(query) else None
            features[n, position, alphabet.get(char, 12)] = 1.0
    return features.flatten(1)


class RNDBonus:
    """
    Random network distillation: the error of a predictor trained online to match a fixed random network, on the
    features `featurize` gives a batch of completions (default: the one-hot characters of an addition query).
    """

    def __init__(self, seed: int, hidden: int = 128, out: int = 32, lr: float = 1e-3, featurize=one_hot_queries):
        generator = torch.Generator().manual_seed(seed)
        self.featurize = featurize
        inputs = featurize([""]).size(1)

        def network():
            layers = [torch.nn.Linear(inputs, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out)]
            for layer in layers[::2]:
                torch.nn.init.normal_(layer.weight, std=layer.in_features**-0.5, generator=generator)
                torch.nn.init.zeros_(layer.bias)
            return torch.nn.Sequential(*layers)

        self.target, self.predictor = network().requires_grad_(False), network()
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=lr)

    def __call__(self, completions: list[str]) -> list[float]:
        features = self.featurize(completions)
        errors = (self.predictor(features) - self.target(features)).pow(2).mean(dim=1)
        self.optimizer.zero_grad()
        errors.mean().backward()
        self.optimizer.step()
        return errors.detach().tolist()


class PseudoCountBonus:
    """Count-based exploration: 1/sqrt(1 + n) averaged over the query's positional character uni- and bigrams."""

    def __init__(self):
        self.counts = {}

    @staticmethod
    def features(query: str) -> list[tuple]:
        return [(i, query[i]) for i in range(len(query))] + [(i, query[i : i + 2]) for i in range(len(query) - 1)]

    def __call__(self, completions: list[str]) -> list[float]:
        bonus = []
        for query in completions:
            features = self.features(query) or [("empty",)]
            bonus.append(sum((1 + self.counts.get(f, 0)) ** -0.5 for f in features) / len(features))
        for query in completions:
            for feature in self.features(query):
                self.counts[feature] = self.counts.get(feature, 0) + 1
        return bonus


def run_grpo(
    seed: int,
    reward,
    tokenizer,
    output_dir: str,
    budget: int,
    eval_samples: int,
    bonus: str | None,
    learning_rate: float,
) -> dict:
    """GRPOTrainer from the pretrained attacker with `budget` generations, each one reward evaluation."""
    start = time.time()
    bonuses = {None: None, "rnd": lambda: RNDBonus(seed), "pseudo_count": PseudoCountBonus}
    metered = MeteredReward(reward, bonuses[bonus]() if bonus else None)
    config = GRPOConfig(
        output_dir=output_dir,
        seed=seed,
        max_steps=budget // GENERATIONS_PER_STEP,
        per_device_train_batch_size=GENERATIONS_PER_STEP,
        num_generations=NUM_GENERATIONS,
        max_completion_length=2 * task.MAX_DIGITS + 4,
        learning_rate=learning_rate,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="no",
        use_cpu=True,
    )
    attacker = task.load_attacker()
    trainer = GRPOTrainer(
        attacker,
        metered,
        args=config,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token] * 64}),
    )
    trainer.train()
    train_seconds = time.time() - start
    evaluation = model_success_rate(trainer.model, tokenizer, reward, eval_samples, seed + 1000)
    return {
        "method": "grpo" if bonus is None else bonus,
        "seed": seed,
        **evaluation,
        "nre": metered.nre,
        "training_successes": metered.successes,
        "curve": metered.curve,
        "train_seconds": train_seconds,
        "seconds": time.time() - start,
    }


def run_temperature(
    seed: int, reward, tokenizer, budget: int, eval_samples: int, temperatures=(1.0, 1.5, 2.0, 2.5, 3.0)
) -> dict:
    """Spend the budget evenly on the pretrained attacker at each temperature; evaluate the one with most successes."""
    start = time.time()
    attacker = task.load_attacker()
    per_temperature = budget // len(temperatures)
    trials, curve, training_successes = {}, [], []
    for i, temperature in enumerate(temperatures):
        queries = task.sample_queries(attacker, tokenizer, per_temperature, temperature=temperature, seed=seed + i)
        rewards = reward(completions=queries)
        trials[temperature] = sum(rewards)
        curve.append(((i + 1) * per_temperature, sum(rewards) / per_temperature))
        training_successes += [q for q, r in zip(queries, rewards, strict=True) if r]
    best = max(temperatures, key=lambda t: (trials[t], -t))
    evaluation = model_success_rate(attacker, tokenizer, reward, eval_samples, seed + 1000, temperature=best)
    return {
        "method": "temperature",
        "seed": seed,
        **evaluation,
        "nre": per_temperature * len(temperatures),
        "temperature": best,
        "trials": trials,
        "training_successes": training_successes,
        "curve": curve,
        "seconds": time.time() - start,
    }


def run_pretrained(seed: int, reward, tokenizer, eval_samples: int) -> dict:
    start = time.time()
    evaluation = model_success_rate(task.load_attacker(), tokenizer, reward, eval_samples, seed + 1000)
    return {"method": "pretrained", "seed": seed, **evaluation, "nre": 0, "curve": [], "seconds": time.time() - start}


def rule_based_queries(rng: random.Random, num_samples: int, allow_leading_zeros: bool) -> list[str]:
    """
    The patterns BaNEL's successes show (docs/results/addition_attack.md): with leading zeros allowed, pad an operand
    with zeros; otherwise, long carry chains (operands whose digits sum to 9 or more in every column).
    """
    queries = []
    for _ in range(num_samples):
        a, b = task.sample_query(rng)
        if allow_leading_zeros:
            a = "0" * rng.randint(1, task.MAX_DIGITS - 1) + str(a)
            a = a[-task.MAX_DIGITS :] if len(a) > task.MAX_DIGITS else a
            queries.append(task.format_query(a, b))
        else:
            digits = task.MAX_DIGITS
            a_digits = [rng.randint(1 if i == 0 else 0, 9) for i in range(digits)]
            b_digits = [rng.randint(max(0, 9 - d), 9) for d in a_digits]
            b_digits[0] = max(b_digits[0], 1)
            queries.append(task.format_query("".join(map(str, a_digits)), "".join(map(str, b_digits))))
    return queries


def run_rule_based(seed: int, reward, tokenizer, eval_samples: int) -> dict:
    start = time.time()
    queries = rule_based_queries(random.Random(seed), eval_samples, reward.allow_leading_zeros)
    rewards = reward(completions=queries)
    return {
        "method": "rule_based",
        "seed": seed,
        **rate_summary(int(sum(rewards)), eval_samples),
        "nre": 0,
        "curve": [],
        "queries": [q for q, r in zip(queries, rewards, strict=True) if r],
        "seconds": time.time() - start,
    }
