"""Inference weights: half precision, or weight-only int8 where every Linear and the (tied) token embedding
keep int8 weights with one fp32 scale per output row and activations stay in floating point (about a
quarter of the fp32 weight memory)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.gpt import TiedHeadLM


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: weight ≈ q * scale[:, None]."""
    scale = weight.detach().abs().amax(dim=1).clamp(min=1e-8).float() / 127
    q = torch.round(weight.detach().float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


# Measured on a 2-core CPU: the int8 kernel takes 1.5 ms for one row of a 8192x256 head, and 5 s for 2048.
_INT8_KERNEL_MAX_ROWS = 16


class Int8Linear(nn.Module):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*quantize_rows(linear.weight), linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.numel() // shape[-1]
        if x.device.type == "cpu" and x.dtype == torch.float32 and rows <= _INT8_KERNEL_MAX_ROWS:
            # PyTorch's int8 weight-only kernel: no dequantized copy of the weight is made. Fast for
            # decoding's few rows; for long inputs dequantizing once and multiplying is far faster.
            y = torch._weight_int8pack_mm(x.reshape(rows, shape[-1]).contiguous(), self.q, self.scale)
            y = y.reshape(*shape[:-1], -1)
        else:
            y = F.linear(x, self.q.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias


class Int8Embedding(nn.Module):
    """Rows are dequantized only for the tokens looked up."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.q[idx].float() * self.scale[idx, None]


class Int8Recurrent(nn.Module):
    """A one-layer, batch-first nn.RNN (ReLU or tanh), nn.GRU or nn.LSTM with int8 weights: the input
    projection runs over all steps at once, the recurrent one step by step, with PyTorch's gate equations."""

    def __init__(self, rnn: nn.RNNBase):
        super().__init__()
        if rnn.num_layers != 1 or rnn.bidirectional or not rnn.batch_first or rnn.proj_size:
            raise ValueError("int8 supports one-layer, one-way, batch-first recurrent layers")
        self.mode = rnn.mode  # "RNN_RELU", "RNN_TANH", "GRU" or "LSTM"
        self.ih = Int8Linear(*quantize_rows(rnn.weight_ih_l0), getattr(rnn, "bias_ih_l0", None))
        self.hh = Int8Linear(*quantize_rows(rnn.weight_hh_l0), getattr(rnn, "bias_hh_l0", None))

    def forward(self, x: torch.Tensor, state=None):
        B, T, C = x.shape
        if state is None:
            zeros = x.new_zeros(1, B, C)
            state = (zeros, zeros) if self.mode == "LSTM" else zeros
        h, c = state if self.mode == "LSTM" else (state, None)
        h, c = h[0], (c[0] if c is not None else None)
        inputs = self.ih(x)
        outputs = []
        for t in range(T):
            gi, gh = inputs[:, t], self.hh(h)
            if self.mode == "GRU":
                (ir, iz, i_n), (hr, hz, hn) = gi.chunk(3, dim=-1), gh.chunk(3, dim=-1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                h = (1 - z) * torch.tanh(i_n + r * hn) + z * h
            elif self.mode == "LSTM":
                i, f, g, o = (gi + gh).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h = torch.relu(gi + gh) if self.mode == "RNN_RELU" else torch.tanh(gi + gh)
            outputs.append(h)
        state = (h[None], c[None]) if self.mode == "LSTM" else h[None]
        return torch.stack(outputs, dim=1), state


def quantize_int8(model: TiedHeadLM) -> TiedHeadLM:
    """Quantize `model` (the GPT or the RNN) in place for inference: the tied embedding and head share one
    int8 table; every Linear and recurrent layer keeps int8 weights; norms and biases stay as they are."""
    model.eval()
    table = quantize_rows(model.wte.weight)
    model.wte = Int8Embedding(*table)
    model.lm_head = Int8Linear(*table)
    model.loss_chunk_size = 0  # the chunked loss needs a float head weight
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.RNNBase):
                setattr(parent, name, Int8Recurrent(child))
            elif isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return model


INFERENCE_WEIGHTS = ("fp32", "fp16", "bf16", "int8")


def inference_weights(model: nn.Module, kind: str) -> nn.Module:
    """`model` (in place) with its weights as `kind` for generation.

    Decoding one token reads every weight once, so on a CPU it is bound by memory traffic: fp16 weights
    decode about 2.5x faster than fp32 with the KV cache here. Long inputs (a prompt, a recomputed prefix)
    are bound by arithmetic instead, and fp16 matrix multiplies are slow on a CPU without fp16 units."""
    if kind not in INFERENCE_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(INFERENCE_WEIGHTS)}, got {kind!r}")
    model.eval()
    if kind == "int8":
        return quantize_int8(model)
    return model.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[kind])


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers, a shared tensor counted once."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())
