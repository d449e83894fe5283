"""Memory techniques: each gives the plain computation's results, trains, saves memory, and the
combinations that cannot work are refused with a message that says why."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from model.config import MemoryConfig, TrainConfig
from model.gpt import GPT, GPTConfig
from model.losses import linear_cross_entropy
from model.step import TrainStep
from model.techniques import TechniqueError, apply_to_model, check
from model.train import train

CPU = torch.device("cpu")


def tiny_gpt(**memory) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=4, n_head=2, n_embd=32))
    apply_to_model(model, MemoryConfig(**memory))
    return model


def loss_and_grads(model: GPT, x, y):
    model.zero_grad(set_to_none=True)
    loss = model.loss(model(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 300, (4, 32), generator=g), torch.randint(0, 300, (4, 32), generator=g)


@pytest.mark.parametrize("memory", [
    {"loss_chunk_size": 7},
    {"loss_chunk_size": 1000},
    {"activation_checkpointing": "full"},
    {"activation_checkpointing": "selective", "checkpoint_every": 2, "checkpoint_part": "block"},
    {"activation_checkpointing": "selective", "checkpoint_every": 1, "checkpoint_part": "attention"},
    {"activation_checkpointing": "selective", "checkpoint_every": 1, "checkpoint_part": "mlp"},
    {"activation_checkpointing": "full", "loss_chunk_size": 16},
    {"loss_chunk_size": 16, "late_head_grad": True},
    {"mlp_chunks": 4},
    {"activation_checkpointing": "full", "mlp_chunks": 3, "loss_chunk_size": 16, "late_head_grad": True},
    {"loss_chunk_size": 16, "loss_vocab_chunk_size": 64},
    {"loss_chunk_size": 7, "loss_vocab_chunk_size": 1000},
    {"loss_chunk_size": 16, "loss_vocab_chunk_size": 37, "late_head_grad": True},
])
def test_technique_gives_the_plain_loss_and_gradients(batch, memory):
    plain_loss, plain_grads = loss_and_grads(tiny_gpt(loss_chunk_size=0), *batch)
    loss, grads = loss_and_grads(tiny_gpt(**memory), *batch)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("vocab_chunk", [0, 50, 7])
def test_vocabulary_tiled_loss_gives_the_plain_loss_and_gradients_with_large_logits(vocab_chunk):
    # Logits far from zero, the maximum in a different tile per row: the online log-sum-exp must rescale.
    torch.manual_seed(0)
    h = (torch.randn(40, 24) * 3).requires_grad_()
    w = (torch.randn(120, 24) * 3).requires_grad_()
    t = torch.randint(0, 120, (40,))
    full = linear_cross_entropy(h, w, t, 0)
    tiled = linear_cross_entropy(h, w, t, 16, vocab_chunk=vocab_chunk)
    assert tiled.item() == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip(torch.autograd.grad(full * 3.5, (h, w)), torch.autograd.grad(tiled * 3.5, (h, w))):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_vocabulary_tiled_loss_keeps_one_tile_of_logits():
    from torch._C._profiler import _EventType

    from model.memory import _walk

    torch.manual_seed(0)
    h = torch.randn(512, 64, requires_grad=True)
    w = torch.randn(4096, 64, requires_grad=True)
    t = torch.randint(0, 4096, (512,))
    peaks = {}
    for vocab_chunk in (0, 256):
        h.grad = w.grad = None
        with torch.profiler.profile(profile_memory=True) as prof:
            linear_cross_entropy(h, w, t, 128, vocab_chunk=vocab_chunk).backward()
        events = sorted(_walk(prof.profiler.kineto_results.experimental_event_tree()), key=lambda e: e.start_time_ns)
        live = peak = 0
        for event in events:
            if event.typed[0] == _EventType.Allocation:
                live += event.typed[1].alloc_size
                peak = max(peak, live)
        peaks[vocab_chunk] = peak
    outputs = (512 * 64 + 4096 * 64) * 4  # the fp32 gradients of both inputs, made in forward
    # 128 x 4096 fp32 logits per chunk without tiles, 128 x 256 with (and the tile's gradient for h).
    assert peaks[0] - outputs > 128 * 4096 * 4 * 0.9
    assert peaks[256] - outputs < 128 * 256 * 4 + 128 * 64 * 4 + 64 * 1024


def test_vocabulary_tiles_need_the_chunked_loss():
    with pytest.raises(TechniqueError, match="loss_vocab_chunk_size tiles the chunked loss's vocabulary"):
        check(TrainConfig.model_validate({"memory": {"loss_chunk_size": 0, "loss_vocab_chunk_size": 256}}), CPU)


def test_chunked_loss_matches_under_bf16_autocast(batch):
    torch.manual_seed(0)
    h = torch.randn(64, 32, requires_grad=True)
    w = torch.randn(300, 32, requires_grad=True)
    t = torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = linear_cross_entropy(h, w, t, 0)
        chunked = linear_cross_entropy(h, w, t, 16)
    assert chunked.item() == pytest.approx(full.item(), rel=2e-2)
    g_full = torch.autograd.grad(full, (h, w))
    g_chunk = torch.autograd.grad(chunked, (h, w))
    for a, b in zip(g_full, g_chunk):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)


def test_tiled_mlp_in_a_checkpointed_block_recomputes_only_the_hidden_layer_once(batch):
    model = tiny_gpt(activation_checkpointing="full", mlp_chunks=4)
    hidden_calls, output_calls = [], []
    mlp = model.blocks[0].mlp
    mlp.c_fc.register_forward_hook(lambda module, args, out: hidden_calls.append(args[0].shape[1]))
    mlp.c_proj.register_forward_hook(lambda module, args, out: output_calls.append(args[0].shape[1]))
    loss_and_grads(model, *batch)
    # 4 slices of 8 positions in forward and again in backward; the block's recomputation skips the MLP,
    # and backward does not recompute the output layer.
    assert hidden_calls == [8] * 8
    assert output_calls == [8] * 4


def test_chunked_loss_scales_its_forward_gradients_by_the_upstream_gradient():
    torch.manual_seed(0)
    h = torch.randn(50, 24, requires_grad=True)
    w = torch.randn(120, 24, requires_grad=True)
    t = torch.randint(0, 120, (50,))
    # As the fp16 gradient scaler and accumulation's 1/k do: the loss is scaled before backward.
    g_full = torch.autograd.grad(linear_cross_entropy(h, w, t, 0) * 37.5, (h, w))
    g_chunk = torch.autograd.grad(linear_cross_entropy(h, w, t, 16) * 37.5, (h, w))
    for a, b in zip(g_full, g_chunk):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_chunked_loss_without_grad_gives_the_loss_and_keeps_nothing_for_backward():
    torch.manual_seed(0)
    h = torch.randn(50, 24, requires_grad=True)
    w = torch.randn(120, 24, requires_grad=True)
    t = torch.randint(0, 120, (50,))
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, t, 16)
    assert loss.grad_fn is None
    assert loss.item() == pytest.approx(linear_cross_entropy(h, w, t, 0).item(), rel=1e-6)


def run(corpus, tmp_path, steps=25, **overrides):
    config, parts = corpus
    memory = overrides.pop("memory", {})
    cfg = config.train.model_copy(update={"max_steps": steps, "eval_interval": steps, "memory": MemoryConfig(**memory),
                                          **overrides})
    cfg = TrainConfig.model_validate(cfg.model_dump())
    return train(config.model, cfg, parts["tokens"].manifest_file.parent, tmp_path)


def losses(result) -> list[float]:
    return [json.loads(line)["train/loss"] for line in open(result.history_file) if "train/loss" in line]


@pytest.mark.integration
def test_gradient_accumulation_follows_the_full_batch(corpus, tmp_path):
    full = run(corpus, tmp_path / "full", steps=6, log_interval=1)
    accumulated = run(corpus, tmp_path / "acc", steps=6, log_interval=1, memory={"micro_batch_size": 2})
    assert losses(accumulated) == pytest.approx(losses(full), rel=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize("overrides", [
    {"memory": {"activation_checkpointing": "full"}},
    {"memory": {"activation_checkpointing": "selective", "checkpoint_part": "mlp"}},
    {"memory": {"loss_chunk_size": 64}},
    {"memory": {"micro_batch_size": 4}},
    {"memory": {"optimizer": "adafactor"}, "lr": 1.0, "min_lr": 0.1},
    {"memory": {"optimizer_in_backward": True}, "grad_clip": 0.0},
    {"memory": {"optimizer_in_backward": True, "optimizer": "adafactor"}, "grad_clip": 0.0, "lr": 1.0, "min_lr": 0.1},
    {"memory": {"precision": "bf16-mixed"}},
    {"memory": {"precision": "bf16-true"}},
], ids=["full-ckpt", "selective-mlp", "chunked", "accumulation", "adafactor", "opt-in-backward",
        "adafactor-in-backward", "bf16-mixed", "bf16-true"])
def test_each_switch_trains(corpus, tmp_path, overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run(corpus, tmp_path, **overrides)
    history = losses(result)
    assert sum(history[-2:]) / 2 < 0.8 * history[0], history
    assert result.val_loss < result.val_loss_start


@pytest.mark.integration
def test_optimizer_in_backward_resumes(corpus, tmp_path):
    memory = {"optimizer_in_backward": True}
    run(corpus, tmp_path, steps=10, grad_clip=0.0, memory=memory)
    resumed = run(corpus, tmp_path, steps=12, grad_clip=0.0, memory=memory)
    assert resumed.resumed_from == 10


@pytest.mark.parametrize("train_cfg, message", [
    ({"grad_clip": 0.0, "memory": {"optimizer_in_backward": True, "micro_batch_size": 2}}, "cannot accumulate"),
    ({"grad_clip": 1.0, "memory": {"optimizer_in_backward": True, "split_head_step": True, "loss_chunk_size": 64}},
     "outside the clip"),
    ({"grad_clip": 1.0, "update_clip": True, "memory": {"optimizer_in_backward": True}}, "choose one"),
    ({"memory": {"precision": "fp16-mixed"}}, "fp16-mixed needs CUDA"),
    ({"memory": {"activation_offload": True}}, "nowhere to move them"),
    ({"grad_clip": 0.0, "memory": {"split_head_step": True}}, "optimizer_in_backward: true"),
    ({"grad_clip": 0.0, "memory": {"split_head_step": True, "optimizer_in_backward": True, "optimizer": "adafactor"}},
     "cannot split adafactor"),
    ({"grad_clip": 0.0, "memory": {"split_head_step": True, "optimizer_in_backward": True, "late_head_grad": True}},
     "choose one"),
    ({"update_clip": True}, "update_clip is the clip for memory.optimizer_in_backward"),
    ({"grad_clip": 0.0, "update_clip": True, "memory": {"optimizer_in_backward": True, "optimizer": "adafactor"}},
     "adafactor keeps none it can read"),
    ({"grad_clip": 0.0, "update_clip": True, "memory": {"optimizer_in_backward": True, "split_head_step": True,
                                                        "loss_chunk_size": 64}}, "use late_head_grad instead"),
])
def test_refused_combinations_say_why(train_cfg, message):
    with pytest.raises(TechniqueError, match=message):
        check(TrainConfig.model_validate({"batch_size": 4, **train_cfg}), CPU)


def trained_weights(steps: int, **memory) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig.model_validate({"batch_size": 4, "grad_clip": 0.0, "weight_decay": 0.1, "lr": 1e-2,
                                      "memory_sample_steps": [], "memory": memory})
    train_step = TrainStep(model, cfg, CPU)
    g = torch.Generator().manual_seed(3)
    for step in range(1, steps + 1):
        # A narrow token range, so that many head rows are not input tokens and are stepped early.
        batch = torch.randint(0, 40, (4, 32), generator=g), torch.randint(0, 300, (4, 32), generator=g)
        train_step(step, lambda n: batch)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_split_head_step_is_adamw_s_step():
    common = {"loss_chunk_size": 16, "optimizer_in_backward": True}
    together = trained_weights(4, **common)
    split = trained_weights(4, **common, split_head_step=True)
    assert not torch.equal(together["wte.weight"], trained_weights(0, **common)["wte.weight"])
    for name, weight in together.items():
        torch.testing.assert_close(split[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_adamw8bit_without_torchao_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.optim", None)
    with pytest.raises(TechniqueError, match="adamw8bit needs torchao: pip install"):
        check(TrainConfig.model_validate({"memory": {"optimizer": "adamw8bit"}}), CPU)


def test_bf16_on_this_cpu_warns_when_it_is_slow():
    from model.techniques import _cpu_has_native_bf16

    found = check(TrainConfig.model_validate({"memory": {"precision": "bf16-mixed"}}), CPU)
    assert bool(found) != _cpu_has_native_bf16()


def tracked_step(**memory):
    """The memory report of a second training step (optimizer state exists) run by the trainer's TrainStep."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2048, block_size=64, n_layer=4, n_head=2, n_embd=64))
    cfg = TrainConfig.model_validate({"batch_size": 8, "grad_clip": 0.0, "memory_sample_steps": [1, 2],
                                      "memory": memory})
    train_step = TrainStep(model, cfg, CPU)
    batch = torch.randint(0, 2048, (8, 64)), torch.randint(0, 2048, (8, 64))
    for step in (1, 2):
        train_step(step, lambda n: batch)
    return train_step.tracker.last


