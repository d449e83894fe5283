"""The CUDA paths: every precision and switch trains on a GPU, the tracker agrees with the CUDA
allocator, a memory snapshot is written, decoding gives the same tokens with and without caches, and a
plan's choice fits the allocator's peak.

Skipped where PyTorch sees no GPU (CI). On a GPU machine without the crawl and pipeline dependencies:
    python -m pytest --noconftest tests/test_cuda.py
"""
from __future__ import annotations

import gc
import pickle
import warnings

import pytest
import torch

from model.config import TrainConfig
from model.gpt import GPT, GPTConfig
from model.rnn import RNNAttentionLM, RNNConfig
from model.step import TrainStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
VOCAB, T, BATCH = 512, 64, 8


def gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=4, n_head=4, n_embd=128)).to(CUDA)


def patterned_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences that repeat a short random motif: a model that learns anything drives the loss down."""
    g = torch.Generator().manual_seed(n)
    motif = torch.randint(0, VOCAB, (BATCH, 8), generator=g)
    seq = motif.repeat(1, (T + 1) // 8 + 1)[:, : T + 1].to(CUDA)
    return seq[:n, :-1], seq[:n, 1:]


def train_losses(model, steps: int = 40, **train) -> tuple[list[float], TrainStep]:
    cfg = TrainConfig.model_validate({"batch_size": BATCH, "lr": 3e-3, "memory_sample_steps": [2],
                                      "memory_sample_every": 10**9, **train})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        step = TrainStep(model, cfg, CUDA)
    return [step(i, patterned_batch)[0] for i in range(1, steps + 1)], step


@pytest.mark.parametrize("train", [
    {},
    {"memory": {"precision": "bf16-mixed"}},
    {"memory": {"precision": "fp16-mixed"}},
    {"memory": {"precision": "bf16-true"}},
    {"memory": {"activation_offload": True}},
    {"memory": {"activation_checkpointing": "full", "mlp_chunks": 4, "loss_chunk_size": 64}},
    {"memory": {"optimizer_in_backward": True, "late_head_grad": True}, "grad_clip": 0.0},
    {"memory": {"optimizer_in_backward": True, "split_head_step": True, "activation_checkpointing": "full",
                "mlp_chunks": 4, "precision": "bf16-mixed"}, "grad_clip": 0.0},
    {"memory": {"optimizer": "adafactor"}, "lr": 3e-2},
    {"memory": {"micro_batch_size": 2, "precision": "bf16-mixed"}},
    {"memory": {"compile": True}},
], ids=["fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "offload", "ckpt-tiled-chunked", "opt-in-backward",
        "split-head-tiled-bf16", "adafactor", "accum-bf16", "compile"])
def test_each_switch_trains_on_cuda(train):
    losses, step = train_losses(gpt(), **train)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    report = step.tracker.last
    assert report.cuda_max_allocated is not None
    if train.get("memory", {}).get("precision") == "fp16-mixed":
        assert step.scaler is not None and step.scaler.get_scale() > 0


def test_the_rnn_trains_on_cuda():
    torch.manual_seed(0)
    model = RNNAttentionLM(RNNConfig(vocab_size=VOCAB, block_size=T, n_layer=2, n_embd=128, cell="gru")).to(CUDA)
    losses, _ = train_losses(model, memory={"precision": "bf16-mixed", "activation_checkpointing": "full"})
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


@pytest.mark.parametrize("memory", [{}, {"activation_checkpointing": "full", "loss_chunk_size": 64},
                                    {"precision": "bf16-mixed"}], ids=["plain", "ckpt-chunked", "bf16-mixed"])
def test_tracker_peak_matches_the_cuda_allocator(memory):
    model = gpt()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    _, step = train_losses(model, steps=3, memory=memory)
    report = step.tracker.last
    assert report.peak_bytes == pytest.approx(report.cuda_max_allocated, rel=0.02)
    assert sum(report.breakdown.values()) == report.peak_bytes
    # The model's own tensors are recognised on the GPU too, not counted as temporaries.
    assert report.breakdown["parameters"] == pytest.approx(param_bytes, rel=0.05)
    assert report.breakdown["optimizer_state"] == pytest.approx(2 * param_bytes, rel=0.05)


def test_offload_keeps_fewer_activations_on_the_gpu():
    def forward_activations(**memory) -> int:
        _, step = train_losses(gpt(), steps=2, memory={"loss_chunk_size": 0, **memory})
        return step.tracker.last.phases["forward"]["breakdown"]["activations"]

    assert forward_activations(activation_offload=True) < 0.5 * forward_activations()


def test_a_memory_snapshot_is_written(tmp_path):
    path = tmp_path / "snapshot.pickle"
    cfg = TrainConfig.model_validate({"batch_size": BATCH, "memory_sample_steps": [1]})
    step = TrainStep(gpt(), cfg, CUDA, snapshot_path=path)
    step(1, patterned_batch)
    snapshot = pickle.loads(path.read_bytes())
    assert snapshot["segments"] and snapshot["device_traces"]


@pytest.mark.parametrize("make", [
    lambda: GPT(GPTConfig(vocab_size=VOCAB, block_size=48, n_layer=2, n_head=2, n_embd=64)),
    lambda: RNNAttentionLM(RNNConfig(vocab_size=VOCAB, block_size=48, n_layer=2, n_embd=64, cell="relu")),
], ids=["gpt", "rnn"])
def test_cached_decoding_gives_the_uncached_tokens_on_cuda(make):
    from model.generate import generate

    torch.manual_seed(0)
    model = make().to(CUDA).eval()
    prompt = torch.tensor([[5, 17, 42, 8]], device=CUDA)
    cached = generate(model, prompt, 40, temperature=0, use_cache=True)
    plain = generate(model, prompt, 40, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


def test_int8_weights_decode_on_cuda():
    import copy

    from model.generate import generate
    from model.quantize import quantize_int8, weight_bytes

    torch.manual_seed(0)
    fp32 = GPT(GPTConfig(vocab_size=VOCAB, block_size=48, n_layer=2, n_head=2, n_embd=128)).to(CUDA).eval()
    int8 = quantize_int8(copy.deepcopy(fp32))
    assert weight_bytes(int8) <= 0.3 * weight_bytes(fp32)
    x, y = (torch.randint(0, VOCAB, (2, 32), device=CUDA) for _ in range(2))
    with torch.no_grad():
        assert int8.loss(int8(x), y).item() == pytest.approx(fp32.loss(fp32(x), y).item(), rel=1e-3)
    prompt = x[:1, :4]
    cached = generate(int8, prompt, 20, temperature=0, use_cache=True)
    assert cached.device.type == CUDA.type and cached.shape == (1, 24)
    assert torch.equal(cached, generate(int8, prompt, 20, temperature=0, use_cache=False))


def test_the_plan_fits_the_cuda_allocator():
    from model.plan import plan

    arch = GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=4, n_head=4, n_embd=128)
    cfg = TrainConfig(batch_size=BATCH)
    as_configured = plan(arch, cfg, 2**40, CUDA).trials[0].peak_bytes
    budget = int(0.7 * as_configured)
    result = plan(arch, cfg, budget, CUDA)
    assert result.chosen is not None and result.chosen.peak_bytes <= budget
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    train_losses(gpt(), steps=3, **result.train.model_dump(exclude={"batch_size", "lr"}))
    assert torch.cuda.max_memory_allocated(CUDA) <= budget * 1.05  # the run's tokens, not the plan's random ones
