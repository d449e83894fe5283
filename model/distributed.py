"""Training across processes: a torchrun worker's process group, and the model replicated (DDP) or
sharded (FSDP2) over it, the way torchtitan does it: `fully_shard` on every block, then on the root.

One process (strategy none) goes through the same calls, which then do nothing; the training loop in
model/train.py stays one loop for every world size."""
from __future__ import annotations

import contextlib
import gc
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from model.config import DistributedConfig, MemoryConfig


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job."""

    strategy: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.strategy != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start(cfg: DistributedConfig, device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun set up in the environment; returns this rank and its device."""
    if cfg.strategy == "none":
        return Ranks(), device
    if "RANK" not in os.environ:
        raise RuntimeError(f"train.distributed.strategy {cfg.strategy} runs under torchrun: start it with "
                           "`memlm train` (which launches torchrun), or set strategy: none")
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(cfg, device.type), timeout=timedelta(minutes=10))
    return Ranks(cfg.strategy, dist.get_rank(), dist.get_world_size(), local_rank), device


def backend_for(cfg: DistributedConfig, device_type: str) -> str:
    return cfg.backend if cfg.backend != "auto" else ("nccl" if device_type == "cuda" else "gloo")


def stop(ranks: Ranks) -> None:
    """Leave the process group. The caller drops its model and optimizer first: gloo's DDP hangs at exit
    in about half the runs when the reducer is freed after the group (FIELD-NOTES: barrier, free, collect)."""
    if not ranks.distributed or not dist.is_initialized():
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def parallelize(model: nn.Module, cfg: DistributedConfig, mem: MemoryConfig, device: torch.device,
                mesh=None) -> nn.Module:
    """Shard `model` in place (fsdp) or wrap it (ddp); returns the module whose forward trains it.

    DDP's gradients are views into its all-reduce buckets (no second copy of every gradient). `mesh`: the
    fsdp device mesh, made by the caller (the planner's, outside fake tensors); default: every rank."""
    if cfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       gradient_as_bucket_view=True)
    if cfg.strategy == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        compute_dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(mem.precision)
        # Gathered weights in the autocast dtype (half the all-gather), gradients reduced in fp32.
        precision = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
            if compute_dtype else MixedPrecisionPolicy()
        offload = CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy()
        sharded = []
        for block in getattr(model, "blocks", ()):
            sharded.append(fully_shard(block, mesh=mesh, reshard_after_forward=cfg.reshard_after_forward,
                                       mp_policy=precision, offload_policy=offload))
        # The root holds the tied embedding/head weight, position embeddings and final norm. It stays
        # gathered from its forward through backward: the loss, outside any forward, needs the head right
        # after (and in validation, where FSDP would otherwise reshard it as forward ends).
        sharded.append(fully_shard(model, mesh=mesh, reshard_after_forward=False, mp_policy=precision,
                                   offload_policy=offload))
        # On CPU only: on a GPU, FSDP2 keeps the buffers these free early for its streams' sake. (The
        # planner's fake process group plays the job's backend, which it sets in `cfg`.)
        if backend_for(cfg, device.type) == "gloo" and device.type == "cpu":
            for module in sharded:
                module.set_custom_reduce_scatter(InPlaceReduceScatter())
                module.set_custom_all_gather(InPlaceAllGather())
                # These collectives are synchronous: gathering the next block in backward before it runs
                # (FSDP2's default prefetch) would overlap nothing and hold its weights one block early.
                # A module told to prefetch the root, gathered from forward through backward, prefetches
                # nothing.
                module.set_modules_to_backward_prefetch([model])
    return model


class _PlainBuffers:
    """FSDP2's communication interface, its first part: the buffers a collective works in, plain tensors."""

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)


class InPlaceReduceScatter(_PlainBuffers):
    """FSDP2's gradient reduce-scatter over gloo, without gloo's copy of its input.

    Gloo's reduce-scatter clones the whole input (a block's flat gradients), all-reduces the clone on its
    worker thread and frees it there: a second copy of the block's gradients, held for as long as the
    collective runs, whose free the profiler (and so the memory report) does not see. All-reducing FSDP's
    input buffer in place moves the same bytes (gloo's reduce-scatter is an all-reduce) without the copy;
    FSDP does not read that buffer again. FSDP2's `ReduceScatter` interface: allocate, then call."""

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group, op) -> None:
        dist.all_reduce(input_tensor, op=op, group=group)
        output_tensor.copy_(input_tensor.view(dist.get_world_size(group), -1)[dist.get_rank(group)])
        # FSDP keeps the input until the next block's reduce, so that a GPU stream still reading it does
        # not see it reused; this reduce is done with it, so its memory goes now, freed here (where the
        # memory report sees it) whoever still refers to the tensor.
        input_tensor.untyped_storage().resize_(0)


class InPlaceAllGather(_PlainBuffers):
    """FSDP2's weight all-gather over gloo, without gloo's buffers.

    Gloo's all-gather allocates two more output-sized buffers (one in the caller, one on its worker
    thread) and frees them where the profiler does not see it. FSDP copies this rank's shard into its
    slice of the output; with the other slices filled with -0.0, an in-place sum over the ranks is the
    all-gather (exact: x + -0.0 is x, -0.0 included), at twice the bytes on the wire and no buffer.
    FSDP2's `AllGather` interface: allocate, then call (synchronously: it returns no work to wait on)."""

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group,
                 async_op: bool = False) -> None:
        # `input_tensor` is this rank's slice of the output: FSDP copies the shard in place.
        rank = dist.get_rank(group)
        slices = output_tensor.view(dist.get_world_size(group), -1)
        nothing = -0.0 if output_tensor.is_floating_point() else 0
        for r in range(slices.size(0)):
            if r != rank:
                slices[r].fill_(nothing)
        _all_reduce_in_place(output_tensor, dist.ReduceOp.SUM, group)