def test_techniques_cut_the_memory_they_target():
    plain = tracked_step(loss_chunk_size=0)
    checkpointed = tracked_step(loss_chunk_size=0, activation_checkpointing="full")
    chunked = tracked_step(loss_chunk_size=64)
    in_backward = tracked_step(loss_chunk_size=0, optimizer_in_backward=True)
    # With checkpointing the backward pass peaks while recomputing a block, not at its start.
    in_backward_chunked = tracked_step(loss_chunk_size=64, optimizer_in_backward=True, activation_checkpointing="full")
    split_head = tracked_step(loss_chunk_size=64, optimizer_in_backward=True, activation_checkpointing="full",
                              split_head_step=True)
    assert checkpointed.phases["forward"]["breakdown"]["activations"] < 0.5 * plain.phases["forward"]["breakdown"]["activations"]
    assert chunked.peak_bytes < plain.peak_bytes - 2 * 8 * 64 * 2048 * 4 * 0.9  # two full fp32 logits copies
    assert in_backward.phases["optimizer"]["breakdown"]["gradients"] == 0
    assert max(p["breakdown"]["gradients"] for p in in_backward.phases.values()) < \
        max(p["breakdown"]["gradients"] for p in plain.phases.values())
    # The head's 2048 x 64 gradient no longer waits through backward for the embedding's; only the rows of
    # the batch's (about 450 distinct) input tokens do.
    head_grad_bytes = 2048 * 64 * 4
    assert split_head.phases["backward"]["peak_bytes"] < \
        in_backward_chunked.phases["backward"]["peak_bytes"] - 0.6 * head_grad_bytes


