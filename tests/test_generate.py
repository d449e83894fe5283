"""Decoding: the KV cache changes nothing but speed; seeded sampling repeats; bad parameters are refused."""
from __future__ import annotations

import pytest
import torch

from model.generate import generate
from model.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval()


def test_cached_and_uncached_greedy_decoding_give_the_same_tokens(model):
    prompt = torch.tensor([[5, 17, 42, 8]])
    cached = generate(model, prompt, 20, temperature=0, use_cache=True)  # fills the 24-token context
    plain = generate(model, prompt, 20, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


def test_decoding_past_the_context_length_keeps_going(model):
    # Past block_size the cache restarts over the last half block (as cropping the context would).
    out = generate(model, torch.tensor([[5, 17, 42, 8]]), 60, temperature=0, use_cache=True)
    assert out.shape == (1, 64) and int(out.max()) < 97


def test_seeded_sampling_is_reproducible(model):
    prompt = torch.tensor([[1, 2, 3]])
    runs = [generate(model, prompt, 20, temperature=1.0, top_k=20, top_p=0.9,
                     generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_p_keeps_only_the_nucleus(model):
    prompt = torch.tensor([[1, 2, 3]])
    greedy = generate(model, prompt, 1, temperature=0)
    tiny_nucleus = generate(model, prompt, 1, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, tiny_nucleus)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
])
def test_bad_generation_parameters_are_refused(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.tensor([[1]]), 3, **kwargs)


@pytest.fixture(scope="module")
def trained():
    """A GPT trained on a Markov chain to well below chance (tests/trained.py)."""
    from tests.trained import VOCAB, train_tiny

    torch.manual_seed(0)
    return train_tiny(GPT(GPTConfig(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=64)))


# Measured on the logits (the head included, which int8 quantizes): fp16 changes the trained GPT's by at
# most 0.009 and its loss by 3e-5; bf16 and int8 by at most 0.09 and 5e-4. Weights with 20% noise move them
# by 4.7 and 11%: the bounds below catch a broken conversion, not rounding.
BOUNDS = {"fp16": (0.03, 1e-3), "bf16": (0.25, 5e-3), "int8": (0.25, 5e-3)}


def predicts_like_fp32(fp32, converted, kind: str) -> None:
    from tests.trained import validation

    max_diff, loss_rel = BOUNDS[kind]
    x, y = validation()
    with torch.no_grad():
        reference_hidden, hidden = fp32(x), converted(x)
        reference, logits = fp32.lm_head(reference_hidden), converted.lm_head(hidden)
        assert (logits.float() - reference).abs().max().item() <= max_diff
        assert converted.loss(hidden, y).item() == pytest.approx(fp32.loss(reference_hidden, y).item(), rel=loss_rel)


def test_int8_weights_are_a_quarter_and_predict_like_fp32(trained):
    import copy

    from model.quantize import quantize_int8, weight_bytes

    int8 = quantize_int8(copy.deepcopy(trained))
    assert weight_bytes(int8) <= 0.3 * weight_bytes(trained)
    predicts_like_fp32(trained, int8, "int8")
    x = torch.randint(0, 256, (1, 32))
    with torch.no_grad():
        # Decoding's few rows take PyTorch's int8 kernel, long inputs the dequantizing path: both agree.
        short = int8.lm_head(int8(x[:1, :4]))
        long = int8.lm_head(int8(x[:1]))[:, :4]
    torch.testing.assert_close(short, long, rtol=1e-4, atol=1e-4)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(int8, prompt, 10, temperature=0, use_cache=True),
                       generate(int8, prompt, 10, temperature=0, use_cache=False))


