"""model.linear.Linear: the same results as nn.Linear, through the batched product when inferring on a CPU."""
import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from model.linear import Linear


def operators(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 48), (3, 5, 48), (256, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_plain_linear_under_inference(shape, bias):
    torch.manual_seed(0)
    layer = Linear(48, 96, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        y = layer(x)
        used = operators(lambda: layer(x))
    assert y.shape == (*shape[:-1], 96)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert "aten::bmm" in used


def test_falls_back_where_the_batched_product_does_not_apply():
    torch.manual_seed(0)
    odd = Linear(48, 95)
    x = torch.randn(2, 48)
    wide = torch.randn(2, 300, 48)  # more rows than the batched product is measured to help
    strided = torch.randn(48, 4).t()  # not contiguous
    with torch.no_grad():
        for layer, inputs in ((odd, x), (Linear(48, 96), wide), (Linear(48, 96), strided)):
            assert "aten::bmm" not in operators(lambda: layer(inputs))
            torch.testing.assert_close(layer(inputs), F.linear(inputs, layer.weight, layer.bias))


def test_training_is_plain_linear_with_gradients():
    torch.manual_seed(0)
    layer = Linear(48, 96)
    x = torch.randn(1, 48, requires_grad=True)
    assert "aten::bmm" not in operators(lambda: layer(x))
    layer(x).square().sum().backward()
    reference = torch.nn.Linear(48, 96)
    reference.load_state_dict(layer.state_dict())
    x2 = x.detach().clone().requires_grad_()
    reference(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 48), (7, 48)])
def test_a_bf16_weight_keeps_no_fp32_copy_for_backward_and_gets_autograds_gradients(shape, bias):
    """bf16 weights computed in fp32: between forward and backward only the bf16 weight is kept, and
    every gradient is bit for bit what autograd gives through `weight.float()`."""
    torch.manual_seed(0)
    layer = Linear(48, 96, bias=bias)
    layer.weight.data = layer.weight.data.bfloat16()
    x = torch.randn(shape, requires_grad=True)
    grad = torch.randn(*shape[:-1], 96)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1], lambda t: t):
        layer(x).backward(grad)
    # (autograd would save the fp32 copy transposed: matched by size, not shape)
    assert not any(t.dtype is torch.float32 and t.numel() == layer.weight.numel() for t in saved)
    assert any(t.dtype is torch.bfloat16 and t.numel() == layer.weight.numel() for t in saved)

    weight = layer.weight.detach().clone().requires_grad_()
    reference_bias = None if layer.bias is None else layer.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    F.linear(x2, weight.float(), reference_bias).backward(grad)
    assert torch.equal(x.grad, x2.grad) and torch.equal(layer.weight.grad, weight.grad)
    assert layer.weight.grad.dtype is torch.bfloat16
    if bias:
        assert torch.equal(layer.bias.grad, reference_bias.grad)
