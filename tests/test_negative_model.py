"""`negative_model="copy"` and `"scratch"`: each region's negative model is a separate model, as in the paper."""

import pytest
import torch
from trl import TrlParser

from banel_trl import BanelConfig, BanelPosterior, BanelTrainer
from banel_trl.data import NegativesCollator
from banel_trl.hub import generate_banel_model_card
from banel_trl.models import proposal_copy
from banel_trl.testing import starts_with_b


def encoded(tokenizer, texts):
    """Prompt (BOS) and completion (text + EOS) tensors of `texts`, as the posterior scores them."""
    return NegativesCollator(tokenizer.pad_token_id)(
        [
            {
                "prompt_ids": [tokenizer.bos_token_id],
                "completion_ids": tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
            }
            for text in texts
        ]
    )


SMALLER = {"num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32}


@pytest.mark.parametrize(
    "negative_model, negative_model_config", [("copy", None), ("scratch", None), ("scratch", SMALLER)]
)
def test_separate_negative_models_are_fit_saved_loaded_and_resumed(
    train_toy, make_config, make_proposal, tokenizer, unconditional_dataset, negative_model, negative_model_config
):
    # Shallow cuts: the test is of the mechanics, not the sampling of deep ones.
    args = make_config(
        negative_model=negative_model,
        negative_model_config=negative_model_config,
        first_region_rejection_rate=0.5,
        target_rejection_rate=0.5,
    )
    trainer = train_toy(args, starts_with_b)
    # Each is p_theta's architecture, or the smaller one asked for.
    config = make_proposal().config.to_dict() | (negative_model_config or {})
    for model in trainer.posterior.negative_models.values():
        assert {key: getattr(model.config, key) for key in SMALLER} == {key: config[key] for key in SMALLER}
    regions = trainer.posterior.regions
    assert [region.adapter_name for region in regions] == [f"negative_model_{k}" for k in range(3)]
    # From round 1 on the reference is a separate model of the same posterior's samples.
    assert [region.reference_adapter for region in regions[1:]] == ["reference_model_1", "reference_model_2"]
    assert all(region.separate and not region.adapter_names for region in regions)
    # p_theta stays frozen: its weights, the PEFT model without adapters, are those of a fresh proposal.
    fresh = make_proposal().state_dict()
    assert all(torch.equal(value, fresh[key]) for key, value in proposal_copy(trainer.model).state_dict().items())
    # Each negative model was trained: its weights moved away from p_theta's (copy) or its random start (scratch).
    weights = trainer.posterior.negative_models["negative_model_0"].state_dict()
    assert not all(torch.equal(value, fresh[key]) for key, value in weights.items())

    batch = encoded(tokenizer, ["abcabc", "bbbbbb", "dcba", "aaaaaa"])
    expected = trainer.posterior.log_ratios(**batch)
    assert torch.isfinite(expected).all()
    # The saved folder holds each separate model whole; it loads onto a plain p_theta and scores the same.
    loaded = BanelPosterior.from_pretrained(args.output_dir, model=make_proposal())
    assert sorted(loaded.negative_models) == sorted(trainer.posterior.negative_models)
    torch.testing.assert_close(loaded.log_ratios(**batch), expected)
    card = generate_banel_model_card(args.output_dir, "toy", "user/toy").content
    assert "| Rejection regions | 3 (separate negative models) |" in card
    # A resumed run restores them from the folder, pays nothing again and adds nothing.
    resumed = BanelTrainer(
        make_proposal(), starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
    )
    resumed.train()
    resumed.ledger.close()
    assert resumed.num_reward_evaluations == trainer.num_reward_evaluations
    assert resumed.posterior.regions == regions
    assert not any(model.training for model in resumed.posterior.negative_models.values())  # dropout off, as fit
    torch.testing.assert_close(resumed.posterior.log_ratios(**batch), expected)


def test_a_separate_negative_model_needs_the_exact_loop_and_a_known_form(tmp_path):
    with pytest.raises(ValueError, match="set `negative_model='scratch'`"):
        BanelConfig(output_dir=str(tmp_path), negative_model_config=SMALLER)
    with pytest.raises(ValueError, match="distill_posterior=False"):
        BanelConfig(output_dir=str(tmp_path), negative_model="scratch", distill_posterior=True)
    with pytest.raises(ValueError, match="`negative_model` must be one of"):
        BanelConfig(output_dir=str(tmp_path), negative_model="full")


def test_the_smaller_models_config_is_json_on_the_command_line(tmp_path):
    # On the command line (or in a YAML file) the smaller model's config is JSON.
    flags = [
        "--output_dir",
        str(tmp_path),
        "--negative_model",
        "scratch",
        "--negative_model_config",
        '{"hidden_size": 16}',
    ]
    assert TrlParser((BanelConfig,)).parse_args_and_config(flags)[0].negative_model_config == {"hidden_size": 16}


@pytest.mark.parametrize(
    "negative_model_config, message",
    [
        ({"num_hidden_layer": 1}, "are not attributes of p_theta's Qwen2Config"),
        ({"vocab_size": 10}, "drop `vocab_size`"),
        ({"num_hidden_layers": 1, "layer_types": ["full_attention"] * 2}, "gives no Qwen2Config model"),
    ],
)
def test_a_smaller_scratch_model_is_checked_before_anything_is_paid(
    make_config, proposal, tokenizer, unconditional_dataset, negative_model_config, message
):
    args = make_config(negative_model="scratch", negative_model_config=negative_model_config)
    with pytest.raises(ValueError, match=message):
        BanelTrainer(
            proposal, starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
        )


def test_a_quantized_proposal_has_no_copy_to_fine_tune(make_config, proposal, tokenizer, unconditional_dataset):
    proposal.hf_quantizer = object()  # what `from_pretrained(..., quantization_config=...)` sets
    args = make_config(negative_model="copy")
    with pytest.raises(ValueError, match="negative_model='scratch'"):
        BanelTrainer(
            proposal, starts_with_b, args=args, train_dataset=unconditional_dataset, processing_class=tokenizer
        )
