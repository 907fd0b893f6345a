"""The distilled loop (`distill_posterior`, the paper's Algorithm 2): budget, acceptance, a plain adapter, resume."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from banel_trl import BanelTrainer, distillation
from banel_trl.fitting import ModelFitter
from banel_trl.ledger import LEDGER_NAME
from banel_trl.regions import BASE_ADAPTER, POSTERIOR_CONFIG_NAME
from banel_trl.testing import starts_with_b
from banel_trl.thresholds import region_scores

from .conftest import sample_texts
from .test_trainer import CountingReward, success_rate


def distilled_config(make_config, **overrides):
    """Three rounds of 100 NREs, each distilled; shallow cuts, and a bound that fails fast instead of stalling."""
    settings = dict(
        max_reward_evaluations=300,
        samples_per_round=100,
        num_train_epochs=3,
        distill_posterior=True,
        distillation_samples=200,
        first_region_rejection_rate=0.9,
        target_rejection_rate=0.5,
        max_sampling_attempts=200,
    )
    return make_config(**{**settings, **overrides})


def test_the_distilled_loop_keeps_the_budget_samples_without_rejection_and_beats_the_base_rate(
    proposal, tokenizer, unconditional_dataset, make_config
):
    base_rate = success_rate(sample_texts(proposal.generate, tokenizer, 2000))
    counting = CountingReward()
    trainer = BanelTrainer(
        proposal, counting, args=distilled_config(make_config), train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()

    assert len(counting.calls) == len(set(counting.calls)) == trainer.num_reward_evaluations <= 300
    # Every round after the first samples a distilled proposal whose regions are distilled into it: nothing rejected.
    rounds = [log for log in trainer.state.log_history if "acceptance_rate" in log]
    assert [log["acceptance_rate"] for log in rounds[1:]] == [1.0] * (len(rounds) - 1)
    posterior = trainer.posterior
    assert posterior.proposal_adapter == f"proposal_{len(rounds)}" and posterior.active_regions == []
    # Each region was fit on samples of the proposal of its round and is scored against it.
    assert [(r.proposal, r.reference_adapter) for r in posterior.regions[1:]] == [
        (f"proposal_{k}", f"proposal_{k}") for k in range(1, len(rounds))
    ]
    final_rate = success_rate(sample_texts(posterior.generate, tokenizer, 1000))
    assert final_rate > 3 * base_rate, (base_rate, final_rate)  # 0.36-0.60 against ~0.04 (seeds 0, 1)


def _distil_a_deep_cut(train_toy, make_config, monkeypatch):
    """A toy run whose first region is cut at 0.995 (about 5% of p_theta's samples lie inside); its fits, its log."""
    fits = []
    fit_adapter = ModelFitter.fit_adapter

    def recorded(self, name, examples, *args):
        fits.append((name, examples))
        return fit_adapter(self, name, examples, *args)

    monkeypatch.setattr(ModelFitter, "fit_adapter", recorded)
    args = distilled_config(make_config, max_reward_evaluations=100, first_region_rejection_rate=0.995)
    trainer = train_toy(args, starts_with_b)
    (region,) = trainer.posterior.regions
    stages = [name for name, _ in fits if name.startswith("proposal_1_stage_")]
    ((name, samples),) = [(name, examples) for name, examples in fits if name == "proposal_1"]
    (logged,) = [log for log in trainer.state.log_history if "distillation/stages" in log]
    assert logged["distillation/stages"] == len(stages) + 1 and logged["distillation/samples"] == len(samples)
    batch = trainer.region_policy._batch(samples)
    assert (region_scores(trainer.posterior, region, batch) <= region.threshold).all()  # all inside the posterior
    assert not any(adapter.startswith("proposal_1_stage") for adapter in trainer.model.peft_config)
    return args, stages, samples, logged


def test_a_deep_cut_is_distilled_in_stages_within_20_proposals_per_sample_all_inside_the_posterior(
    train_toy, make_config, monkeypatch
):
    # Stages wherever the proposal's own samples would not reach twice the samples wanted within the allowance.
    monkeypatch.setattr(distillation, "DRAW_ON", 2.0)
    args, stages, samples, logged = _distil_a_deep_cut(train_toy, make_config, monkeypatch)
    # A first stage from p_theta does not reach the cut often enough: intermediate proposals, each fit on the tenth of
    # its stage's candidates nearest the cut, reach it.
    assert len(stages) >= 1 and len(samples) == args.distillation_samples
    assert logged["distillation/proposals_per_sample"] <= 20


def test_a_cut_the_proposal_reaches_often_enough_is_distilled_from_the_proposals_own_samples(
    train_toy, make_config, monkeypatch
):
    # Drawing on wherever p_theta's own samples reach a twentieth of the samples wanted within the allowance (from
    # ~0.25% of them inside the cut; ~5% are on the toy task).
    monkeypatch.setattr(distillation, "DRAW_ON", 0.05)
    args, stages, samples, logged = _distil_a_deep_cut(train_toy, make_config, monkeypatch)
    # The samples are p_theta's own that lie inside, the posterior's, with no intermediate proposal; at most 20
    # proposals per sample wanted (each stage rounded up to whole prompts).
    assert stages == [] and distillation.DRAW_ON * args.distillation_samples <= len(samples)
    rounding = args.generation_batch_size  # the last batch of a draw is whole
    assert logged["distillation/proposals_per_sample"] * len(samples) <= 20 * args.distillation_samples + rounding


def test_a_cut_no_stage_reaches_distils_nothing_and_the_next_round_samples_it_by_rejection(
    make_proposal, tokenizer, unconditional_dataset, make_config, caplog
):
    args = distilled_config(make_config, max_reward_evaluations=200, max_sampling_attempts=3)
    trainer = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    fit = trainer.region_policy.fit

    def fit_rejecting_everything(ledger, k):
        region, loss = fit(ledger, k)
        region.threshold = -1e9
        return region, loss

    trainer.region_policy.fit = fit_rejecting_everything
    with caplog.at_level("WARNING", logger="banel_trl"):
        trainer.train()
    assert "Round 0: 0 of the" in caplog.text and "no generator is distilled" in caplog.text
    (logged, _) = [log for log in trainer.state.log_history if "acceptance_rate" in log]
    # At most 20 candidates per sample wanted in all, each stage rounded up to a whole prompt of `num_generations`.
    assert logged["distillation/samples"] == 0 and logged["distillation/proposals"] <= 20 * 200 + 4 * 32
    # The posterior stays p_theta cut by region 0: round 1 samples it by rejection, accepts nothing, and the run ends.
    assert trainer.posterior.proposal_adapter == BASE_ADAPTER and len(trainer.posterior.active_regions) == 1
    assert trainer.ledger.round_ends[1]["accepted"] == 0 and trainer.num_reward_evaluations == 100


def test_the_final_generator_is_a_plain_peft_adapter(_toy_proposal, tokenizer, unconditional_dataset, make_config,
                                                     tmp_path):  # fmt: skip
    base = tmp_path / "base"
    _toy_proposal.save_pretrained(base)
    tokenizer.save_pretrained(base)
    args = distilled_config(make_config, max_reward_evaluations=200)
    trainer = BanelTrainer(str(base), starts_with_b, args=args, train_dataset=unconditional_dataset)
    trainer.train()
    trainer.save_model()

    # Sampled with PEFT and transformers alone, in a process that never imports banel_trl.
    script = f"""
import sys, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
torch.manual_seed(0)
model = AutoPeftModelForCausalLM.from_pretrained({args.output_dir!r})
tokenizer = AutoTokenizer.from_pretrained({args.output_dir!r})
input_ids = torch.full((1000, 1), tokenizer.bos_token_id)
sequences = model.generate(input_ids=input_ids, max_new_tokens=7, do_sample=True, top_k=0)
texts = tokenizer.batch_decode(sequences[:, 1:], skip_special_tokens=True)
assert "banel_trl" not in sys.modules
print(sum(text.startswith("b") for text in texts) / len(texts))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    served_rate = float(result.stdout.strip().splitlines()[-1])
    posterior_rate = success_rate(sample_texts(trainer.posterior.generate, tokenizer, 1000))
    assert served_rate > 0.1 and abs(served_rate - posterior_rate) < 0.1, (served_rate, posterior_rate)


class _FailAtDistillationStep(TrainerCallback):
    """Raises at the given step of the first distillation fit that reaches it (a crash in the middle of a fit)."""

    def __init__(self, trainer_ref, step):
        self.trainer_ref, self.step, self.steps = trainer_ref, step, 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer_ref[0].model.active_adapter.startswith("proposal_"):
            self.steps += 1
            if self.steps == self.step:
                raise RuntimeError("killed during a distillation")


def _final_state(output_dir):
    with open(os.path.join(output_dir, POSTERIOR_CONFIG_NAME)) as file:
        config = json.load(file)
    with open(os.path.join(output_dir, LEDGER_NAME)) as file:
        ledger = file.read()
    proposal = load_file(os.path.join(output_dir, config["proposal_adapter"], "adapter_model.safetensors"))
    return config["regions"], config["proposal_adapter"], ledger, proposal


def test_a_run_interrupted_during_a_distillation_resumes_to_the_same_state(
    make_proposal, tokenizer, unconditional_dataset, make_config, tmp_path
):
    reference_args = distilled_config(make_config, output_dir=str(tmp_path / "reference"))
    BanelTrainer(
        make_proposal(), starts_with_b, args=reference_args, train_dataset=unconditional_dataset,
        processing_class=tokenizer,
    ).train()  # fmt: skip
    reference = _final_state(reference_args.output_dir)

    args = distilled_config(make_config, output_dir=str(tmp_path / "interrupted"))
    trainer_ref = [None]
    trainer_ref[0] = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer,
        callbacks=[_FailAtDistillationStep(trainer_ref, step=2)],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="killed during a distillation"):
        trainer_ref[0].train()
    # A new process: the regions saved so far, the ledger, and the distillation of the interrupted round again.
    resumed = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    resumed.train()
    regions, proposal, ledger, weights = _final_state(args.output_dir)
    assert (regions, proposal, ledger) == reference[:3]
    assert all(torch.equal(weights[key], reference[3][key]) for key in weights)
