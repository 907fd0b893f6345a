"""The checksum task (`banel_trl.testing`): successes that look like ordinary samples, for the defaults benchmark."""

import torch

from banel_trl.testing import CHECKSUM_MODULUS, checksum_is_zero, checksum_proposal


def test_the_checksum_reward_sums_letters_weighted_by_position():
    # "bx": 1 * 2 + 2 * 24 = 50; "ax": 49; the tokenizer's spaces between letters are ignored; nothing is no success.
    assert CHECKSUM_MODULUS == 50
    assert checksum_is_zero(["bx", "b x", "ax", "", "bxbx"]) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_the_checksum_proposal_succeeds_about_once_in_the_modulus_on_strings_of_its_length():
    tokenizer, model = checksum_proposal(seed=0, length=10)
    torch.manual_seed(0)
    input_ids = torch.full((2000, 1), tokenizer.bos_token_id)
    output = model.generate(
        input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True, max_new_tokens=11, top_k=0
    )
    texts = tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True)
    assert sum(len(text.split()) == 10 for text in texts) > 0.95 * len(texts)
    assert 0.005 < sum(checksum_is_zero(texts)) / len(texts) < 0.05
