"""
TRL's GRPOTrainer unit tests (`tests/test_grpo_trainer.py`, class `TestGRPOTrainer`) ported to BanelTrainer.

Each test keeps TRL's constructor calls, arguments and dataset formats. Hub ids are replaced by tiny models built
offline (`hub`): the model argument is still a path string, as the hub id was. TRL's datasets come from
`banel_trl.testing.zen_dataset`, an offline `trl-internal-testing/zen`. BaNEL's only additions to TRL's arguments are
a small budget (`max_reward_evaluations=BUDGET`) for tests that train. GRPO's assertion that every parameter changed
becomes BaNEL's (`assert_banel_trained`): the budget is held, a region was fit when a round had failures to fit it
on, the base model's weights are unchanged, and something was logged.

Tests of GRPO-only features are not ported; `SKIPPED` lists them with one line why each. Out of scope: the other
classes of TRL's file (`TestGetHighEntropyMask`, `TestGRPORolloutDispatch`,
`TestTransformersContinuousBatchingContract`, `TestGRPOTrainerSlow`: entropy masks, rollout functions, continuous
batching, GPU-only runs) and `TestGRPOTrainerVLM` (vision-language models, which BaNEL does not support).
"""

import json
import string

import pytest
import torch
import transformers
from datasets import DatasetDict, IterableDatasetDict
from packaging.version import Version
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from banel_trl import BanelConfig, BanelTrainer
from banel_trl.testing import (
    CHAT_TEMPLATE,
    ZEN_ALPHABET,
    char_tokenizer,
    character_tokenizer,
    tiny_reward_model,
    zen_dataset,
)


SKIPPED = {
    "test_train_loss_types": "GRPO loss types (bnpo, dr_grpo, dapo, ...) and Liger: BaNEL's fits are maximum likelihood.",
    "test_iterable_dataset_requires_dispatch_batches_false": "GRPO shards its prompt DataLoader; BaNEL draws prompts "
    "itself, each process from its own seeded stream.",
    "test_iterable_dataset_forces_num_workers_zero": "GRPO's prompt DataLoader workers; BaNEL reads no prompt through "
    "a DataLoader.",
    "test_iterable_eval_keeps_map_style_train_workers": "GRPO's eval DataLoader; BaNEL's evaluate samples itself.",
    "test_train_multiple_iterations": "num_iterations reuses a GRPO generation batch for several policy updates; "
    "BaNEL's counterpart is num_train_epochs per round.",
    "test_liger_kernel_with_peft_lm_head_raises": "Liger GRPO loss.",
    "test_liger_kernel_with_peft_non_lm_head_target_allowed": "Liger GRPO loss.",
    "test_liger_kernel_with_peft_modules_to_save_lm_head_allowed": "Liger GRPO loss.",
    "test_liger_kernel_with_peft_prompt_learning_raises": "Liger GRPO loss.",
    "test_train_with_sync_ref_model": "Reference model sync (beta/KL): BaNEL has no KL term.",
    "test_train_beta_non_zero": "beta/KL reference model: BaNEL has no KL term.",
    "test_get_off_policy_mask": "GRPO off-policy mask.",
    "test_get_off_policy_mask_padding": "GRPO off-policy mask.",
    "test_train_with_off_policy_mask": "GRPO off-policy mask.",
    "test_train_with_off_policy_mask_with_liger": "GRPO off-policy mask with Liger.",
    "test_compute_liger_loss_passes_vllm_is_ratio": "Liger loss with vLLM importance sampling.",
    "test_train_with_bias_correction_kl": "KL bias correction: BaNEL has no KL term.",
    "test_train_with_cast_lm_head_to_fp32": "Casts the trained policy's lm_head for GRPO's loss; BaNEL's p_theta is "
    "frozen and has no such option.",
    "test_train_with_static_entropy": "Entropy bonus of GRPO's loss.",
    "test_train_with_adaptive_entropy": "Entropy bonus of GRPO's loss.",
    "test_entropy_bonus_scale": "Entropy bonus of GRPO's loss.",
    "test_train_with_adaptive_entropy_gradient_accumulation": "Entropy bonus of GRPO's loss.",
    "test_entropy_bonus_flows_gradients": "Entropy bonus of GRPO's loss.",
    "test_train_with_entropy_filter": "GRPO high-entropy token mask.",
    "test_train_vllm_and_peft": "vLLM (skipped in TRL too).",
    "test_train_vllm_structured_outputs": "vLLM (skipped in TRL too).",
    "test_train_vllm_importance_sampling_correction": "vLLM importance sampling (skipped in TRL too).",
    "test_train_vllm_with_additional_generation_kwargs": "vLLM (skipped in TRL too).",
    "test_train_scale_rewards": "GRPO advantage scaling: BaNEL compares the reward with success_threshold.",
    "test_train_with_mask_truncated_completions": "GRPO loss mask of truncated completions.",
    "test_train_with_mask_truncated_completions_all_masked": "GRPO loss mask of truncated completions.",
    "test_warning_raised_sequence_level_with_token_summed_loss": "Importance sampling level with GRPO loss types.",
    "test_train_delta_clipping": "GRPO two-sided ratio clipping (delta).",
    "test_train_sequence_importance_sampling": "GRPO sequence-level importance sampling.",
    "test_train_with_unknown_environment_raises": "environment_factory is refused at construction "
    "(test_train_with_multiple_environments): this later check cannot run.",
    "test_train_with_environment_owned_reward": "environment_factory is refused at construction "
    "(test_train_with_environment_factory).",
    "test_environment_owned_reward_coexists_with_reward_funcs": "environment_factory is refused at construction "
    "(test_train_with_environment_factory).",
    "test_environment_owned_reward_mixed_environments": "environment_factory is refused at construction "
    "(test_train_with_multiple_environments).",
    "test_environment_owned_data_requires_max_steps": "environment_factory is refused at construction "
    "(test_train_with_environment_owned_data).",
    "test_multiple_environments_without_dataset_raises": "environment_factory is refused at construction "
    "(test_train_with_multiple_environments).",
    "TestGRPOTrainerVLM (whole class)": "Vision-language models: BaNEL's prompts are text or chat messages.",
}

