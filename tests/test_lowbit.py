"""Weights and optimizer states below fp32: bf16 weights that keep small updates (stochastic rounding,
Kahan summation), fp32 arithmetic over bf16 weights, and the optimizers with less state than AdamW's."""
from __future__ import annotations

import pytest
import torch

from model.config import MemoryConfig, TrainConfig
from model.gpt import GPT, GPTConfig
from model.lowbit import AdamWBF16, kahan_add_, stochastic_round_to_bf16
from model.optimizers import AdamMini
from model.step import TrainStep
from model.techniques import TechniqueError, apply_to_model, check

CPU = torch.device("cpu")


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_is_not():
    # 1 + 0.3 bf16 steps: nearest rounding always gives 1, stochastic rounding 1 + a step 30% of the time.
    step = 2.0**-7
    x = torch.full((200_000,), 1 + 0.3 * step)
    rounded = stochastic_round_to_bf16(x, torch.Generator().manual_seed(0))
    assert rounded.dtype == torch.bfloat16
    assert set(rounded.float().unique().tolist()) == {1.0, 1 + step}
    assert rounded.float().mean().item() == pytest.approx(x[0].item(), abs=0.01 * step)
    assert x.to(torch.bfloat16).float().mean().item() == 1.0
    negative = stochastic_round_to_bf16(-x, torch.Generator().manual_seed(1))
    assert negative.float().mean().item() == pytest.approx(-x[0].item(), abs=0.01 * step)


def test_kahan_summation_recovers_the_updates_plain_bf16_loses():
    plain = torch.ones(4, dtype=torch.bfloat16)
    weight, compensation = torch.ones(4, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.bfloat16)
    for _ in range(1000):  # each update is a tenth of bf16's step at 1.0: plain rounding drops every one
        plain.copy_(plain.float() + 1e-4)
        kahan_add_(weight, compensation, torch.full((4,), 1e-4))
    assert torch.equal(plain, torch.ones(4, dtype=torch.bfloat16))
    # Within one bf16 step of the exact sum (the compensation is bf16 too), where plain bf16 is 0.1 off.
    assert weight.float().sub(1.1).abs().max().item() <= 2.0**-7