@pytest.mark.parametrize("kind", ["fp16", "bf16"])
def test_half_precision_weights_are_half_and_predict_like_fp32(trained, kind):
    import copy

    from model.quantize import inference_weights, weight_bytes

    half = inference_weights(copy.deepcopy(trained), kind)
    assert weight_bytes(half) == weight_bytes(trained) // 2
    predicts_like_fp32(trained, half, kind)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(half, prompt, 10, temperature=0, use_cache=True),
                       generate(half, prompt, 10, temperature=0, use_cache=False))


def test_unknown_inference_weights_are_refused():
    from model.quantize import inference_weights

    with pytest.raises(ValueError, match="weights must be one of fp32, fp16, bf16, int8"):
        inference_weights(GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8)), "int4")


def test_the_utf8_state_machine_agrees_with_pythons_decoder():
    from model.utf8_guard import BOUNDARY, advance

    pieces = [c.encode() for c in "aé列😀\x7f\u0800\ud7ff\ue000\U0010ffff"] + [bytes([b]) for b in
                                                                             (0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xE0, 0xED,
                                                                              0xF0, 0xF4, 0xF5, 0xFF, 0xA0, 0x9F, 0x90)]
    g = torch.Generator().manual_seed(0)
    for _ in range(20_000):
        data = b"".join(pieces[i] for i in torch.randint(0, len(pieces), (int(torch.randint(1, 6, (1,), generator=g)),),
                                                         generator=g))
        try:
            data.decode("utf-8")
            valid = True
        except UnicodeDecodeError as error:
            valid = False
            truncated = error.reason == "unexpected end of data"
        state = advance(BOUNDARY, data)
        assert (state == BOUNDARY) == valid, data
        if not valid:  # a character cut short is a state waiting for more; anything else is refused
            assert (state is not None) == truncated, data


@pytest.fixture(scope="module")
def chinese_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["列表推导式在需要的时候调用生成器。字典保存每一个元素的结果。"] * 20, trainer)
    return tokenizer


def test_sampled_text_is_always_valid_utf8_from_a_byte_level_bpe(chinese_tokenizer):
    # An untrained model's logits are near uniform over 400 ids, most of them lone bytes: unguarded, almost
    # every sample breaks a character.
    from model.generate import EOT, generate_tokens, stream_text

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=448, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    eot = chinese_tokenizer.token_to_id(EOT)
    prompt = torch.tensor([chinese_tokenizer.encode("列表").ids])
    unguarded = [chinese_tokenizer.decode(list(generate_tokens(model, prompt, 40, 1.0, stop_id=eot,
                                                               generator=torch.Generator().manual_seed(s))))
                 for s in range(10)]
    assert sum("\ufffd" in text for text in unguarded) >= 8
    for seed in range(10):
        pieces = list(stream_text(model, chinese_tokenizer, "列表", 40, temperature=1.0, top_k=None, seed=seed))
        text = "".join(pieces)
        assert "\ufffd" not in text and text.encode().decode() == text
        assert text == "".join(stream_text(model, chinese_tokenizer, "列表", 40, 1.0, None, seed=seed))


def test_the_guard_allows_only_continuations_mid_character_and_no_padded_rows(chinese_tokenizer):
    from model.utf8_guard import BOUNDARY, Utf8Guard

    guard = Utf8Guard.for_tokenizer(chinese_tokenizer)
    vocab = chinese_tokenizer.get_vocab_size()
    logits = torch.zeros(1, vocab + 48)
    assert torch.isinf(guard.mask(logits)[0, vocab:]).all()
    lead = next(i for i, b in guard._bytes.items() if b == "列".encode()[:1])
    guard.advance(lead)
    assert guard.state != BOUNDARY and not guard.between_characters
    allowed = torch.isfinite(guard.mask(logits)[0]).nonzero().flatten().tolist()
    assert allowed and all(0x80 <= guard._bytes[i][0] <= 0xBF for i in allowed)
    assert chinese_tokenizer.token_to_id("<|endoftext|>") not in allowed
    from tokenizers import Tokenizer, models

    assert Utf8Guard.for_tokenizer(Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))) is None
