"""BaNEL on the addition attack: one seeded run of BanelTrainer, with per-round discrimination measured on the side."""

import os
import time

from datasets import Dataset
from evaluation import encode_queries, posterior_success_rate, proposal_pool, region_discrimination

from banel_trl import BanelCallback, BanelConfig, BanelTrainer
from banel_trl.regions import BASE_ADAPTER
from banel_trl.tasks import addition_attack as task


class RoundProbe(BanelCallback):
    """
    After every round: the posterior's own success rate on that round's paid samples, and the new region's AUC (a
    round that added no region, see `RegionPolicy`, has no region figures; one
    that relaxed or retracted a region says which). A region fit against `p_theta` is measured on the fixed pool of
    `p_theta`'s samples (`pool_batches`), one fit against a distilled proposal on `proposal_pool_samples` fresh
    samples of that proposal, labelled by `reward` outside the run's budget (none: not measured).
    """

    def __init__(self, pool_batches: dict, tokenizer, reward, seed: int, proposal_pool_samples: int = 0):
        self.pool_batches = pool_batches
        self.tokenizer, self.reward, self.seed = tokenizer, reward, seed
        self.proposal_pool_samples = proposal_pool_samples
        self.rounds = []
        self.start = time.time()

    def on_round_end(self, args, state, control, trainer=None, metrics=None, **kwargs):
        region = trainer.posterior.regions[-1]
        added = region.round == metrics["round"]
        changed = "retracted" if region.retracted else "relaxed"
        row = {
            "round": metrics["round"],
            "nre": metrics["nre/used"],
            "round_success_rate": metrics["success_rate"],
            "acceptance_rate": metrics["acceptance_rate"],
            "successes": metrics["successes/total"],
            "repeats": metrics["repeats"],
            **{key: value for key, value in metrics.items() if key.startswith("distillation/")},
            "seconds": time.time() - self.start,
            **({"threshold": region.threshold, **self.discrimination(trainer, region)} if added else {}),
            **({changed: region.round} if region.reviewed_round == metrics["round"] else {}),
        }
        self.rounds.append(row)
        print(
            "    " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
            flush=True,
        )

    def discrimination(self, trainer, region) -> dict:
        if region.proposal == BASE_ADAPTER:
            return region_discrimination(trainer.posterior, self.pool_batches)
        if not self.proposal_pool_samples:
            return {}
        samples = proposal_pool(
            trainer.posterior, region.proposal, self.tokenizer, self.reward, trainer.generation_config,
            self.proposal_pool_samples, self.seed + 3000 + region.round,
        )  # fmt: skip
        batches = {kind: encode_queries(self.tokenizer, queries) for kind, queries in samples.items()}
        return {"pool": "proposal", **region_discrimination(trainer.posterior, batches)}


def run_banel(
    seed: int,
    reward,
    tokenizer,
    pool: dict,
    output_dir: str,
    eval_samples: int,
    eval_max_proposals: int,
    config_overrides: dict,
    proposal_pool_samples: int = 0,
) -> dict:
    """Train BaNEL from the pretrained attacker with the shipped defaults (plus `config_overrides`), then evaluate."""
    start = time.time()
    config = BanelConfig(
        output_dir=output_dir,
        seed=seed,
        max_completion_length=2 * task.MAX_DIGITS + 4,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        use_cpu=True,
        **config_overrides,
    )
    batches = {kind: encode_queries(tokenizer, pool[kind]) for kind in ("successes", "failures")}
    probe = RoundProbe(batches, tokenizer, reward, seed, proposal_pool_samples)
    trainer = BanelTrainer(
        task.DEFAULT_ATTACKER_PATH,  # a path, as a user passes a Hub id: the real loading code
        reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": [tokenizer.bos_token]}),
        processing_class=tokenizer,
        callbacks=[probe],
    )
    trainer.train()
    train_seconds = time.time() - start
    evaluation = posterior_success_rate(
        trainer.posterior, tokenizer, reward, trainer.generation_config, eval_samples, eval_max_proposals, seed + 1000
    )
    exact = {}
    if config.distill_posterior:
        # The exact posterior the final generator was distilled from: the last round's proposal, cut by its region
        # (a sixth of the samples: it rejects most proposals).
        distilled = trainer.posterior.proposal_adapter
        trainer.posterior.proposal_adapter = trainer.posterior.regions[-1].proposal
        exact = posterior_success_rate(
            trainer.posterior, tokenizer, reward, trainer.generation_config, eval_samples // 6,
            eval_max_proposals, seed + 2000,
        )  # fmt: skip
        trainer.posterior.proposal_adapter = distilled
        exact = {"exact_posterior": {key: value for key, value in exact.items() if key != "queries"}}
    successes = [record["completion"] for record in trainer.successes]
    return {
        "method": "banel",
        "seed": seed,
        **evaluation,
        **exact,
        "nre": trainer.num_reward_evaluations,
        "training_successes": successes,
        "rounds": probe.rounds,
        "curve": [(row["nre"], row["round_success_rate"]) for row in probe.rounds],
        "train_seconds": train_seconds,
        "seconds": time.time() - start,
        "output_dir": os.path.abspath(output_dir),
    }