def test_in_backward_composes_with_fsdp_only():
    """FSDP2 runs a shard's post-accumulate-grad hooks after its reduce-scatter; DDP all-reduces buckets after
    the hooks ran; a split head step uses the loss's gradient from before either."""
    from model.techniques import check_distributed

    def cfg(strategy: str, **memory) -> TrainConfig:
        return TrainConfig.model_validate({"grad_clip": 0.0, "distributed": {"strategy": strategy, "nproc_per_node": 2},
                                           "memory": {"loss_chunk_size": 64, "optimizer_in_backward": True, **memory}})

    check_distributed(cfg("fsdp"), torch.device("cpu"))
    with pytest.raises(TechniqueError, match="before DDP all-reduces its bucket"):
        check_distributed(cfg("ddp"), torch.device("cpu"))
    with pytest.raises(TechniqueError, match="split_head_step cannot run with train.distributed.strategy fsdp"):
        check_distributed(cfg("fsdp", split_head_step=True), torch.device("cpu"))
    with pytest.raises(TechniqueError, match="each rank would sum its own shards' norms"):
        check_distributed(cfg("fsdp").model_copy(update={"grad_clip": 1.0}), torch.device("cpu"))
    with pytest.raises(TechniqueError, match="each rank would measure its own shard"):
        check_distributed(cfg("fsdp").model_copy(update={"update_clip": True}), torch.device("cpu"))


