"""The article's model: recurrent layers with attention over their states, trained by the same trainer."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from model.config import MemoryConfig, ModelConfig, TrainConfig
from model.generate import generate
from model.rnn import RNNAttentionLM, RNNConfig
from model.techniques import TechniqueError, apply_to_model
from model.train import train


@pytest.mark.parametrize("cell", ["relu", "gru", "lstm"])
def test_cached_and_uncached_greedy_decoding_agree(cell):
    torch.manual_seed(0)
    model = RNNAttentionLM(RNNConfig(vocab_size=97, n_layer=2, n_embd=32, cell=cell)).eval()
    prompt = torch.tensor([[5, 17, 42, 8]])
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    plain = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("cell", ["relu", "gru", "lstm"])
def test_int8_weights_are_about_a_quarter_and_predict_like_fp32(cell):
    import copy

    from model.quantize import quantize_int8, weight_bytes

    torch.manual_seed(0)
    fp32 = RNNAttentionLM(RNNConfig(vocab_size=512, n_layer=2, n_embd=64, cell=cell)).eval()
    int8 = quantize_int8(copy.deepcopy(fp32))
    assert weight_bytes(int8) <= 0.3 * weight_bytes(fp32)
    x, y = torch.randint(0, 512, (2, 40)), torch.randint(0, 512, (2, 40))
    with torch.no_grad():
        # The int8 recurrent layers follow PyTorch's own gate equations: the same hidden states, to rounding.
        torch.testing.assert_close(int8(x), fp32(x), rtol=0.05, atol=0.05)
        assert int8.loss(int8(x), y).item() == pytest.approx(fp32.loss(fp32(x), y).item(), rel=1e-3)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(int8, prompt, 12, temperature=0, use_cache=True),
                       generate(int8, prompt, 12, temperature=0, use_cache=False))


@pytest.mark.parametrize("kind", ["fp16", "bf16", "int8"])
def test_converted_weights_predict_like_fp32_on_a_trained_model(trained_rnn, kind):
    import copy

    from model.quantize import inference_weights
    from tests.test_generate import predicts_like_fp32

    predicts_like_fp32(trained_rnn, inference_weights(copy.deepcopy(trained_rnn), kind), kind)


@pytest.fixture(scope="module")
def trained_rnn():
    from tests.trained import VOCAB, train_tiny

    torch.manual_seed(0)
    return train_tiny(RNNAttentionLM(RNNConfig(vocab_size=VOCAB, n_layer=1, n_embd=48, cell="gru")))


def test_attention_is_causal_and_matches_the_running_form():
    torch.manual_seed(0)
    model = RNNAttentionLM(RNNConfig(vocab_size=50, n_layer=1, n_embd=16)).eval()
    x = torch.randint(0, 50, (2, 12))
    full = model(x)
    changed = x.clone()
    changed[:, 8:] = 0
    assert torch.allclose(model(changed)[:, :8], full[:, :8], atol=1e-6)  # the future does not leak back
    cache = model.new_cache()
    steps = torch.cat([model(x[:, :5], cache), model(x[:, 5:9], cache), model(x[:, 9:], cache)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", ["relu", "gru", "lstm"])
@pytest.mark.parametrize("memory", [{"activation_checkpointing": "full"},
                                    {"activation_checkpointing": "full", "loss_chunk_size": 16, "late_head_grad": True}],
                         ids=["checkpointing", "checkpointing-chunked-loss"])
def test_checkpointed_recurrence_gives_the_plain_loss_and_gradients(cell, memory):
    def loss_and_grads(**switches):
        torch.manual_seed(0)
        model = RNNAttentionLM(RNNConfig(vocab_size=97, n_layer=2, n_embd=32, cell=cell)).train()
        apply_to_model(model, MemoryConfig(**switches))
        g = torch.Generator().manual_seed(1)
        x, y = torch.randint(0, 97, (3, 40), generator=g), torch.randint(0, 97, (3, 40), generator=g)
        loss = model.loss(model(x), y)
        loss.backward()
        return model, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_model, plain_loss, plain = loss_and_grads(loss_chunk_size=0)
    model, loss, grads = loss_and_grads(**memory)
    assert model.time_chunks > 1 and plain_model.time_chunks == 1  # the recurrence really was checkpointed
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)


def run(corpus, tmp_path, **memory):
    config, parts = corpus
    model_cfg = ModelConfig(arch="rnn-attention", n_layer=2, n_embd=32, block_size=32)
    cfg = TrainConfig.model_validate({**config.train.model_dump(), "max_steps": 25, "eval_interval": 25,
                                      "grad_clip": 0.0 if memory.get("optimizer_in_backward") else 1.0,
                                      "memory": memory})
    return train(model_cfg, cfg, parts["tokens"].manifest_file.parent, tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("memory", [
    {}, {"activation_checkpointing": "full"}, {"loss_chunk_size": 64, "late_head_grad": True},
    {"micro_batch_size": 4}, {"optimizer_in_backward": True}, {"precision": "bf16-mixed"},
], ids=["plain", "checkpointing", "chunked-loss", "accumulation", "opt-in-backward", "bf16-mixed"])
def test_rnn_trains_under_each_switch_that_applies(corpus, tmp_path, memory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(corpus, tmp_path, **memory)
    losses = [json.loads(line)["train/loss"] for line in open(result.history_file) if "train/loss" in line]
    assert sum(losses[-2:]) / 2 < 0.85 * losses[0], losses
    assert result.val_loss < result.val_loss_start


@pytest.mark.parametrize("memory, message", [
    ({"activation_checkpointing": "selective"}, "rnn-attention has neither"),
    ({"mlp_chunks": 2}, "rnn-attention has none"),
])
def test_switches_that_do_not_apply_say_so(memory, message):
    model = RNNAttentionLM(RNNConfig(vocab_size=50, n_layer=1, n_embd=16))
    with pytest.raises(TechniqueError, match=message):
        apply_to_model(model, MemoryConfig(**memory))


@pytest.mark.integration
def test_rnn_checkpoint_loads_and_generates(corpus, tmp_path):
    from model.checkpoint import load_lm

    result = run(corpus, tmp_path)
    model = load_lm(result.checkpoint_dir)
    assert isinstance(model, RNNAttentionLM)
    out = generate(model, torch.tensor([[1, 2, 3]]), 5, temperature=0)
    assert out.shape == (1, 8)