def test_bf16_adamw_on_fp32_weights_is_adamw():
    torch.manual_seed(0)
    a = torch.randn(300, 7, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    ours = AdamWBF16([a], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ref = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(5):
        grad = torch.randn(300, 7)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rounding", ["stochastic", "kahan"])
def test_bf16_adamw_keeps_small_updates_that_nearest_rounding_drops(rounding):
    # lr 1e-4 against weights of 1: every step moves a weight by a tenth of a bf16 step.
    def final(rounding: str) -> torch.Tensor:
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
        opt = AdamWBF16([w], lr=1e-4, rounding=rounding)
        for _ in range(200):
            w.grad = torch.ones_like(w)
            opt.step()
        return w.detach().float()

    assert torch.equal(final("nearest"), torch.ones(1000))
    assert final(rounding).mean().item() == pytest.approx(1 - 200 * 1e-4, abs=2e-3)


def tiny(**memory) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    apply_to_model(model, MemoryConfig(**memory))
    return model


@pytest.mark.parametrize("memory", [{"loss_chunk_size": 0}, {"loss_chunk_size": 16, "loss_vocab_chunk_size": 64},
                                    {"activation_checkpointing": "full", "mlp_chunks": 2, "loss_chunk_size": 16,
                                     "late_head_grad": True}])
def test_bf16_weights_compute_in_fp32(memory):
    """bf16 matrices computed in fp32 give the fp32 model's results on the same (bf16-rounded) weights."""
    low = tiny(precision="bf16-weights", **memory)
    assert {p.dtype for p in low.parameters() if p.dim() >= 2} == {torch.bfloat16}
    assert {p.dtype for p in low.parameters() if p.dim() < 2} == {torch.float32}
    ref = tiny(loss_chunk_size=0)
    ref.load_state_dict({k: v.float() for k, v in low.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 300, (2, 32), generator=g), torch.randint(0, 300, (2, 32), generator=g)
    losses = []
    for model in (low, ref):
        loss = model.loss(model(x), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    grads = dict(ref.named_parameters())
    for name, p in low.named_parameters():
        assert p.grad.dtype == p.dtype
        torch.testing.assert_close(p.grad.float(), grads[name].grad, rtol=2e-2, atol=1e-4, msg=name)


def trained(steps: int = 4, **memory) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig.model_validate({"batch_size": 4, "grad_clip": 0.0, "weight_decay": 0.1, "lr": 1e-2,
                                      "memory_sample_steps": [], "memory": memory})
    train_step = TrainStep(model, cfg, CPU)
    g = torch.Generator().manual_seed(3)
    for step in range(1, steps + 1):
        batch = torch.randint(0, 300, (4, 32), generator=g), torch.randint(0, 300, (4, 32), generator=g)
        train_step(step, lambda n: batch)
    return {name: p.detach().float().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("optimizer", ["adam-mini", "muon"])
def test_per_parameter_optimizers_step_alike_in_backward(optimizer):
    common = {"optimizer": optimizer, "loss_chunk_size": 16}
    after = trained(**common)
    in_backward = trained(**common, optimizer_in_backward=True)
    before = trained(0, **common)
    assert not torch.equal(after["blocks.0.attn.c_attn.weight"], before["blocks.0.attn.c_attn.weight"])
    for name, weight in after.items():
        torch.testing.assert_close(in_backward[name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_adam_mini_keeps_one_second_moment_per_row():
    p = torch.nn.Parameter(torch.randn(64, 32))
    opt = AdamMini([p], lr=1e-3)
    p.grad = torch.randn(64, 32)
    opt.step()
    state = opt.state[p]
    assert state["block_sq"].shape == (64,)
    torch.testing.assert_close(state["block_sq"], 0.001 * p.grad.pow(2).mean(dim=1))


def test_muon_steps_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig.model_validate({"batch_size": 2, "grad_clip": 0.0, "memory_sample_steps": [],
                                      "memory": {"optimizer": "muon"}})
    train_step = TrainStep(model, cfg, CPU)
    batch = torch.randint(0, 300, (2, 32)), torch.randint(0, 300, (2, 32))
    train_step(1, lambda n: batch)
    state = train_step.optimizer.state
    for name, p in model.named_parameters():
        expected = {"momentum_buffer"} if name.startswith("blocks.") and p.dim() == 2 else {"exp_avg", "exp_avg_sq",
                                                                                             "step"}
        assert set(state[p]) == expected, name


@pytest.mark.parametrize("memory, match", [
    ({"precision": "bf16-weights", "bf16_rounding": "kahan", "optimizer": "adamw8bit"}, "compensation buffer"),
    ({"precision": "bf16-weights", "optimizer": "muon"}, "drops small updates"),
    ({"precision": "bf16-weights", "optimizer_in_backward": True, "split_head_step": True}, "use late_head_grad"),
])
def test_low_precision_combinations_that_cannot_work_are_refused(memory, match):
    with pytest.raises(TechniqueError, match=match):
        check(TrainConfig.model_validate({"grad_clip": 0.0, "memory": memory}), CPU)


def test_low_bit_adamw_states_stay_within_their_quantization_error_of_adamw():
    torchao_optim = pytest.importorskip("torchao.optim")
    torch.manual_seed(0)
    start = torch.randn(64, 128) * 0.02
    grads = [torch.randn(64, 128) * (i + 1) * 1e-2 for i in range(4)]

    def run(make) -> tuple[torch.Tensor, dict]:
        p = torch.nn.Parameter(start.clone())
        opt = make([p])
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        return p.detach(), opt.state[p]

    ref_weight, ref_state = run(lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.95)))
    # Block-wise absmax quantization, the moments quantized again at every step: 8-bit dynamic-tree codes
    # keep about 2 decimal digits of a block's largest value; 4-bit codes (16 levels) about one level in 8,
    # so four requantizations stay within a quarter of it.
    for name, rel in (("AdamW8bit", 0.02), ("AdamW4bit", 0.25)):
        weight, state = run(lambda ps: getattr(torchao_optim, name)(ps, lr=1e-3, betas=(0.9, 0.95)))
        for key in ("exp_avg", "exp_avg_sq"):
            low, ref = state[key].dequantize().float(), ref_state[key]
            assert (low - ref).abs().max().item() <= rel * ref.abs().max().item(), (name, key)
        # The weights moved by 4 steps of lr 1e-3 at most: what quantization changes is a fraction of that.
        assert (weight - ref_weight).abs().max().item() <= 4e-3 * (rel * 10)


# Each case compiles torchao's step for two shapes (about 15 s here): both subclasses, both weight dtypes.
@pytest.mark.parametrize(("name", "dtype"), [("AdamW8bit", torch.float32), ("AdamW4bit", torch.bfloat16)])
def test_a_low_bit_step_in_slices_is_torchaos_whole_step(name, dtype, monkeypatch):
    """Slices of whole quantization blocks: the same codes, scales and weights as torchao's own step over
    the whole weight."""
    import model.lowbit as lowbit

    torchao_optim = pytest.importorskip("torchao.optim")
    monkeypatch.setattr(lowbit, "SLICE", 16 * 256)  # 4 slices of 16 rows for a 64 x 256 weight
    torch.manual_seed(0)
    start = (torch.randn(64, 256) * 0.02).to(dtype)  # bf16: torchao's states take the weight's dtype
    grads = [(torch.randn(64, 256) * (i + 1) * 1e-2).to(dtype) for i in range(3)]

    def run(optimizer_class) -> tuple[torch.Tensor, dict]:
        p = torch.nn.Parameter(start.clone())
        opt = optimizer_class([p], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        for grad in grads:
            p.grad = grad.clone()
            opt.step()
        return p.detach(), opt.state[p]

    whole = getattr(torchao_optim, name)([torch.nn.Parameter(start)])
    assert lowbit._rows_per_slice(start, whole._new_buffer(start, True), whole.block_size) == 16
    (weight, state), (ref_weight, ref_state) = run(lowbit.sliced_low_bit_adamw(name)), run(getattr(torchao_optim, name))
    assert torch.equal(weight, ref_weight)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key].codes, ref_state[key].codes) and torch.equal(state[key].scale, ref_state[key].scale)


@pytest.mark.parametrize("memory", [{"precision": "bf16-true"}, {"precision": "bf16-weights"},
                                    {"optimizer": "adamw8bit"}, {"optimizer": "adamw-fp8"}, {"optimizer": "muon"},
                                    {"optimizer": "adafactor"}])
def test_switches_not_written_for_sharded_weights_are_refused_under_fsdp(memory):
    from model.techniques import check_distributed

    cfg = TrainConfig(memory=memory, distributed={"strategy": "fsdp", "nproc_per_node": 2}, batch_size=8,
                      grad_clip=0.0)
    with pytest.raises(TechniqueError, match="strategy fsdp"):
        check_distributed(cfg, torch.device("cpu"))
    ddp = cfg.model_copy(update={"distributed": cfg.distributed.model_copy(update={"strategy": "ddp"})})
    # adamw8bit's quantized moments: no sharded checkpoint for them (adamw-fp8's are plain tensors, and
    # every rank rounds its replica with the same bits)
    if memory.get("optimizer") == "adamw8bit":
        with pytest.raises(TechniqueError, match="strategy ddp"):
            check_distributed(ddp, torch.device("cpu"))
    else:
        check_distributed(ddp, torch.device("cpu"))



def test_a_resumed_bf16_adamw_keeps_its_fp32_moments():
    p = torch.nn.Parameter(torch.ones(8, 8, dtype=torch.bfloat16))
    opt = AdamWBF16([p], lr=1e-3)
    p.grad = torch.full((8, 8), 1e-3, dtype=torch.bfloat16)
    opt.step()
    resumed = AdamWBF16([p], lr=1e-3)
    resumed.load_state_dict(opt.state_dict())  # torch's own load would cast the moments to the weight's bf16
    for key in ("exp_avg", "exp_avg_sq"):
        assert resumed.state[p][key].dtype == torch.float32
        assert torch.equal(resumed.state[p][key], opt.state[p][key])
