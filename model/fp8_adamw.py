"""AdamW with its two moments in fp8: 2.03 bytes of state a weight instead of 8, in plain PyTorch operators
that run fast on any device (no compiled kernels, no code-table search).

Each moment is stored as float8 e4m3 codes with one fp32 scale per block of 256 elements (the block's
largest magnitude maps to e4m3's largest value, 448), like torchao's `AdamWFp8`; what differs:
- **Stochastic rounding of the codes.** An exponential moving average kept in a 3-bit mantissa can stall
  under rounding to nearest: with beta2 = 0.95 a step moves the second moment down by at most 5% (its
  root by 2.5%), less than half an e4m3 step (3-6%), so where a block's scale holds still (its largest
  element steady) the others' codes never move down. Rounding up with the probability of the remainder
  keeps each stored value (the first moment, the second moment's root) right in expectation, as
  stochastic rounding does for bf16 weights (model/lowbit.py); its errors are noise of about a third of a
  code step (the second moment, the root squared, comes out high by the root's rounding variance: well
  under 1%).
- **The second moment as its square root**, the quantity the step divides by: half the dynamic range
  in powers of two, so a block whose largest second moment is 10^10 times its smallest still keeps
  them apart. Codes never round a nonzero root down to zero (they are floored at e4m3's smallest
  subnormal): dividing a first moment by a root that quantization zeroed would make an update of
  first moment / eps.
- The math is done a slice of SLICE elements at a time (fp32 temporaries of 1 MiB each), so stepping the
  reference config's 16,384 x 384 embedding needs no weight-sized buffer.
- Speed on CPU, where two things dominated a first version's step (0.3 s for the reference config's
  17 M weights, against 0.012 s for fused fp32 AdamW; 0.1 s now): PyTorch's fp8-to-fp32 cast is scalar
  (1.6 ns an element; decoded here with integer operators, 0.35-0.6 ns), and `torch.randint` draws
  about 4 ns an element (see new_random_pool).
Weights that are small (under MIN_QUANTIZED elements) or not whole blocks keep fp32 moments, as torchao
does for small weights: their state is a few KiB. bf16 weights take the fp32 update by stochastic
rounding, fp32 weights exactly.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from model.lowbit import SLICE, KeepsStateDtypes, adamw_step_factors, add_decayed_update_

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest finite value
FP8_SMALLEST = 2.0 ** -9  # its smallest subnormal: the floor of a nonzero root's code
DROPPED_BITS = 20  # fp32's 23 mantissa bits less e4m3's 3
# An e4m3 code's exponent and mantissa bits, moved to where fp32 keeps them, read as an fp32 2^120 times too
# small (the exponent biases are 7 and 127); e4m3's subnormals become fp32 subnormals, just as exactly.
REBIAS = 2.0 ** 120
BLOCK = 256
MIN_QUANTIZED = 4096


def new_random_pool(device: torch.device | str) -> torch.Tensor:
    """Random integers below 2^20 that `random_bits` reads from (SLICE + 2^16 of them: 1.25 MiB).

    `torch.randint` on CPU makes about 4 ns an element (mt19937, one thread): drawing every rounding's
    bits afresh was 60% of this optimizer's step. A pool is drawn once from the global generator (so
    `torch.manual_seed` fixes it), shared by a run's per-parameter optimizers, and read at a fresh random
    offset XOR-ed with a fresh random word: every value is uniform and the values of one read are
    independent; two reads reuse pool entries only as XOR-ed with different words."""
    return torch.randint(0, 1 << DROPPED_BITS, (SLICE + (1 << 16),), dtype=torch.int32, device=device)


def random_bits(pool: torch.Tensor, n: int) -> torch.Tensor:
    """`n` uniform random integers below 2^20 from `pool` (see new_random_pool)."""
    offset, word = torch.randint(0, 1 << DROPPED_BITS, (2,)).tolist()
    offset %= pool.numel() - n + 1
    return pool[offset:offset + n].bitwise_xor(word)


def quantize_fp8_(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, noise: torch.Tensor,
                  floor: float = 0.0) -> None:
    """Write the fp32 `x` (whole blocks) as e4m3 `codes` and per-block `scales`, stochastically rounded: each
    code is the scaled value in expectation. `x` is overwritten. Values under `floor` (in code units) are
    raised to it. `noise`: random integers below 2^20, one per element."""
    blocks = x.view(-1, BLOCK)
    torch.amax(blocks.abs(), dim=1, out=scales)
    scales.clamp_(min=1e-30).div_(FP8_MAX)
    blocks.div_(scales.unsqueeze(1)).clamp_(-FP8_MAX, FP8_MAX)
    if floor:
        blocks.clamp_(min=floor)
    # Adding random low bits and cutting them off rounds up with the probability of the remainder: exact
    # for e4m3's normal range, where its codes are fp32 values with 20 more mantissa bits zero; below it
    # (under 2^-6 of a code, 1/28,000 of the block's largest) the cast then rounds to nearest.
    bits = x.view(torch.int32)
    bits.add_(noise).bitwise_and_(-(1 << DROPPED_BITS))
    codes.copy_(x.clamp_(-FP8_MAX, FP8_MAX))


def dequantize_fp8(codes: torch.Tensor, scales: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """The fp32 values of e4m3 `codes` with per-block `scales` (a new tensor); `signed` False for codes known
    to be non-negative (one operator fewer)."""
    byte = codes.view(torch.uint8).to(torch.int32)
    bits = byte.bitwise_and(0x7F).bitwise_left_shift_(DROPPED_BITS)
    if signed:
        bits.bitwise_or_(byte.bitwise_and_(0x80).bitwise_left_shift_(24))
    # Rebiased first (exact), then scaled: scales times 2^120 would overflow fp32 from a scale of 256 on.
    values = bits.view(torch.float32).mul_(REBIAS)
    values.view(-1, BLOCK).mul_(scales.unsqueeze(1))
    return values


def quantized(p: torch.Tensor) -> bool:
    """Whether `p`'s moments are stored in fp8 (else fp32)."""
    return p.numel() >= MIN_QUANTIZED and p.numel() % BLOCK == 0


