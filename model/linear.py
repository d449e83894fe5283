"""A Linear layer whose inference on a CPU reads its weight at the memory's speed.

Decoding multiplies a few rows by every weight matrix, so it is bound by reading the weights. On the
2-core AMD machines this project runs on, PyTorch's fp32 `F.linear` reads a 20 MiB model's weights at
about 9 GB/s when they are not already in cache (MKL's matrix-vector path); the same product as a
`torch.bmm` over the weight's two halves of rows, with the input broadcast (a stride-0 batch), goes to
MKL's strided batch GEMM and reads them at about 50 GB/s with 2 threads (about 30 with 1). Measured for
1 to 128 rows (`bench/generate.py`, the README); at 2,048 rows (evaluation's batches) both run alike and
the plain path is kept. Training is unchanged: with gradients on, this is `nn.Linear`.

A weight stored in a narrower float than its input (bf16 weights computed in fp32, model/lowbit.py) is cast
to the input's dtype as the layer runs, and cast again in backward: autograd would keep the fp32 copy from
forward to backward, 4 bytes a weight for every layer whose backward is still to come (within a recomputed
block, all of its layers at once), where the bf16 weight itself costs nothing more.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SPLIT = 2
MAX_ROWS = 256


class WidenedWeightLinear(torch.autograd.Function):
    """`F.linear(x, weight.float(), bias)` that saves the narrow weight, not its fp32 copy. The same
    products as autograd's: the input's gradient from the fp32 weight, the weight's made in fp32 and
    rounded to its dtype once."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(x, weight.to(x.dtype), bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)  # an output made under autocast: its gradient in the input's dtype
        rows = grad.reshape(-1, grad.size(-1))
        grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (rows.T @ x.reshape(-1, x.size(-1))).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0).to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype is torch.bfloat16 and x.dtype is torch.float32:
            if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
                return WidenedWeightLinear.apply(x, weight, self.bias)
            return F.linear(x, weight.float(), self.bias)
        out_features, in_features = weight.shape
        rows = x.numel() // in_features
        if (torch.is_grad_enabled() or not x.is_cpu or x.dtype is not torch.float32
                or weight.dtype is not torch.float32 or not (x.is_contiguous() and weight.is_contiguous())
                or rows > MAX_ROWS or out_features % SPLIT):
            return F.linear(x, weight, self.bias)
        # The rows as columns, the same for each part of the weight (a stride-0 batch), so that PyTorch
        # hands the product to MKL's strided batch GEMM. Decoding is sensitive to each operator's
        # overhead, hence one as_strided rather than reshape, transpose and expand.
        columns = x.as_strided((SPLIT, in_features, rows), (0, 1, in_features))
        y = torch.bmm(weight.view(SPLIT, out_features // SPLIT, in_features), columns)
        if rows > 1:  # (SPLIT, out/SPLIT, rows) -> (rows, out); with one row it is already in order
            y = y.permute(2, 0, 1)
        shape = list(x.shape)
        shape[-1] = out_features
        y = y.reshape(shape)
        return y if self.bias is None else y + self.bias
