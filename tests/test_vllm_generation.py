"""
`use_vllm`: the candidates come from vLLM through TRL's own `VLLMGeneration`, the regions score them with transformers.

vLLM needs a GPU and is never installed here: `FakeLLM` stands in for `vllm.LLM` behind TRL's class, with the same
calls (`generate` on unpadded token ids, `load_weights` for a weight push, `reset_prefix_cache`) and samples its own
copy of the checkpoint with transformers, so that a wrong model or a missing weight push shows in what it draws.
"""

import types

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.generation import vllm_generation as trl_vllm

from banel_trl import BanelConfig, BanelTrainer, vllm_generation
from banel_trl.scoring import only_adapter
from banel_trl.testing import starts_with_b
from banel_trl.vllm_generation import VLLMSampler

from .test_distillation import distilled_config
from .test_trainer import CountingReward


class FakeLLM:
    """`vllm.LLM` as TRL's colocate mode calls it, sampling with transformers from the checkpoint it was given."""

    def __init__(self, model: str, seed: int, **kwargs):
        self.model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.path, self.seed, self.kwargs = model, seed, kwargs
        self.prompts, self.pushes = [], 0
        runner = types.SimpleNamespace(model=types.SimpleNamespace(load_weights=self.load_weights))
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=types.SimpleNamespace(model_runner=runner))
        )
        FakeLLM.instances.append(self)

    def load_weights(self, weights):
        for name, tensor in weights:
            self.model.get_parameter(name).data.copy_(tensor)

    def reset_prefix_cache(self):
        self.pushes += 1  # TRL resets the cache once after each weight push

    @torch.no_grad()
    def generate(self, prompts, sampling_params, use_tqdm):
        assert sampling_params.n == 1 and sampling_params.logprobs is None
        ids = [prompt["prompt_token_ids"] for prompt in prompts]
        self.prompts.extend(ids)
        width = max(map(len, ids))
        input_ids = torch.tensor([[0] * (width - len(row)) + row for row in ids])
        attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids])
        with torch.random.fork_rng():  # vLLM keeps its own random state
            torch.manual_seed(self.seed + len(self.prompts))
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=0,
                temperature=sampling_params.temperature, max_new_tokens=sampling_params.max_tokens,
            )  # fmt: skip
        eos = self.model.generation_config.eos_token_id
        outputs = []
        for prompt, completion in zip(ids, sequences[:, width:].tolist(), strict=True):
            completion = completion[: completion.index(eos) + 1] if eos in completion else completion
            sample = types.SimpleNamespace(token_ids=completion, logprobs=None)
            outputs.append(types.SimpleNamespace(prompt_token_ids=prompt, outputs=[sample]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    monkeypatch.setattr(vllm_generation, "is_vllm_available", lambda: True)
    monkeypatch.setattr(trl_vllm, "is_vllm_available", lambda: True)
    monkeypatch.setattr(trl_vllm, "LLM", FakeLLM, raising=False)
    monkeypatch.setattr(trl_vllm, "SamplingParams", types.SimpleNamespace, raising=False)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # TRL's colocate mode sets them for vLLM: removed after the test
    return FakeLLM.instances


@pytest.fixture
def base_path(_toy_proposal, tokenizer, tmp_path):
    path = tmp_path / "base"
    _toy_proposal.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def no_transformers_generate(*args, **kwargs):
    raise AssertionError("a candidate was drawn with transformers' generate under use_vllm")


def test_vllm_draws_every_candidate_and_the_budget_and_regions_hold(fake_vllm, base_path, tokenizer,
                                                                    unconditional_dataset, make_config):  # fmt: skip
    counting = CountingReward()
    args = make_config(use_vllm=True, max_reward_evaluations=100, max_eval_reward_evaluations=32)
    trainer = BanelTrainer(base_path, counting, args=args, train_dataset=unconditional_dataset)
    trainer.model.generate = no_transformers_generate
    trainer.train()

    (engine,) = fake_vllm
    assert engine.path == base_path and engine.kwargs["max_num_seqs"] == args.generation_batch_size
    assert engine.kwargs["gpu_memory_utilization"] == 0.3 and engine.kwargs["logprobs_mode"] == "processed_logprobs"
    assert set(map(tuple, engine.prompts)) == {(tokenizer.bos_token_id,)}  # unpadded prompt ids
    assert len(counting.calls) == len(set(counting.calls)) == trainer.num_reward_evaluations == 100
    assert len(trainer.posterior.regions) == 2 and engine.pushes == 0  # p_theta proposes: nothing to push
    drawn = len(engine.prompts)
    metrics = trainer.evaluate(unconditional_dataset)
    assert len(engine.prompts) > drawn and 0 <= metrics["eval_success_rate"] <= 1


def test_a_distilled_proposal_is_pushed_to_vllm_once_and_sampled_there(fake_vllm, base_path, unconditional_dataset,
                                                                       make_config):  # fmt: skip
    args = distilled_config(make_config, use_vllm=True, max_reward_evaluations=200, max_eval_reward_evaluations=32)
    trainer = BanelTrainer(base_path, starts_with_b, args=args, train_dataset=unconditional_dataset)
    trainer.model.generate = no_transformers_generate
    trainer.train()
    trainer.evaluate(unconditional_dataset)

    (engine,) = fake_vllm
    proposal = trainer.posterior.proposal_adapter
    assert proposal == "proposal_2" and engine.pushes == 2  # proposal_1 for round 1, proposal_2 for the evaluation
    # vLLM's copy is p_theta with the final proposal merged: the same next-token distribution as the adapter.
    input_ids = torch.tensor([[trainer.processing_class.bos_token_id, 4, 5]])
    trainer.model.eval()
    with only_adapter(trainer.model, trainer.posterior.negative_models, proposal):
        expected = trainer.model(input_ids=input_ids).logits
    torch.testing.assert_close(engine.model(input_ids=input_ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_vllm_settings_banel_cannot_honour_are_refused(fake_vllm, base_path, proposal, tmp_path):
    config = dict(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="vllm_mode"):
        BanelConfig(**config, vllm_mode="remote")
    with pytest.raises(ValueError, match="draws its own candidates"):
        BanelConfig(**config, vllm_tensor_parallel_size=2)
    with pytest.raises(ValueError, match="`n`.*num_generations"):
        BanelConfig(**config, use_vllm=True, generation_kwargs={"n": 4})
    with pytest.raises(ValueError, match="vllm_server_port.*must be an integer"):
        BanelConfig(**config, vllm_server_port="8000a")
    args = BanelConfig(**config, use_vllm=True, vllm_mode="server")
    two_processes = types.SimpleNamespace(num_processes=2)
    with pytest.raises(ValueError, match="several training processes"):
        VLLMSampler(proposal, two_processes, None, args)
    proposal.config._name_or_path = ""
    with pytest.raises(ValueError, match="no path: save it"):
        VLLMSampler(proposal, types.SimpleNamespace(num_processes=1), None, args)


@pytest.mark.skipif(trl_vllm.is_vllm_available(), reason="vLLM is installed")
def test_use_vllm_without_vllm_names_the_extra(tmp_path):
    with pytest.raises(ImportError, match=r"pip install banel_trl\[vllm\]"):
        BanelConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", use_vllm=True)