def _second_moment_after_step(state: dict, grad: torch.Tensor, beta2: float) -> torch.Tensor:
    """AdamW's bias-corrected second moment with `grad` in it, from an fp32 or fp8 state (test reference)."""
    from model.fp8_adamw import dequantize_fp8

    if "exp_avg_sq" in state:
        v = state["exp_avg_sq"].float()
    else:
        v = dequantize_fp8(state["exp_avg_sq_root"], state["exp_avg_sq_root_scale"]).square().view_as(grad)
    return (beta2 * v + (1 - beta2) * grad.float().square()) / (1 - beta2 ** (float(state["step"]) + 1))


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fp8"])
def test_update_rms_is_stable_adamw_s_measure_over_the_whole_tensor(optimizer):
    from model.fp8_adamw import AdamWFp8
    from model.optim import update_rms

    torch.manual_seed(0)
    # 307,200 elements, whole 256-element blocks (so fp8 moments), past one 1 MiB slice.
    weight = torch.nn.Parameter(torch.randn(1024, 300))
    make = {"adamw": lambda: torch.optim.AdamW([weight], betas=(0.9, 0.95), fused=True),
            "adamw-fp8": lambda: AdamWFp8([weight], betas=(0.9, 0.95))}[optimizer]
    opt = make()
    grad = torch.randn(1024, 300)
    assert update_rms(grad, opt.state[weight], opt.param_groups[0]) == 1.0  # before the first step
    for _ in range(30):
        weight.grad = torch.randn(1024, 300)
        opt.step()
    assert ("exp_avg_sq" in opt.state[weight]) == (optimizer == "adamw")
    for scale in (1.0, 30.0):
        g = grad * scale
        v = _second_moment_after_step(opt.state[weight], g, 0.95)
        expected = (g.square() / v.clamp(min=1e-16)).mean().sqrt().item()
        assert update_rms(g, opt.state[weight], opt.param_groups[0]) == pytest.approx(expected, rel=1e-5)
    # A spike stands out, up to sqrt(bias correction / (1 - beta2)): 3.99 after 30 steps at beta2 0.95.
    assert update_rms(grad * 30, opt.state[weight], opt.param_groups[0]) > 3.5