BUDGET = 12  # max_reward_evaluations of the tests that train: BaNEL's one addition to TRL's arguments
EVAL_BUDGET = 100  # max_eval_reward_evaluations of the tests that evaluate: every sample they ask for

# Tiny stand-ins for TRL's Hub models: hub id -> (class, model_type, config overrides). Every one shares the tokenizer
# of `tokenizer()` except the Llama reward model, which has its own (test_train_different_reward_model).
TINY_MODELS = {
    "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5": ("Qwen2ForCausalLM", "qwen2", {}),
    "trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5": ("Qwen2ForSequenceClassification", "qwen2", {}),
    "trl-internal-testing/tiny-Qwen3ForCausalLM": ("Qwen3ForCausalLM", "qwen3", {}),
    "trl-internal-testing/tiny-Qwen3ForSequenceClassification": ("Qwen3ForSequenceClassification", "qwen3", {}),
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": ("LlamaForSequenceClassification", "llama", {}),
    "trl-internal-testing/tiny-Cohere2ForCausalLM": ("Cohere2ForCausalLM", "cohere2", {}),
    "trl-internal-testing/tiny-Glm4MoeForCausalLM": (
        "Glm4MoeForCausalLM",
        "glm4_moe",
        dict(moe_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1),
    ),
    "trl-internal-testing/tiny-GptOssForCausalLM": (
        "GptOssForCausalLM",
        "gpt_oss",
        dict(num_local_experts=4, num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"]),
    ),
    "trl-internal-testing/tiny-Qwen3MoeForCausalLM": (
        "Qwen3MoeForCausalLM",
        "qwen3_moe",
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    ),
    "trl-internal-testing/tiny-NemotronHForCausalLM-nano": (
        "NemotronHForCausalLM",
        "nemotron_h",
        dict(hybrid_override_pattern="M*", mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8, n_groups=1),
    ),
}
TINY_SIZE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=32768,  # as TRL's tiny models: prompts and completions fit with the defaults
)

# A model whose code ships with it (`auto_map`), as trl-internal-testing/tiny-RemoteForCausalLM.
REMOTE_CONFIGURATION = """
from transformers import Qwen2Config


class RemoteConfig(Qwen2Config):
    model_type = "remote"
"""
REMOTE_MODELING = """
from transformers import Qwen2ForCausalLM

from .configuration_remote import RemoteConfig


class RemoteForCausalLM(Qwen2ForCausalLM):
    config_class = RemoteConfig
"""


QWEN3_NO_THINKING = "=.."  # how the Qwen3 stand-in's template ends a prompt with enable_thinking=False


def tokenizer(model_type: str = "qwen2"):
    processing_class = char_tokenizer(ZEN_ALPHABET)
    if model_type == "qwen3":  # reads `enable_thinking`, as Qwen3's chat template does
        processing_class.chat_template = CHAT_TEMPLATE + "{% if enable_thinking is false %}..{% endif %}"
    return processing_class


def llama_style_tokenizer():
    """Another tokenizer than the policy's: other special tokens, other ids, another chat template."""
    special_tokens = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "unk_token": "<unk>",
        "pad_token": "<|finetune_right_pad_id|>",
    }
    reward_tokenizer = character_tokenizer(
        sorted(set(string.printable) - set(string.whitespace) | {" "}), special_tokens
    )
    reward_tokenizer.chat_template = (
        "{{ bos_token }}{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}{{ eos_token }}"
        "{% endfor %}"
    )
    return reward_tokenizer


def build_tiny_model(model_id: str, path) -> None:
    """Build the offline stand-in of `model_id` and save it, with its tokenizer, to `path`."""
    if model_id == "trl-internal-testing/tiny-RemoteForCausalLM":
        processing_class = tokenizer()
        build_tiny_model("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5", path)
        (path / "configuration_remote.py").write_text(REMOTE_CONFIGURATION)
        (path / "modeling_remote.py").write_text(REMOTE_MODELING)
        config = json.loads((path / "config.json").read_text())
        config.update(
            model_type="remote",
            architectures=["RemoteForCausalLM"],
            auto_map={
                "AutoConfig": "configuration_remote.RemoteConfig",
                "AutoModelForCausalLM": "modeling_remote.RemoteForCausalLM",
            },
        )
        (path / "config.json").write_text(json.dumps(config))
        processing_class.save_pretrained(path)
        return
    architecture, model_type, overrides = TINY_MODELS[model_id]
    is_llama = model_type == "llama"
    processing_class = llama_style_tokenizer() if is_llama else tokenizer(model_type)
    if model_id == "trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5":
        model = tiny_reward_model(processing_class)
    else:
        torch.manual_seed(0)
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(processing_class),
            pad_token_id=processing_class.pad_token_id,
            bos_token_id=processing_class.bos_token_id,
            eos_token_id=processing_class.eos_token_id,
            num_labels=1,
            **{**TINY_SIZE, **overrides},
        )
        model = getattr(transformers, architecture)(config)
    model.save_pretrained(path)
    processing_class.save_pretrained(path)


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """`hub(model_id)`: the local path of `model_id`'s offline stand-in, built on first use."""
    root, paths = tmp_path_factory.mktemp("hub"), {}

    def local(model_id: str) -> str:
        if model_id not in paths:
            path = root / model_id.split("/")[-1]
            build_tiny_model(model_id, path)
            paths[model_id] = str(path)
        return paths[model_id]

    return local


def base_parameters(trainer) -> dict[str, torch.Tensor]:
    """The weights of `p_theta` (everything but the LoRA adapters), to check that they never change."""
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}