class AdamWFp8(KeepsStateDtypes, torch.optim.Optimizer):
    """AdamW whose first moment and second moment's root are fp8 with a scale per 256 elements.
    `random_pool`: the rounding's random bits (new_random_pool), one for all of a model's optimizers."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bf16_stochastic_round: bool = True,
                 random_pool: torch.Tensor | None = None):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.bf16_stochastic_round = bf16_stochastic_round
        self.random_pool = random_pool if random_pool is not None else \
            new_random_pool(self.param_groups[0]["params"][0].device)

    def _init_state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            if quantized(p):
                blocks = p.numel() // BLOCK
                state["exp_avg"] = torch.zeros(p.numel(), dtype=FP8, device=p.device)
                state["exp_avg_scale"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
                state["exp_avg_sq_root"] = torch.zeros(p.numel(), dtype=FP8, device=p.device)
                state["exp_avg_sq_root_scale"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)
            else:
                state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        return state

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._init_state(p)
                decay, step_size, bias2 = adamw_step_factors(state, group)
                root_bias2 = bias2**0.5
                in_fp8 = "exp_avg_scale" in state
                w_all, g_all = p.view(-1), p.grad.view(-1)
                for start in range(0, p.numel(), SLICE):
                    end = min(start + SLICE, p.numel())
                    g = g_all[start:end].float()
                    if in_fp8:
                        m = dequantize_fp8(state["exp_avg"][start:end], self._scales(state, "exp_avg", start, end))
                        root = dequantize_fp8(state["exp_avg_sq_root"][start:end],
                                              self._scales(state, "exp_avg_sq_root", start, end), signed=False)
                        v = root.square_()
                    else:
                        m, v = state["exp_avg"].view(-1)[start:end], state["exp_avg_sq"].view(-1)[start:end]
                    m.lerp_(g, 1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    root = v.sqrt_() if in_fp8 else v.sqrt()
                    update = torch.div(root, root_bias2).add_(group["eps"])
                    torch.div(m, update, out=update).mul_(-step_size)
                    w = w_all[start:end]
                    stochastic = self.bf16_stochastic_round and w.dtype != torch.float32
                    add_decayed_update_(w, update, decay, stochastic, self._noise(w.numel()) if stochastic else None)
                    if in_fp8:
                        quantize_fp8_(m, state["exp_avg"][start:end], self._scales(state, "exp_avg", start, end),
                                      self._noise(m.numel()))
                        quantize_fp8_(root, state["exp_avg_sq_root"][start:end],
                                      self._scales(state, "exp_avg_sq_root", start, end), self._noise(root.numel()),
                                      floor=FP8_SMALLEST)
        return loss

    def _noise(self, n: int) -> torch.Tensor:
        return random_bits(self.random_pool, n)

    @staticmethod
    def _scales(state: dict, name: str, start: int, end: int) -> torch.Tensor:
        """The scales of the blocks of elements start..end of moment `name` (a view)."""
        return state[f"{name}_scale"][start // BLOCK:end // BLOCK]