def test_in_backward_the_global_norm_clip_comes_one_step_late():
    """Stepped in backward, step t's gradients are scaled by min(1, clip / step t-1's global norm): the same
    weights as AdamW stepped after backward with that factor applied by hand, the norm reported, and the
    factor kept in the optimizer's state for a resumed run."""
    clip = 0.05  # below every step's norm here, so each step after the first is clipped

    def model_and_batches():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
        g = torch.Generator().manual_seed(3)
        return model, [(torch.randint(0, 300, (4, 32), generator=g), torch.randint(0, 300, (4, 32), generator=g))
                       for _ in range(4)]

    model, batches = model_and_batches()
    cfg = TrainConfig.model_validate({"batch_size": 4, "grad_clip": clip, "lr": 1e-2, "memory_sample_steps": [],
                                      "memory": {"optimizer_in_backward": True}})
    with pytest.warns(UserWarning, match="clips each step by the previous step's norm"):
        train_step = TrainStep(model, cfg, CPU)
    norms = [train_step(step, lambda n, b=b: b)[1] for step, b in enumerate(batches, 1)]

    reference, batches = model_and_batches()
    params = [p for p in reference.parameters()]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=1e-2,
                                  betas=cfg.betas, fused=True)
    factor, expected_norms = 1.0, []
    for x, y in batches:
        reference.loss(reference(x), y).backward()
        expected_norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in params])))
        for p in params:
            p.grad.mul_(factor)
        optimizer.step()
        optimizer.zero_grad()
        factor = min(1.0, clip / (expected_norms[-1] + 1e-6))
    assert norms == pytest.approx(expected_norms, rel=1e-4)
    for (name, weight), expected in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(weight, expected, rtol=1e-4, atol=1e-5, msg=name)
    state = train_step.optimizer.state_dict()
    assert state["clip_factor"] == pytest.approx(clip / expected_norms[-1], rel=1e-4)
    fresh = TrainStep(model_and_batches()[0], cfg, CPU).optimizer
    fresh.load_state_dict(state)
    assert fresh.clip_factor == state["clip_factor"]