def assert_banel_trained(trainer, previous_base_params: dict[str, torch.Tensor]) -> None:
    """BaNEL's counterpart of GRPO's "train_loss is logged and every parameter changed"."""
    log_history = trainer.state.log_history
    assert log_history, "nothing was logged"
    steps = [entry["step"] for entry in log_history if "step" in entry]
    assert steps == sorted(steps), f"global_step went back: {steps}"
    # The budget is held.
    assert 0 < trainer.num_reward_evaluations <= trainer.args.max_reward_evaluations
    # A round with failures to fit (BaNEL needs two) fits a region, the run logs its loss, and the region's LoRA moved.
    failures = [record for record in trainer.ledger.records if record["round"] == 0 and not record["success"]]
    if len(failures) >= 2:
        assert trainer.posterior.regions, f"round 0 had {len(failures)} failures but fit no region"
        assert log_history[-1]["train_loss"] is not None
        adapter = trainer.posterior.regions[0].adapter_name
        lora_b = [p for n, p in trainer.model.named_parameters() if f"lora_B.{adapter}." in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b), f"the LoRA of {adapter} was not trained"
    # The base model (p_theta) is frozen.
    for n, param in previous_base_params.items():
        assert torch.equal(param, trainer.model.get_parameter(n)), f"Base parameter {n} has changed."


def multiply_tool(a: int, b: int) -> int:
    """
    Multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


async def async_multiply_tool(a: int, b: int) -> int:
    """
    Asynchronously multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b