def _all_reduce_in_place(tensor: torch.Tensor, op, group) -> None:
    """Gloo's all-reduce on `tensor`'s own memory, returning once gloo has let go of it.

    Gloo's finished work still refers to the tensor it reduced until its worker thread drops it, a moment
    after the caller returns; were that the last reference, the memory would be freed there, unseen by
    the memory report (FSDP frees the all-gather's output once copied out). So the work gets a view of
    its own, and the call waits until the view is gone."""
    storage = tensor.untyped_storage()
    holders = torch._C._storage_Use_Count(storage._cdata)
    view = tensor.view(-1)
    dist.all_reduce(view, op=op, group=group)
    del view
    deadline = time.monotonic() + 1.0
    while torch._C._storage_Use_Count(storage._cdata) > holders:
        if time.monotonic() > deadline:  # something else holds it too: its free may go unseen, no more
            warnings.warn("a gloo collective's tensor is still held 1 s after it finished: the memory report "
                          "may miss when it is freed", stacklevel=2)
            break
        time.sleep(1e-4)


def ddp_bucket_bytes(model: nn.Module) -> int:
    """What DDP's all-reduce buckets hold: every trainable parameter's gradient, allocated when it wraps the
    model (the gradients become views into them in the first backward; DDP makes them again, in the order
    backward made the gradients, in the second step)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def reshard(model: nn.Module, strategy: str) -> None:
    """After validation: free the root's gathered weights, which only a backward pass frees otherwise."""
    if strategy == "fsdp":
        model.reshard()


@contextlib.contextmanager
def gradient_sync(module: nn.Module, strategy: str, sync: bool) -> Iterator[None]:
    """Around a micro-batch's forward and backward: reduce gradients over the ranks only when `sync`
    (the last micro-batch of a step); before that they accumulate locally."""
    if strategy == "ddp" and not sync:
        with module.no_sync():
            yield
        return
    if strategy == "fsdp":
        module.set_requires_gradient_sync(sync)
    yield


def mean_over_ranks(value: float, ranks: Ranks, device: torch.device) -> float:
    if not ranks.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ranks.world_size


def max_over_ranks(value: float, ranks: Ranks, device: torch.device) -> float:
    if not ranks.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def replicas_that_differ(model: nn.Module, optimizer, ranks: Ranks) -> list[str]:
    """The parameters, and optimizer state tensors, whose copies differ from rank 0's under DDP, bit for bit.
    Each rank steps its own copy, so they stay equal only while every rank applies the same averaged
    gradient with the same random draws where updates are rounded stochastically (bf16 weights, fp8
    moments): every rank seeds its generators alike and draws in the same order. Under fsdp the ranks hold
    different shards: nothing to compare."""
    if ranks.strategy != "ddp":
        return []
    named = []
    states = getattr(optimizer, "state", {})  # a composite optimizer's is a property, built on each read
    for name, param in model.named_parameters():
        name = name.removeprefix("module.")
        named.append((name, param.detach()))
        # (AdamW keeps its step count on the CPU beside CUDA weights; NCCL sends only CUDA tensors.)
        named += [(f"{name} ({key})", value.detach().to(param.device))
                  for key, value in sorted(states.get(param, {}).items(), key=lambda kv: str(kv[0]))
                  if isinstance(value, torch.Tensor)]
    # Ranks whose tensors differ in number, dtype or size would send out of step: named from a gather first.
    layouts = gather_objects([[name, str(t.dtype), t.numel()] for name, t in named], ranks)
    if any(layout != layouts[0] for layout in layouts):
        entries = [{name: (dtype, numel) for name, dtype, numel in layout} for layout in layouts]
        return [name for name in sorted(set().union(*entries)) if len({e.get(name) for e in entries}) > 1]
    differs = torch.stack([_differs_from_rank_0(t, ranks) for _, t in named]).to(torch.int32)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    return [name for (name, _), flag in zip(named, differs.tolist()) if flag]


# The bytes sent at a time.
_COMPARE_SLICE = 1 << 20


def _differs_from_rank_0(t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Whether this rank's `t` differs from rank 0's in any bit (so -0.0 from 0.0, one NaN from another), as
    a flag on its device (not read back slice by slice): rank 0 broadcasts its bytes (a dtype every backend
    sends) a slice at a time, so that the others allocate one slice beside their own."""
    bits = t.contiguous().reshape(-1).view(torch.uint8)
    received = None if ranks.is_main else torch.empty(min(bits.numel(), _COMPARE_SLICE), dtype=bits.dtype,
                                                      device=bits.device)
    differs = torch.zeros((), dtype=torch.bool, device=bits.device)
    for start in range(0, bits.numel(), _COMPARE_SLICE):
        mine = bits[start:start + _COMPARE_SLICE]
        if ranks.is_main:
            dist.broadcast(mine, src=0)
        else:
            theirs = received[:mine.numel()]
            dist.broadcast(theirs, src=0)
            differs |= (theirs != mine).any()
    return differs


def gather_objects(obj, ranks: Ranks) -> list:
    """Every rank's `obj` (JSON-like), in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) value gathered whole; a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t
