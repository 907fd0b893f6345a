import itertools

import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import chisquare
from transformers import GenerationConfig

from banel_trl import BanelPosterior, PosteriorAcceptanceError, RejectionRegion
from banel_trl import posterior as posterior_module
from banel_trl.data import NegativesCollator, pad_prompts
from banel_trl.scoring import completion_log_probs
from banel_trl.testing import char_tokenizer, tiny_qwen2


SYMBOLS = "abc"
LENGTH = 4


@pytest.fixture(scope="module")
def small_space():
    """A random tiny LM over 3 symbols, length 4 (81 sequences), with one random LoRA region."""
    tokenizer = char_tokenizer(SYMBOLS)
    model = tiny_qwen2(tokenizer, seed=1)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    torch.manual_seed(2)
    model = get_peft_model(model, lora, adapter_name="region_0").eval()
    symbol_ids = [tokenizer.convert_tokens_to_ids(s) for s in SYMBOLS]
    sequences = torch.tensor(list(itertools.product(symbol_ids, repeat=LENGTH)))
    batch = NegativesCollator(tokenizer.pad_token_id)(
        [{"prompt_ids": [tokenizer.bos_token_id], "completion_ids": s.tolist()} for s in sequences]
    )
    return tokenizer, model, symbol_ids, sequences, batch


def proposal_probabilities(model, tokenizer, symbol_ids, sequences):
    """What generation samples: p_theta with every token but the 3 symbols suppressed, renormalised per step."""
    input_ids = torch.cat([torch.full((len(sequences), 1), tokenizer.bos_token_id), sequences], dim=1)
    with torch.no_grad(), model.disable_adapter():
        logits = model(input_ids=input_ids).logits[:, :-1, symbol_ids]
    positions = torch.tensor([symbol_ids.index(t) for t in sequences.flatten().tolist()]).view_as(sequences)
    log_probs = logits.log_softmax(-1).gather(-1, positions.unsqueeze(-1)).squeeze(-1).sum(-1)
    return log_probs.exp()


def test_posterior_samples_exactly_the_filtered_proposal(small_space):
    tokenizer, model, symbol_ids, sequences, batch = small_space
    posterior = BanelPosterior(model, scoring_batch_size=256)
    log_ratios = posterior.log_ratios(**batch, regions=[RejectionRegion("region_0", 0.0, 0)])[:, 0]
    threshold = log_ratios.median().item()
    posterior.add_region(RejectionRegion("region_0", threshold, 0))
    rejected = posterior.rejects(posterior.log_ratios(**batch))
    assert 20 < int(rejected.sum()) < 60, "the region should cut the space in a non-trivial way"

    target = proposal_probabilities(model, tokenizer, symbol_ids, sequences).double() * (~rejected)
    target = target / target.sum()

    num_samples = 6000
    suppressed = [i for i in range(len(tokenizer)) if i not in symbol_ids]
    torch.manual_seed(0)
    samples = posterior.generate(
        torch.full((num_samples, 1), tokenizer.bos_token_id),
        max_new_tokens=LENGTH,
        min_new_tokens=LENGTH,
        do_sample=True,
        top_k=0,
        suppress_tokens=suppressed,
    )[:, 1:]
    index = {tuple(s.tolist()): i for i, s in enumerate(sequences)}
    counts = torch.bincount(torch.tensor([index[tuple(s.tolist())] for s in samples]), minlength=len(sequences))

    assert counts[rejected].sum() == 0, "a rejected sequence was returned"
    assert chisquare(counts[~rejected].double(), target[~rejected] * num_samples).pvalue > 1e-3
    # The same statistic tells the posterior apart from the unfiltered proposal: the test has power.
    unfiltered = proposal_probabilities(model, tokenizer, symbol_ids, sequences).double()
    assert chisquare(counts.double(), unfiltered / unfiltered.sum() * num_samples).pvalue < 1e-6