class TestGRPOTrainer:
    def test_init_minimal(self, hub, tmp_path, monkeypatch):
        # Test that BanelTrainer can be instantiated with only model, reward_model and train_dataset
        monkeypatch.chdir(tmp_path)  # the default output_dir is relative to the working directory
        dataset = zen_dataset("standard_prompt_only", split="train")
        BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            train_dataset=dataset,
        )

    @pytest.mark.parametrize(
        "model_id",
        [
            "trl-internal-testing/tiny-Cohere2ForCausalLM",
            pytest.param(
                "trl-internal-testing/tiny-Glm4MoeForCausalLM",
                marks=pytest.mark.skipif(
                    Version(transformers.__version__) < Version("5.0.0"),
                    reason="GLM4 tokenizer requires transformers>=5.0.0",
                ),
            ),
            "trl-internal-testing/tiny-GptOssForCausalLM",
            "trl-internal-testing/tiny-Qwen2ForCausalLM-2.5",
            "trl-internal-testing/tiny-Qwen3MoeForCausalLM",
            pytest.param(
                "trl-internal-testing/tiny-NemotronHForCausalLM-nano",
                marks=pytest.mark.skipif(
                    Version(transformers.__version__) < Version("5.7.0"),
                    reason="Nemotron 3 gradient checkpointing requires transformers>=5.7.0 (see transformers#45625)",
                ),
            ),
        ],
    )
    def test_train(self, hub, tmp_path, model_id):
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub(model_id),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # The tiny reward model scores everything near 0, under success_threshold=1: every sample fails.
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    @pytest.mark.parametrize("config_name", ["standard_prompt_only", "conversational_prompt_only"])
    def test_train_dataset_format(self, hub, tmp_path, config_name):
        dataset = zen_dataset(config_name, split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)
        # The prompts the rewards were paid for are the dataset's, in its format.
        assert all(record["prompt"] in dataset["prompt"] for record in trainer.ledger.records)

    def test_trust_remote_code(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")
        model_id = hub("trl-internal-testing/tiny-RemoteForCausalLM")

        def reward_func(completions, **kwargs):
            return [0.0] * len(completions)

        with pytest.raises(ValueError, match="custom code"):
            BanelTrainer(
                model=model_id,
                args=BanelConfig(output_dir=str(tmp_path), report_to="none"),
                reward_funcs=reward_func,
                train_dataset=dataset,
            )

        trainer = BanelTrainer(
            model=model_id,
            args=BanelConfig(output_dir=str(tmp_path), report_to="none", trust_remote_code=True),
            reward_funcs=reward_func,
            train_dataset=dataset,
        )
        # BaNEL's model carries the negative models' LoRA adapters: the remote class is its base model.
        assert type(trainer.model.get_base_model()).__name__ == "RemoteForCausalLM"

    def test_train_with_eval(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only")

        # BaNEL does not evaluate during training (each evaluation pays reward calls outside the budget): TRL's
        # settings are refused with the fix, which is to call `evaluate()` after `train()`.
        with pytest.raises(ValueError, match="does not evaluate during training"):
            BanelConfig(
                output_dir=str(tmp_path),
                per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
                per_device_eval_batch_size=3,  # reduce the batch size to reduce memory usage
                num_generations=3,  # reduce the number of generations to reduce memory usage
                max_completion_length=8,  # reduce the completion length to reduce memory usage
                eval_strategy="steps",
                eval_steps=2,
                report_to="none",
                max_reward_evaluations=BUDGET,
            )

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            per_device_eval_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
            max_eval_reward_evaluations=EVAL_BUDGET,
        )

        class EvaluateRecorder(TrainerCallback):
            def __init__(self):
                self.metrics = []

            def on_evaluate(self, args, state, control, metrics=None, **kwargs):
                self.metrics.append(metrics)

        recorder = EvaluateRecorder()
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset["train"],
            eval_dataset=dataset["test"],
            callbacks=[recorder],
        )
        previous_base_params = base_parameters(trainer)

        trainer.train()
        assert_banel_trained(trainer, previous_base_params)

        num_reward_evaluations = trainer.num_reward_evaluations
        metrics = trainer.evaluate()

        assert 0.0 <= metrics["eval_success_rate"] <= 1.0
        assert metrics["eval_num_samples"] == len(dataset["test"]) * training_args.num_generations
        assert recorder.metrics == [metrics]  # callbacks see the evaluation, as the Trainer's
        # Evaluation pays from its own budget, outside the training budget.
        assert trainer.num_reward_evaluations == num_reward_evaluations
        assert metrics["eval_reward_evaluations"] <= EVAL_BUDGET

    def test_train_with_num_generations_eval(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            per_device_eval_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            num_generations_eval=1,
            report_to="none",  # eval_strategy is refused (test_train_with_eval): evaluate after training
            max_reward_evaluations=BUDGET,
            max_eval_reward_evaluations=EVAL_BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset["train"],
            eval_dataset=dataset["test"],
        )
        previous_base_params = base_parameters(trainer)

        trainer.train()
        assert_banel_trained(trainer, previous_base_params)

        metrics = trainer.evaluate()
        assert metrics["eval_num_samples"] == len(dataset["test"]) * 1  # num_generations_eval per prompt

    def test_train_with_iterable_dataset(self, hub, tmp_path):
        # Iterable (streaming) datasets have no length, so `max_steps` is required.
        dataset = zen_dataset("standard_prompt_only", split="train", streaming=True)

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            max_steps=4,
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)
        assert all(record["prompt"] in zen_dataset(split="train")["prompt"] for record in trainer.ledger.records)

    @pytest.mark.parametrize(
        "eval_dataset_type",
        [
            "dataset",
            "iterable_dataset",
            "dataset_dict",
            "iterable_dataset_dict",
            "dict_of_dataset",
            "dict_of_iterable_dataset",
            "none",
        ],
    )
    def test_init_with_eval_dataset(self, hub, tmp_path, eval_dataset_type):
        train_dataset = zen_dataset("standard_prompt_only", split="train")

        if eval_dataset_type == "none":
            eval_dataset = None
        else:
            streaming = "iterable" in eval_dataset_type
            eval_split = zen_dataset("standard_prompt_only", split="test", streaming=streaming)
            if eval_dataset_type in ("dataset", "iterable_dataset"):
                eval_dataset = eval_split
            elif eval_dataset_type in ("dataset_dict", "iterable_dataset_dict"):
                dataset_dict_cls = IterableDatasetDict if streaming else DatasetDict
                eval_dataset = dataset_dict_cls({"data1": eval_split, "data2": eval_split})
            else:  # "dict_of_dataset" or "dict_of_iterable_dataset"
                eval_dataset = {"data1": eval_split, "data2": eval_split}

        training_args = BanelConfig(output_dir=str(tmp_path), report_to="none")
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
        )

        if eval_dataset_type == "none":
            assert trainer.eval_dataset is None
        elif isinstance(trainer.eval_dataset, dict):
            assert set(trainer.eval_dataset.keys()) == {"data1", "data2"}
        elif eval_dataset_type == "iterable_dataset":
            # BaNEL reads a streamed set of prompts into a Dataset (it samples every prompt, and again each round):
            # the same prompts, not the same object.
            assert trainer.eval_dataset["prompt"] == [example["prompt"] for example in eval_dataset]
        else:
            assert trainer.eval_dataset is eval_dataset

    @pytest.mark.parametrize(
        "eval_dataset_type",
        [
            "dataset",
            "iterable_dataset",
            "dataset_dict",
            "iterable_dataset_dict",
            "dict_of_dataset",
            "dict_of_iterable_dataset",
        ],
    )
    def test_evaluate_with_eval_dataset(self, hub, tmp_path, eval_dataset_type):
        # `evaluate` accepts a dataset passed directly, not only an `eval_dataset` set at init.
        train_dataset = zen_dataset("standard_prompt_only", split="train")

        streaming = "iterable" in eval_dataset_type
        eval_split = zen_dataset("standard_prompt_only", split="test", streaming=streaming)
        if eval_dataset_type in ("dataset", "iterable_dataset"):
            eval_dataset = eval_split
        elif eval_dataset_type in ("dataset_dict", "iterable_dataset_dict"):
            dataset_dict_cls = IterableDatasetDict if streaming else DatasetDict
            eval_dataset = dataset_dict_cls({"data1": eval_split, "data2": eval_split})
        else:  # "dict_of_dataset" or "dict_of_iterable_dataset"
            eval_dataset = {"data1": eval_split, "data2": eval_split}

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            per_device_eval_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_eval_reward_evaluations=EVAL_BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=train_dataset,
        )

        # BaNEL's evaluation metric is the posterior's success rate (GRPO's is eval_loss).
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        if eval_dataset_type in ("dataset", "iterable_dataset"):
            assert metrics["eval_success_rate"] is not None
        else:
            assert metrics["eval_data1_success_rate"] is not None
            assert metrics["eval_data2_success_rate"] is not None
        assert trainer.num_reward_evaluations == 0  # evaluation is outside the training budget

    # TRL's regression test for eval_on_start with loss_type="grpo". BaNEL refuses evaluation during training, and
    # eval_on_start with it (loss_type is GRPO's and dropped).
    def test_train_eval_on_start(self, tmp_path):
        with pytest.raises(ValueError, match="eval_on_start"):
            BanelConfig(
                output_dir=str(tmp_path),
                learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
                per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
                per_device_eval_batch_size=3,  # reduce the batch size to reduce memory usage
                num_generations=3,  # reduce the number of generations to reduce memory usage
                max_completion_length=8,  # reduce the completion length to reduce memory usage
                eval_strategy="steps",
                eval_steps=2,
                eval_on_start=True,
                report_to="none",
            )

    def test_train_peft_config(self, hub, tmp_path):
        model = AutoModelForCausalLM.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"), dtype="float32"
        )
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=model,
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
            peft_config=LoraConfig(),
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # The negative models are LoRAs of the given config (PEFT's default targets for Qwen2: q_proj, v_proj).
        assert trainer.posterior.regions
        adapter = trainer.posterior.regions[0].adapter_name
        assert set(trainer.model.peft_config[adapter].target_modules) == {"q_proj", "v_proj"}
        assert_banel_trained(trainer, previous_base_params)

    def test_train_peft_model(self, hub, tmp_path):
        model = AutoModelForCausalLM.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"), dtype="float32"
        )
        lora_config = LoraConfig()
        model = get_peft_model(model, lora_config)
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=model,
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # The given PEFT model's adapter is part of p_theta: merged into the frozen base, not trained further.
        assert "default" not in trainer.model.peft_config
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_moe_peft_model(self, hub, tmp_path):
        # TRL's regression test for https://github.com/huggingface/trl/issues/5222: a LoRA with `target_parameters`
        # on an MoE's experts (the reference-adapter part, beta, is GRPO's and dropped).
        model = AutoModelForCausalLM.from_pretrained(
            hub("trl-internal-testing/tiny-GptOssForCausalLM"), dtype="float32"
        )
        lora_config = LoraConfig(target_parameters=["mlp.experts.down_proj", "mlp.experts.gate_up_proj"])
        model = get_peft_model(model, lora_config)
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=model,
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    # Gradient checkpointing with the base frozen and only LoRA weights trained has caused issues in the past.
    def test_train_peft_with_gradient_checkpointing(self, hub, tmp_path):
        model = AutoModelForCausalLM.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"), dtype="float32"
        )
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            gradient_checkpointing=True,  # enable gradient checkpointing
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=model,
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
            peft_config=LoraConfig(),
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_different_reward_model(self, hub, tmp_path):
        # Use a reward model different from the model: different chat template, tokenization, etc.
        dataset = zen_dataset("conversational_prompt_only", split="train")
        reward_model_id = hub("trl-internal-testing/tiny-LlamaForSequenceClassification-3.2")
        reward_model = transformers.AutoModelForSequenceClassification.from_pretrained(reward_model_id)
        reward_tokenizer = AutoTokenizer.from_pretrained(reward_model_id)
        # A pad token distinct from the EOS token, which the chat template uses (as in TRL's test).
        reward_tokenizer.pad_token = "<|finetune_right_pad_id|>"

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_model,
            args=training_args,
            train_dataset=dataset,
            reward_processing_classes=reward_tokenizer,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.reward_processing_classes == [reward_tokenizer]
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_reward_func_standard(self, hub, tmp_path):
        # Test if trainer can handle reward function with standard format
        dataset = zen_dataset("standard_prompt_only", split="train")
        seen = []

        def reward_func(completions, **kwargs):
            """Reward function that rewards longer completions."""
            seen.extend(completions)
            return [float(len(completion)) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_func,
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert seen and all(isinstance(completion, str) for completion in seen)
        assert_banel_trained(trainer, previous_base_params)

    def test_train_reward_func_conversational(self, hub, tmp_path):
        # Test if trainer can handle reward function with conversational format
        dataset = zen_dataset("conversational_prompt_only", split="train")

        def reward_func(completions, **kwargs):
            """Reward function that gives higher scores to longer completion content."""
            completion_contents = [completion[0]["content"] for completion in completions]
            return [float(len(content)) for content in completion_contents]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_func,
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert_banel_trained(trainer, previous_base_params)

    def test_train_multiple_reward_funcs(self, hub, tmp_path):
        # Test that BanelTrainer can be instantiated with multiple reward functions
        dataset = zen_dataset("standard_prompt_only", split="train")

        def reward_func1(completions, **kwargs):
            """Reward function that rewards longer completions."""
            return [float(len(completion)) for completion in completions]

        def reward_func2(completions, **kwargs):
            """Reward function that rewards completions with more unique letters."""
            return [float(len(set(completion))) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=[reward_func1, reward_func2],
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert all(len(record["rewards"]) == 2 for record in trainer.ledger.records)
        assert_banel_trained(trainer, previous_base_params)

    def test_train_sync_and_async_reward_funcs(self, hub, tmp_path):
        # Test that BanelTrainer can be instantiated with multiple reward functions one of which is async
        dataset = zen_dataset("standard_prompt_only", split="train")

        def sync_reward_func1(completions, **kwargs):
            """Reward function that rewards longer completions."""
            return [float(len(completion)) for completion in completions]

        def sync_reward_func2(completions, **kwargs):
            return [1 for _ in completions]

        async def async_reward_func(completions, **kwargs):
            """Async Reward function that rewards completions with more unique letters."""
            return [float(len(set(completion))) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=[sync_reward_func1, sync_reward_func2, async_reward_func],
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        for record in trainer.ledger.records:
            completion = record["completion"]
            assert record["rewards"] == [float(len(completion)), 1.0, float(len(set(completion)))]
        assert_banel_trained(trainer, previous_base_params)

    def test_train_multiple_reward_funcs_with_None_output(self, hub, tmp_path):
        """Test that a valid math reward function is processed correctly while the code reward function returns None."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        def applicable_reward_func(completions, **kwargs):
            """A reward function that rewards longer completions."""
            return [float(len(completion)) for completion in completions]

        def non_applicable_reward_func(completions, **kwargs):
            """A reward function that returns None for all inputs, as it is not applicable to this sample."""
            return [None] * len(completions)

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )

        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=[
                applicable_reward_func,
                non_applicable_reward_func,
            ],  # One applicable, one non applicable
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # The None is left out of the weighted sum: the reward is the applicable function's.
        for record in trainer.ledger.records:
            assert record["reward"] == float(len(record["completion"]))
        assert_banel_trained(trainer, previous_base_params)

    def test_train_multiple_reward_funcs_with_weights(self, hub, tmp_path):
        """Test that BanelTrainer can handle multiple reward functions with weights."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        def reward_func1(completions, **kwargs):
            """Reward function that rewards longer completions."""
            return [float(len(completion)) for completion in completions]

        def reward_func2(completions, **kwargs):
            """Reward function that rewards completions with more unique letters."""
            return [float(len(set(completion))) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            reward_weights=[0.7, 0.3],  # weight of reward_func1 and reward_func2 respectively
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=[reward_func1, reward_func2],
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # Check that training logs contain both reward metrics (logged per round)
        logged_keys = {k for entry in trainer.state.log_history for k in entry}
        assert "rewards/reward_func1/mean" in logged_keys
        assert "rewards/reward_func1/std" in logged_keys
        assert "rewards/reward_func2/mean" in logged_keys
        assert "rewards/reward_func2/std" in logged_keys
        for record in trainer.ledger.records:
            completion = record["completion"]
            assert record["reward"] == pytest.approx(0.7 * len(completion) + 0.3 * len(set(completion)))
        assert_banel_trained(trainer, previous_base_params)

    @pytest.mark.parametrize("multi_objective_aggregation", ["sum_then_normalize", "normalize_then_sum"])
    def test_reward_metric_reflects_reward_weights(self, hub, tmp_path, multi_objective_aggregation):
        """Test that the logged 'reward' metric uses reward_weights, not an unweighted sum."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        def constant_reward_1(completions, **kwargs):
            return [1.0] * len(completions)

        def constant_reward_0(completions, **kwargs):
            return [0.0] * len(completions)

        config_kwargs = dict(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            reward_weights=[0.7, 0.3],
            multi_objective_aggregation=multi_objective_aggregation,
            max_reward_evaluations=BUDGET,
        )
        if multi_objective_aggregation == "normalize_then_sum":
            # Refused: normalising across a prompt's group would make a sample's success depend on the samples drawn
            # with it (test_train_normalize_then_sum_aggregation).
            with pytest.raises(ValueError, match="normalize_then_sum"):
                BanelConfig(**config_kwargs)
            return
        training_args = BanelConfig(**config_kwargs)
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=[constant_reward_1, constant_reward_0],
            args=training_args,
            train_dataset=dataset,
        )
        previous_base_params = base_parameters(trainer)

        trainer.train()

        # The last round's log (BaNEL logs rewards per round; the run's summary comes after it).
        log = [entry for entry in trainer.state.log_history if "reward" in entry][-1]
        # With reward_weights=[0.7, 0.3] and rewards [1.0, 0.0]:
        # weighted reward = 0.7*1.0 + 0.3*0.0 = 0.7
        # unweighted reward = 1.0 + 0.0 = 1.0
        assert abs(log["reward"] - 0.7) < 1e-5, (
            f"Expected logged reward to be ~0.7 (weighted), got {log['reward']}. "
            "The reward metric should reflect reward_weights."
        )
        # 0.7 is under success_threshold=1: every sample fails, and the regions are fit on them.
        assert not trainer.successes
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_multiple_mixed_reward_funcs(self, hub, tmp_path):
        # Test if the trainer can handle a mix of reward functions and reward models
        dataset = zen_dataset("standard_prompt_only", split="train")

        def reward_func(completions, **kwargs):
            """Reward function that rewards longer completions."""
            return [float(len(completion)) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=[reward_func, hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5")],
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert all(len(record["rewards"]) == 2 for record in trainer.ledger.records)
        assert_banel_trained(trainer, previous_base_params)

    def test_train_reward_func_additional_column(self, hub, tmp_path):
        # Test if trainer can handle reward function that rely on additional columns in the dataset
        dataset = zen_dataset("standard_prompt_only", split="train")

        # Add a column to the dataset (dummy example, the column could be anything)
        some_values = list(range(len(dataset)))
        dataset = dataset.add_column("some_values", some_values)
        value_of_prompt = dict(zip(dataset["prompt"], some_values, strict=True))
        seen = []

        def reward_func(completions, prompts, some_values, **kwargs):
            """Reward function that rewards completions with lengths closer to the values in some_values."""
            seen.extend(zip(prompts, some_values, strict=True))
            return [
                float(abs(len(completion) - value)) for completion, value in zip(completions, some_values, strict=True)
            ]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_func,
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # Each sample's column value is its own prompt's.
        assert seen and all(value == value_of_prompt[prompt] for prompt, value in seen)
        assert_banel_trained(trainer, previous_base_params)

    def test_train_with_pad_to_multiple_of(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            pad_to_multiple_of=8,
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_with_additional_generation_kwargs(self, hub, tmp_path):
        """Test that training works with additional generation kwargs."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            top_p=0.9,
            top_k=10,
            min_p=0.01,
            repetition_penalty=1.1,
            max_reward_evaluations=BUDGET,
        )

        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        config = trainer.generation_config
        assert (config.top_p, config.top_k, config.min_p, config.repetition_penalty) == (0.9, 10, 0.01, 1.1)
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_normalize_then_sum_aggregation(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")

        def reward_func1(completions, **kwargs):
            """Reward function that rewards longer completions."""
            return [float(len(completion)) for completion in completions]

        def reward_func2(completions, **kwargs):
            """Reward function that rewards completions with more unique letters."""
            return [float(len(set(completion))) for completion in completions]

        # BaNEL refuses it, with the reason: GRPO normalises each reward across the completions of a prompt, which
        # would make a sample's success depend on the samples drawn with it; BaNEL judges each sample alone.
        with pytest.raises(ValueError, match="normalize_then_sum"):
            training_args = BanelConfig(
                output_dir=str(tmp_path),
                learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
                per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
                num_generations=3,  # reduce the number of generations to reduce memory usage
                max_completion_length=8,  # reduce the completion length to reduce memory usage
                multi_objective_aggregation="normalize_then_sum",
                report_to="none",
                max_reward_evaluations=BUDGET,
            )
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
                reward_funcs=[reward_func1, reward_func2],
                args=training_args,
                train_dataset=dataset,
            )

    def test_warning_raised_all_rewards_none(self, hub, tmp_path, caplog):
        """Test that a proper warning is raised when all rewards are None."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        def always_none_reward_func(completions, **kwargs):
            """Reward function that always returns None."""
            return [None] * len(completions)

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=always_none_reward_func,
            args=training_args,
            train_dataset=dataset,
        )
        previous_base_params = base_parameters(trainer)

        with caplog.at_level("WARNING", logger="banel_trl"):
            trainer.train()

        # A sample without a reward is a failure (it was paid for): the regions are fit on them.
        assert all(record["reward"] is None and not record["success"] for record in trainer.ledger.records)
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)
        # And the user is told, as GRPO tells them.
        warnings = [
            r.getMessage() for r in caplog.records if r.name.startswith("banel_trl") and r.levelname == "WARNING"
        ]
        assert any("None" in message for message in warnings), warnings

    def test_train_num_generations_larger_than_batch_size(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            num_generations=6,  # the number of generations is larger than the batch size, but
            gradient_accumulation_steps=2,  # gradient accumulation should allow that
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_multiple_dataloader_workers(self, hub, tmp_path):
        # BaNEL's DataLoader serves each round's negatives to its fit. TRL forces the "spawn" start method here; it
        # is left at the default (fork on Linux) because spawn re-imports torch in every worker of every epoch of
        # every fit (over a minute on two CPU cores), and sets the start method for the rest of the session.

        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            dataloader_num_workers=2,  # use multiple dataloader workers
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_with_generation_kwargs(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            # Pass gen kwargs
            generation_kwargs={"do_sample": True, "top_k": 50, "num_beams": 2, "length_penalty": -0.1},
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        # BaNEL: the posterior is p_theta conditioned by rejection, so its candidates must be samples of p_theta.
        with pytest.raises(ValueError, match="beam search"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
                reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
                args=training_args,
                train_dataset=dataset,
            )
        training_args.generation_kwargs = {"do_sample": True, "top_k": 50, "length_penalty": -0.1}
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    def test_train_with_reward_func_accessing_trainer_state(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")
        states = []

        def reward_func(completions, **kwargs):
            trainer_state = kwargs.get("trainer_state")
            assert trainer_state is not None
            # transformers.TrainerState instance should have a `global_step` property.
            assert hasattr(trainer_state, "global_step")
            states.append(trainer_state)
            return [float(len(set(completion))) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_func,
            args=training_args,
            train_dataset=dataset,
        )
        trainer.train()
        assert states and all(state is trainer.state for state in states)

    def test_train_reward_func_with_log_extra(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")

        def reward_func(completions, **kwargs):
            log_extra = kwargs.get("log_extra")
            assert log_extra is not None
            log_extra("test_column", [completion[:5] for completion in completions])
            return [float(len(completion)) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            log_completions=True,
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_func,
            args=training_args,
            train_dataset=dataset,
        )
        trainer.train()
        # BaNEL: the columns go to the round's completions table, kept with the reward logs until the next round.
        assert "test_column" in trainer.rewards.logs.extra

    def test_train_reward_func_with_log_metric(self, hub, tmp_path):
        dataset = zen_dataset("standard_prompt_only", split="train")

        def reward_func(completions, **kwargs):
            log_metric = kwargs.get("log_metric")
            assert log_metric is not None
            log_metric("custom_accuracy", 0.75)
            return [float(len(completion)) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_func,
            args=training_args,
            train_dataset=dataset,
        )
        trainer.train()
        # log_metric's values are averaged and merged into log_history
        logged_keys = {k for entry in trainer.state.log_history for k in entry}
        assert "custom_accuracy" in logged_keys

    def test_prepare_input_called_with_correct_data(self, hub, tmp_path):
        # GRPO's generation batches: with shuffle_dataset=False, steps_per_generation=4, per_device_train_batch_size=6
        # and num_generations=4, a generation batch holds 24 samples: the dataset's first 6 prompts, each 4 times.
        # BaNEL samples its candidates in the same batches; a reward function that records the prompts it is paid
        # for stands in for TRL's spy on `training_step` (num_iterations, GRPO's, is dropped).
        dataset = zen_dataset("standard_prompt_only", split="train")
        reward_calls = []

        def prompt_recorder(prompts, completions, **kwargs):
            reward_calls.append(list(prompts))
            return [0.0] * len(completions)

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            gradient_accumulation_steps=3,  # can be anything in this test
            # steps_per_generation*per_device_train_batch_size=24 is divisible by num_generations=4
            steps_per_generation=4,
            num_generations=4,
            per_device_train_batch_size=6,  # reduce the batch size to reduce memory usage
            shuffle_dataset=False,
            report_to="none",
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=prompt_recorder,
            args=training_args,
            train_dataset=dataset,
        )
        expected_first_generation_batch = (
            ["Beautiful is better than"] * 4
            + ["Explicit is"] * 4
            + ["Simple is better"] * 4
            + ["Complex"] * 4
            + ["Flat is better than"] * 4
            + ["Sparse is better"] * 4
        )

        trainer.train()

        # The first batch paid for is the first generation batch's candidates (up to the round's budget), in order.
        assert reward_calls
        first_call = reward_calls[0]
        assert first_call == expected_first_generation_batch[: len(first_call)]
        assert trainer.num_reward_evaluations <= training_args.max_reward_evaluations

    def test_train_with_chat_template_kwargs(self, hub, tmp_path):
        dataset = zen_dataset("conversational_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
            chat_template_kwargs={"enable_thinking": False},
            max_reward_evaluations=BUDGET,
        )
        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen3ForCausalLM"),
            reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            args=training_args,
            train_dataset=dataset,
        )

        previous_base_params = base_parameters(trainer)

        trainer.train()

        # The stand-in's chat template, as Qwen3's, ends the prompt with an empty think block without thinking.
        prompt_ids = trainer.sampler.prompt_ids(dataset[0]["prompt"])
        tokens = trainer.processing_class.convert_ids_to_tokens(prompt_ids)
        assert "".join(tokens).endswith(QWEN3_NO_THINKING)
        assert trainer.posterior.regions
        assert_banel_trained(trainer, previous_base_params)

    # GRPO's agentic hooks: BaNEL samples p_theta itself and must score exactly what it sampled, so it refuses
    # them with a clear error, at construction (TRL's tests then mock a tool-calling generation and train).
    @pytest.mark.parametrize("tools", [[multiply_tool], [async_multiply_tool]])
    def test_train_with_tools(self, hub, tmp_path, tools):
        dataset = zen_dataset("conversational_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=128,
            report_to="none",
        )
        with pytest.raises(ValueError, match="does not take GRPO's `tools`"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3MoeForCausalLM"),
                reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
                args=training_args,
                train_dataset=dataset,
                tools=tools,
            )

    def test_train_with_malformed_tool_calls(self, hub, tmp_path):
        dataset = zen_dataset("conversational_prompt_only", split="train")

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_completion_length=128,
            report_to="none",
        )
        with pytest.raises(ValueError, match="does not take GRPO's `tools`"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3MoeForCausalLM"),
                reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
                args=training_args,
                train_dataset=dataset,
                tools=[multiply_tool],
            )

    def test_train_with_environment_factory(self, hub, tmp_path):
        class DummyEnvironment:
            def reset(self, **kwargs):
                self._counter = 0

            def increment(self, step: int) -> int:
                """
                Increment the internal counter.

                Args:
                    step: Value to add to the counter.

                Returns:
                    The updated counter value.
                """
                self._counter += step
                return self._counter

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_steps=5,  # required with environment_factory
            report_to="none",
        )
        with pytest.raises(ValueError, match="`environment_factory`"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3MoeForCausalLM"),
                reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
                args=training_args,
                environment_factory=DummyEnvironment,
            )

    def test_train_with_multiple_environments(self, hub, tmp_path):
        from datasets import Dataset

        dataset = Dataset.from_dict({"environment": ["counter", "echo"] * 8})

        class CounterEnvironment:
            def reset(self, **kwargs):
                return "Count."

        class EchoEnvironment:
            def reset(self, **kwargs):
                return "Echo."

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=4,  # 2 prompts x 2 generations, so a batch mixes both environments
            num_generations=2,
            shuffle_dataset=False,  # keep the [counter, counter, echo, echo] batch layout deterministic
            report_to="none",
        )
        with pytest.raises(ValueError, match="`environment_factory`"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3MoeForCausalLM"),
                reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
                args=training_args,
                train_dataset=dataset,
                environment_factory={"counter": CounterEnvironment, "echo": EchoEnvironment},
            )

    def test_train_with_environment_owned_data(self, hub, tmp_path):
        # The environment owns the data, without an external `train_dataset`: refused for the environment, not for
        # the missing dataset.
        class GuessTheWordEnvironment:
            def reset(self, **kwargs):
                return "Guess the 5-letter word."  # the env owns the data and returns the prompt

        def reward_len(completions, **kwargs):
            return [float(len(completion[-1]["content"])) for completion in completions]

        training_args = BanelConfig(
            output_dir=str(tmp_path),
            learning_rate=0.1,  # use higher lr because gradients are tiny and default lr can stall updates
            per_device_train_batch_size=3,  # reduce the batch size to reduce memory usage
            num_generations=3,  # reduce the number of generations to reduce memory usage
            max_steps=5,  # the environment owns the data, so `max_steps` sets the training length
            max_completion_length=8,  # reduce the completion length to reduce memory usage
            report_to="none",
        )
        with pytest.raises(ValueError, match="`environment_factory`"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3ForCausalLM"),
                reward_funcs=reward_len,
                args=training_args,
                environment_factory=GuessTheWordEnvironment,
            )

    def test_no_reward_source_raises(self, hub, tmp_path):
        # BaNEL's only reward source is `reward_funcs` (environments are refused): without it, construction fails
        # with an error that names it.
        dataset = zen_dataset("conversational_prompt_only", split="train")
        training_args = BanelConfig(output_dir=str(tmp_path), report_to="none")
        with pytest.raises((TypeError, ValueError), match="reward_funcs"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3ForCausalLM"),
                args=training_args,
                train_dataset=dataset,
            )

    def test_dataset_required_without_environment(self, hub, tmp_path):
        # The prompts have to come from somewhere: BaNEL needs a `train_dataset`.
        training_args = BanelConfig(output_dir=str(tmp_path), report_to="none")
        with pytest.raises(ValueError, match="`train_dataset` is required"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen3ForCausalLM"),
                reward_funcs=hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
                args=training_args,
            )

    def test_mismatched_reward_processing_classes_length(self, hub, tmp_path):
        """Test that mismatched length between reward_funcs and reward_processing_classes raises error."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        # Use two reward models
        reward_models = [
            hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            hub("trl-internal-testing/tiny-Qwen3ForSequenceClassification"),
        ]

        # Create a single processing class (tokenizer)
        single_processing_class = AutoTokenizer.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5")
        )

        training_args = BanelConfig(output_dir=str(tmp_path), report_to="none")

        with pytest.raises(ValueError, match="must match"):
            BanelTrainer(
                model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
                reward_funcs=reward_models,
                reward_processing_classes=single_processing_class,  # only one, but need two
                args=training_args,
                train_dataset=dataset,
            )

    def test_correct_reward_processing_classes_list(self, hub, tmp_path):
        """Test that correct list of reward_processing_classes works properly."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        # Use two reward models
        reward_models = [
            hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5"),
            hub("trl-internal-testing/tiny-Qwen3ForSequenceClassification"),
        ]

        # Create processing classes
        processing_class1 = AutoTokenizer.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5")
        )
        processing_class2 = AutoTokenizer.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen3ForSequenceClassification")
        )

        training_args = BanelConfig(output_dir=str(tmp_path), report_to="none")

        # Correct list length should work
        correct_processing_classes = [processing_class1, processing_class2]

        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_models,
            reward_processing_classes=correct_processing_classes,
            args=training_args,
            train_dataset=dataset,
        )

        assert len(trainer.reward_processing_classes) == len(reward_models)

    def test_single_reward_model_with_single_processing_class(self, hub, tmp_path):
        """Test that single reward model with single processing class works."""
        dataset = zen_dataset("standard_prompt_only", split="train")

        # Use single reward model
        reward_model = hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5")

        # Create a single processing class (tokenizer)
        single_processing_class = AutoTokenizer.from_pretrained(
            hub("trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5")
        )

        training_args = BanelConfig(output_dir=str(tmp_path), report_to="none")

        trainer = BanelTrainer(
            model=hub("trl-internal-testing/tiny-Qwen2ForCausalLM-2.5"),
            reward_funcs=reward_model,
            reward_processing_classes=single_processing_class,  # single object for single reward model
            args=training_args,
            train_dataset=dataset,
        )

        assert len(trainer.reward_processing_classes) == 1
        assert trainer.reward_processing_classes[0] == single_processing_class