@pytest.mark.parametrize("memory", [{"optimizer": "adamw-fp8", "precision": "bf16-weights", "loss_chunk_size": 16,
                                     "late_head_grad": True}, {}], ids=["bf16-fp8-late-head", "fp32-adamw"])
def test_update_clip_is_wired_from_the_config_and_trains(memory, monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig.model_validate({"batch_size": 4, "grad_clip": 0.0, "update_clip": True, "lr": 1e-2,
                                      "memory_sample_steps": [],
                                      "memory": {"optimizer_in_backward": True, **memory}})
    train_step = TrainStep(model, cfg, CPU)
    assert train_step.optimizer.update_clip
    g = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 300, (4, 32), generator=g), torch.randint(0, 300, (4, 32), generator=g)
    losses = [train_step(step, lambda n: batch)[0] for step in range(1, 6)]  # one batch, learnt by heart
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    # Through the same TrainStep, a measure of 1e9 divides every step by it: the weights barely move.
    monkeypatch.setattr("model.optim.update_rms", lambda grad, state, group: 1e9)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_step(6, lambda n: batch)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw-fp8"])
def test_update_clip_shrinks_a_spike_s_step_and_leaves_steady_steps(optimizer):
    """Stepped in backward: with a steady gradient the second moment holds it (exactly in fp32) and the steps
    are AdamW's; a gradient 100 times larger gets a step divided by update_rms (about 4 here), the clip."""
    from model.fp8_adamw import AdamWFp8
    from model.optim import OptimizerInBackward, update_rms

    def run(update_clip: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
        torch.manual_seed(0)
        model = torch.nn.Linear(256, 64, bias=False)
        make = {"adamw": lambda groups: torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), fused=True),
                "adamw-fp8": lambda groups: AdamWFp8(groups, lr=1e-2, betas=(0.9, 0.95))}[optimizer]
        opt = OptimizerInBackward(model, make, weight_decay=0.1, update_clip=update_clip)
        gradient = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
        for _ in range(30):
            (model.weight * gradient).sum().backward()
        before = model.weight.detach().clone()
        rms = update_rms(gradient * 100, opt.state[model.weight], opt.param_groups[0])
        (model.weight * gradient * 100).sum().backward()
        return before, model.weight.detach() - before, rms

    steady_plain, spike_plain, rms = run(update_clip=False)
    steady_clipped, spike_clipped, _ = run(update_clip=True)
    # fp8 moments hold the steady gradient within their rounding noise, so their measure sits near 1, not at it.
    torch.testing.assert_close(steady_clipped, steady_plain, rtol=1e-5 if optimizer == "adamw" else 1e-2, atol=1e-6)
    assert rms > 3
    torch.testing.assert_close(spike_clipped, spike_plain / rms, rtol=1e-3 if optimizer == "adamw" else 0.05,
                               atol=1e-6)


def test_only_optimizers_that_round_with_random_bits_have_their_ddp_replicas_compared():
    from model.config import MemoryConfig
    from model.techniques import rounds_with_random_bits

    assert rounds_with_random_bits(MemoryConfig(optimizer="adamw-fp8"))
    assert rounds_with_random_bits(MemoryConfig(precision="bf16-weights", bf16_rounding="stochastic"))
    assert not rounds_with_random_bits(MemoryConfig(precision="bf16-weights", bf16_rounding="kahan"))
    assert not rounds_with_random_bits(MemoryConfig())
    assert not rounds_with_random_bits(MemoryConfig(optimizer="adamw8bit"))  # torchao rounds to nearest