def test_scores_do_not_depend_on_batch_padding(small_space):
    tokenizer, model, _, sequences, _ = small_space
    posterior = BanelPosterior(model, regions=[RejectionRegion("region_0", 0.0, 0)])
    collate = NegativesCollator(tokenizer.pad_token_id)
    short = {"prompt_ids": [tokenizer.bos_token_id], "completion_ids": sequences[0].tolist()}
    longer = {"prompt_ids": [tokenizer.bos_token_id] * 3, "completion_ids": sequences[1].tolist() * 2}
    alone = posterior.log_ratios(**collate([short]))
    padded = posterior.log_ratios(**collate([short, longer]))[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("min_stage_rows", [1, 1000])  # one region per stage; every region in one stage
def test_early_rejection_keeps_every_decision(small_space, min_stage_rows, monkeypatch):
    monkeypatch.setattr(posterior_module, "MIN_STAGE_ROWS", min_stage_rows)
    tokenizer, model, _, _, batch = small_space
    for k in (1, 2):
        model.add_adapter(f"region_{k}", LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    names = ["region_0", "region_1", "region_2"]
    full = BanelPosterior(model, scoring_batch_size=32).log_ratios(
        **batch, regions=[RejectionRegion(name, 0.0, k) for k, name in enumerate(names)]
    )
    thresholds = full.median(dim=0).values  # each region rejects half the space
    regions = [RejectionRegion(name, t.item(), k) for k, (name, t) in enumerate(zip(names, thresholds, strict=True))]
    posterior = BanelPosterior(model, regions, scoring_batch_size=32)
    requires_grad = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    early = posterior.log_ratios(**batch, stop_at_rejection=True)
    # Scoring switched adapters; the model is left as it was.
    assert model.active_adapter == "region_0"
    assert requires_grad == {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    assert torch.equal(posterior.rejects(early), posterior.rejects(full))
    scored = ~early.isnan()
    torch.testing.assert_close(early[scored], full[scored], atol=1e-5, rtol=1e-4)
    # An entry is left unscored only when a region of lower index already rejected the candidate.
    rejected_before = (full > thresholds).long().cumsum(dim=1) - (full > thresholds).long() > 0
    assert (rejected_before | scored).all()
    if min_stage_rows == 1:
        assert torch.equal(~scored, rejected_before)
    for k in (1, 2):
        model.delete_adapter(f"region_{k}")


def test_a_region_with_a_reference_is_scored_against_it(small_space):
    tokenizer, model, _, _, batch = small_space
    for name in ("region_1", "reference_1"):
        model.add_adapter(name, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    against_theta = BanelPosterior(model).log_ratios(
        **batch, regions=[RejectionRegion("region_1", 0.0, 1), RejectionRegion("reference_1", 0.0, 1)]
    )
    region = RejectionRegion("region_1", 0.0, 1, reference_adapter="reference_1")
    assert region.adapter_names == ["region_1", "reference_1"]
    ratios = BanelPosterior(model, [RejectionRegion("region_0", 0.0, 0), region]).log_ratios(**batch)
    torch.testing.assert_close(ratios[:, 1], against_theta[:, 0] - against_theta[:, 1], atol=1e-5, rtol=1e-4)
    for name in ("region_1", "reference_1"):
        model.delete_adapter(name)


def test_a_regions_kappa_weighs_its_negative_model_in_its_score(small_space):
    tokenizer, model, _, _, batch = small_space
    model.add_adapter("region_1", LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    plain = [RejectionRegion("region_0", 0.0, 0), RejectionRegion("region_1", 0.0, 1)]
    ratios = BanelPosterior(model, plain).log_ratios(**batch)
    with torch.no_grad(), model.disable_adapter():
        log_p_theta = completion_log_probs(model, *batch.values()).sum(dim=1)
    # A relaxed region's kappa * log p_phi - log p_theta, with log p_phi = ratio + log p_theta; the others' stay.
    relaxed = [RejectionRegion("region_0", 0.0, 0, kappa=2.5), RejectionRegion("region_1", 0.0, 1)]
    weighed = BanelPosterior(model, relaxed).log_ratios(**batch)
    torch.testing.assert_close(weighed[:, 0], 2.5 * (ratios[:, 0] + log_p_theta) - log_p_theta)
    torch.testing.assert_close(weighed[:, 1], ratios[:, 1])
    model.delete_adapter("region_1")


@pytest.mark.parametrize("max_generation_logits", [0, 2**26])  # p_theta scored again; taken from generation
def test_propose_scores_its_candidates_as_log_ratios_does(small_space, max_generation_logits, monkeypatch):
    """
    `propose` may take log p_theta from generation's logits. They must be the raw model's, at the posterior's
    temperature, whatever the sampling settings and the padding: the scores of the candidates scored afresh.
    """
    monkeypatch.setattr(posterior_module, "MAX_GENERATION_LOGITS", max_generation_logits)
    tokenizer, model, symbol_ids, _, _ = small_space
    posterior = BanelPosterior(model, [RejectionRegion("region_0", 0.0, 0)], temperature=0.7)
    input_ids, attention_mask = pad_prompts(
        [[tokenizer.bos_token_id], [tokenizer.bos_token_id, *symbol_ids]] * 32, tokenizer.pad_token_id
    )
    sampling = {"do_sample": True, "temperature": 1.5, "top_k": 2, "repetition_penalty": 1.3, "max_new_tokens": 5}
    config = GenerationConfig.from_dict({**model.generation_config.to_dict(), **sampling})
    config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("=")]  # some candidates end early
    torch.manual_seed(0)
    first = posterior.propose(input_ids, attention_mask, config)
    # The region rejects about half: a threshold between two candidates' scores, which float rounding cannot cross.
    scores = first.log_ratios.unique()
    posterior.regions[0].threshold = scores[len(scores) // 2 - 1 : len(scores) // 2 + 1].mean().item()
    torch.manual_seed(0)
    proposal = posterior.propose(input_ids, attention_mask, config)

    afresh = posterior.log_ratios(
        proposal.prompt_ids, proposal.prompt_mask, proposal.completion_ids, proposal.completion_mask
    )
    torch.testing.assert_close(proposal.log_ratios, afresh, atol=1e-5, rtol=1e-4)
    assert torch.equal(proposal.accepted, ~posterior.rejects(afresh))
    assert 0 < int(proposal.accepted.sum()) < len(proposal.accepted)
    assert (proposal.completion_mask.sum(dim=1) < 5).any()


def test_generate_reports_acceptance_collapse(small_space):
    tokenizer, model, _, _, _ = small_space
    posterior = BanelPosterior(model, regions=[RejectionRegion("region_0", -1e9, 0)], max_sampling_attempts=5)
    with pytest.raises(PosteriorAcceptanceError, match="acceptance rate 0.00e\\+00"):
        posterior.generate(torch.full((2, 1), tokenizer.bos_token_id), max_new_tokens=3, do_sample=True)


def test_generate_bounds_the_total_proposals_not_each_sample(small_space):
    """
    At low acceptance a requested sample may take more than `max_sampling_attempts` proposals by chance; `generate`
    only gives up once all requested samples together have used `max_sampling_attempts` each.
    """
    tokenizer, model, _, _, _ = small_space

    class FirstRowOnly(BanelPosterior):
        """Accepts only the first candidate of every batch: one sample per call, whatever the oversampling."""

        def propose(self, input_ids, attention_mask, generation_config, adapter=None, regions=None):
            proposal = super().propose(input_ids, attention_mask, generation_config, adapter, regions)
            proposal.accepted = torch.arange(len(proposal.accepted)) == 0
            return proposal

    prompts = torch.full((4, 1), tokenizer.bos_token_id)
    # Batches of 4, 9 (3 per pending row), 10 and 6 candidates: the last sample is drawn after its 15th attempt,
    # within the 24 proposals that 6 attempts for each of 4 samples allow.
    posterior = FirstRowOnly(model, regions=[], max_sampling_attempts=6)
    assert len(posterior.generate(prompts, max_new_tokens=3, do_sample=True)) == 4
    with pytest.raises(PosteriorAcceptanceError, match="4 attempts per sample"):
        FirstRowOnly(model, regions=[], max_sampling_attempts=4).generate(prompts, max_new_tokens=3, do_sample=True)


def test_save_and_load_keep_every_decision(small_space, tmp_path):
    tokenizer, model, _, sequences, batch = small_space
    for name in ("region_1", "reference_1"):
        model.add_adapter(name, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    posterior = BanelPosterior(
        model,
        regions=[RejectionRegion("region_0", 0.1, 0), RejectionRegion("region_1", -0.2, 1, "reference_1")],
        temperature=0.7,
        scoring_batch_size=7,
        max_sampling_attempts=33,
        generation_config=GenerationConfig(max_new_tokens=5, do_sample=True, top_k=3),
    )
    posterior.save_pretrained(tmp_path / "posterior")
    base = tiny_qwen2(tokenizer, seed=1)
    loaded = BanelPosterior.from_pretrained(tmp_path / "posterior", model=base)

    # The sampler's settings come back with it, not only the regions.
    assert (loaded.temperature, loaded.scoring_batch_size, loaded.max_sampling_attempts) == (0.7, 7, 33)
    assert (loaded.generation_config.max_new_tokens, loaded.generation_config.top_k) == (5, 3)

    assert [r.threshold for r in loaded.regions] == [0.1, -0.2]
    torch.testing.assert_close(loaded.log_ratios(**batch), posterior.log_ratios(**batch))
    assert torch.equal(loaded.rejects(loaded.log_ratios(**batch)), posterior.rejects(posterior.log_ratios(**batch)))
    assert loaded.regions[1].reference_adapter == "reference_1"
    for name in ("region_1", "reference_1"):
        model.delete_adapter(name)
