"""memlm's AdamW with fp8 moments: unbiased codes, a second moment that follows the gradient down and
never rounds to zero, steps within fp8's error of AdamW's, and a state that checkpoints without pickle."""
from __future__ import annotations

import pytest
import torch

from model.fp8_adamw import BLOCK, FP8, AdamWFp8, dequantize_fp8, new_random_pool, quantize_fp8_, random_bits
from model.lowbit import SLICE
from model.safe_state import load_state, save_state
from tests.test_lowbit import trained


def fp8_round_trip(x: torch.Tensor, floor: float = 0.0, seed: int = 0) -> torch.Tensor:
    codes = torch.empty(x.numel(), dtype=FP8)
    scales = torch.empty(x.numel() // BLOCK)
    noise = torch.randint(0, 1 << 20, (x.numel(),), dtype=torch.int32, generator=torch.Generator().manual_seed(seed))
    quantize_fp8_(x.clone().view(-1), codes, scales, noise, floor)
    return dequantize_fp8(codes, scales)


def test_fp8_codes_are_unbiased_where_nearest_rounding_is_not():
    # Blocks whose largest value is 448 (scale 1); the rest 1 + 0.3 of e4m3's step at 1 (1/8).
    x = torch.full((1000, BLOCK), 1 + 0.3 / 8)
    x[:, 0] = 448.0
    rounded = fp8_round_trip(x).view(1000, BLOCK)[:, 1:]
    assert set(rounded.unique().tolist()) == {1.0, 1.125}
    assert rounded.mean().item() == pytest.approx(1 + 0.3 / 8, abs=0.01 / 8)
    assert x[:, 1:].to(FP8).float().mean().item() == 1.0  # nearest rounding: the remainder always lost
    negative = fp8_round_trip(-x, seed=1).view(1000, BLOCK)[:, 1:]
    assert negative.mean().item() == pytest.approx(-(1 + 0.3 / 8), abs=0.01 / 8)


def test_fp8_codes_stay_within_one_e4m3_step_of_each_value():
    x = torch.randn(64, BLOCK) * torch.logspace(-3, 3, 64).unsqueeze(1)
    back = fp8_round_trip(x).view_as(x)
    # Where a value is at least 2^-6 of e4m3's range (normal codes), one step is an eighth of it at most.
    scale = x.abs().amax(dim=1, keepdim=True) / 448
    normal = x.abs() >= scale * 2.0**-6
    assert ((back - x).abs() <= x.abs() / 8 + 1e-12)[normal].all()


def test_a_nonzero_second_moment_root_never_becomes_zero():
    roots = torch.logspace(-8, 0, BLOCK)  # 1 to 10^-8: below e4m3's range relative to the block's largest
    back = fp8_round_trip(roots, floor=2.0**-9)
    assert (back > 0).all()
    assert (fp8_round_trip(roots) == 0).any()  # what the floor prevents


def adamw_pair(shape, lr=1e-3, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    start = torch.randn(*shape) * 0.02
    ours, ref = torch.nn.Parameter(start.clone().to(dtype)), torch.nn.Parameter(start.clone())
    return (ours, AdamWFp8([ours], lr=lr, betas=(0.9, 0.95), weight_decay=0.1),
            ref, torch.optim.AdamW([ref], lr=lr, betas=(0.9, 0.95), weight_decay=0.1))


def test_fp8_adamw_stays_within_its_quantization_error_of_adamw():
    ours, opt, ref, ref_opt = adamw_pair((64, 512))
    for i in range(20):
        grad = torch.randn(64, 512) * (1 + i % 3) * 1e-2
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    state, ref_state = opt.state[ours], ref_opt.state[ref]
    assert state["exp_avg"].dtype == FP8 and state["exp_avg"].numel() == ours.numel()
    m = dequantize_fp8(state["exp_avg"], state["exp_avg_scale"]).view_as(ref)
    root = dequantize_fp8(state["exp_avg_sq_root"], state["exp_avg_sq_root_scale"]).view_as(ref)
    # Each requantization errs by a third of an e4m3 step (1/16 to 1/8 of the value) on average, unbiased;
    # a moment remembers the errors of its last few requantizations (about 1 / (1 - beta^2) of them), so
    # it ends about 7% off AdamW's, element by element, and within 1% on average over all of them.
    for ours_moment, ref_moment in ((m, ref_state["exp_avg"]), (root, ref_state["exp_avg_sq"].sqrt())):
        assert (ours_moment - ref_moment).abs().mean() <= 0.1 * ref_moment.abs().mean()
        assert (ours_moment - ref_moment).mean().abs() <= 0.01 * ref_moment.abs().mean()
    # 20 steps of lr 1e-3 move a weight by up to 0.02; fp8 moments change that by 15% at most.
    assert (ours - ref).abs().max().item() <= 3e-3


def test_the_second_moment_follows_a_falling_gradient():
    # In each block one weight's gradient stays 1 (its root, the block's largest, fixes the scale); the
    # others' fall from 1 to 0.1 at step 20, so their second moment falls 100x, by at most 5% a step: its
    # root by at most 2.5%, under half an e4m3 step (3-6%). Rounded to nearest, the codes would never move.
    ours, opt, ref, ref_opt = adamw_pair((16, 512), lr=1e-4)
    grad = torch.ones(16, 512)
    for i in range(120):
        if i == 20:
            grad.view(-1, BLOCK)[:, 1:] = 0.1
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    state = opt.state[ours]
    root = dequantize_fp8(state["exp_avg_sq_root"], state["exp_avg_sq_root_scale"]).view(-1, BLOCK)[:, 1:]
    ref_root = ref_opt.state[ref]["exp_avg_sq"].sqrt().view(-1, BLOCK)[:, 1:]
    assert root.mean().item() == pytest.approx(ref_root.mean().item(), rel=0.05)


def test_small_weights_keep_fp32_moments_and_bf16_weights_are_rounded_stochastically():
    small = torch.nn.Parameter(torch.zeros(384))
    weight = torch.nn.Parameter(torch.ones(32, 256, dtype=torch.bfloat16))
    opt = AdamWFp8([small, weight], lr=1e-3)
    small.grad, weight.grad = torch.ones(384), torch.ones(32, 256, dtype=torch.bfloat16)
    opt.step()
    assert opt.state[small]["exp_avg"].dtype == torch.float32
    assert opt.state[weight]["exp_avg"].dtype == FP8
    # AdamW's first step moves every weight by lr: 1 - 1e-3 lies between bf16's 0.99609375 and 1.0.
    assert weight.dtype == torch.bfloat16
    assert set(weight.float().unique().tolist()) == {0.99609375, 1.0}
    assert weight.float().mean().item() == pytest.approx(1 - 1e-3, abs=2e-4)


def test_fp8_state_checkpoints_without_pickle_and_resumes(tmp_path):
    ours, opt, _, _ = adamw_pair((32, 256), dtype=torch.bfloat16)
    ours.grad = torch.randn(32, 256).to(torch.bfloat16)
    opt.step()
    save_state(opt.state_dict(), tmp_path / "optim.safetensors", tmp_path / "optim.json")
    loaded = load_state(tmp_path / "optim.safetensors", tmp_path / "optim.json")
    for key, value in opt.state_dict()["state"][0].items():
        assert loaded["state"][0][key].dtype == value.dtype and torch.equal(loaded["state"][0][key], value), key
    # From the files into a new optimizer, then one more step: as the optimizer that never stopped.
    copy = torch.nn.Parameter(ours.detach().clone())
    resumed = AdamWFp8([copy], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, random_pool=opt.random_pool)
    resumed.load_state_dict(loaded)
    grad = torch.randn(32, 256).to(torch.bfloat16)
    for p, optimizer in ((ours, opt), (copy, resumed)):
        p.grad = grad.clone()
        torch.manual_seed(5)
        optimizer.step()
    assert torch.equal(copy, ours)


def test_the_random_pool_gives_uniform_bits_that_round_without_bias():
    pool = new_random_pool("cpu")
    bits = torch.cat([random_bits(pool, SLICE) for _ in range(8)])
    assert bits.min().item() >= 0 and bits.max().item() < 1 << 20
    assert bits.float().mean().item() == pytest.approx((1 << 20) / 2, rel=0.01)
    # Stochastic rounding with them: the same as with freshly drawn bits, unbiased.
    x = torch.full((SLICE,), 1 + 0.3 / 8)
    x[::BLOCK] = 448.0
    codes, scales = torch.empty(SLICE, dtype=FP8), torch.empty(SLICE // BLOCK)
    quantize_fp8_(x.clone(), codes, scales, random_bits(pool, SLICE))
    rest = dequantize_fp8(codes, scales).view(-1, BLOCK)[:, 1:]
    assert rest.mean().item() == pytest.approx(1 + 0.3 / 8, abs=0.01 / 8)


@pytest.mark.parametrize("memory", [{}, {"precision": "bf16-weights", "optimizer_in_backward": True}])
def test_a_gpt_trains_with_fp8_adamw(memory):
    memory = {"optimizer": "adamw-fp8", "loss_chunk_size": 16, **memory}
    before, after = trained(0, **memory), trained(6, **memory)
    fp32 = trained(6, loss_chunk_size=16, optimizer_in_backward=bool(memory.get("optimizer_in_backward")))
    for name in ("wte.weight", "blocks.0.mlp.c_fc.weight"):
        moved, ref_moved = (after[name] - before[name]).norm(), (fp32[name] - before[name]).norm()
        # Six steps of AdamW at lr 1e-2: fp8 moments move each matrix as far as fp32 ones, within a tenth.
        assert moved.item() == pytest.approx(ref_moved.item(), rel=0.1), name


def test_the_memory_report_counts_the_fp8_state_and_its_random_pool():
    from model.config import TrainConfig
    from model.gpt import GPT, GPTConfig
    from model.step import TrainStep

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=64))
    cfg = TrainConfig.model_validate({"batch_size": 2, "grad_clip": 0.0, "memory_sample_steps": [2],
                                      "memory": {"optimizer": "adamw-fp8", "optimizer_in_backward": True,
                                                 "loss_chunk_size": 16}})
    train_step = TrainStep(model, cfg, torch.device("cpu"))
    batch = torch.randint(0, 512, (2, 32)), torch.randint(0, 512, (2, 32))
    for step in (1, 2):
        train_step(step, lambda n: batch)
    pools = {opt.random_pool.data_ptr() for opt in train_step.optimizer.optimizers.values()}
    assert len(pools) == 1  # one pool for all the per-parameter optimizers
    state = train_step.optimizer.state
    state_bytes = sum(t.untyped_storage().nbytes() for s in state.values() for t in s.values())
    pool = next(iter(train_step.optimizer.optimizers.values())).random_pool
    report = train_step.tracker.reports[-1]
    assert report.phases["optimizer"]["breakdown"]["optimizer_state"] == state_bytes + pool.untyped_storage().nbytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_resumed_fp8_adamw_steps_as_one_that_never_stopped(dtype):
    torch.manual_seed(0)
    start = (torch.randn(16, 512) * 0.02).to(dtype)
    grads = [torch.randn(16, 512).to(dtype) * 1e-2 for _ in range(3)]
    pool = torch.randint(0, 1 << 20, (1 << 19,), dtype=torch.int32)

    def optimizer(p):
        return AdamWFp8([p], lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, random_pool=pool)

    def step(opt, p, grad, seed):
        p.grad = grad.clone()
        torch.manual_seed(seed)
        opt.step()

    straight = torch.nn.Parameter(start.clone())
    opt = optimizer(straight)
    for i, grad in enumerate(grads):
        step(opt, straight, grad, i)

    stopped = torch.nn.Parameter(start.clone())
    first = optimizer(stopped)
    for i, grad in enumerate(grads[:2]):
        step(first, stopped, grad, i)
    resumed = optimizer(stopped)
    resumed.load_state_dict(first.state_dict())
    assert {k: v.dtype for k, v in resumed.state[stopped].items()} == \
        {k: v.dtype for k, v in first.state[stopped].items()}
    step(resumed, stopped, grads[2], 2)
    assert torch.equal(stopped, straight)


def test_huge_gradients_keep_the_weights_finite():
    # A block's largest moment far past e4m3's 448 (a scale over 256): decoding must not overflow fp32.
    ours, opt, ref, ref_opt = adamw_pair((16, 512))
    for spike in (2e7, 1.0, 1.0):
        grad = torch.ones(16, 512)
        grad[0, 0] = spike
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    assert torch.isfinite(ours).all()
    root = dequantize_fp8(opt.state[ours]["exp_avg_sq_root"], opt.state[ours]["exp_avg_sq_root_scale"], signed=False)
    ref_root = ref_opt.state[ref]["exp_avg_sq"].sqrt().view(-1)
    assert root[0].item() == pytest.approx(ref_root[0].item(), rel=1 / 8)  # 4.3e6: a scale of 9,700
