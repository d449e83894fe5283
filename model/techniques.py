"""The memory techniques of `train.memory`, applied to a model and its training loop.

Refused combinations, each with the reason given to the user:
- optimizer_in_backward with gradient accumulation: a parameter would be stepped after every micro-batch
  instead of once per batch.
- optimizer_in_backward with grad_clip > 0 and split_head_step (the head's gradient is stepped in two
  parts, outside the clip), or under fsdp (each rank would sum its own shards' norms). Elsewhere it runs,
  clipping each step by the previous step's global norm (model/optim.py), with a warning.
- update_clip without optimizer_in_backward (grad_clip is the clip there), with an optimizer other than
  adamw or adamw-fp8 (it reads AdamW's second moment), with split_head_step (the head's step is split
  by rows), or under fsdp (each rank would measure its own shard).
- optimizer_in_backward with fp16-mixed: the gradient scaler must unscale and check every gradient for
  overflow before any step.
- late_head_grad without the chunked loss (loss_chunk_size 0): it postpones that loss's head gradient.
- split_head_step without optimizer_in_backward, without the chunked loss, with an optimizer other than
  AdamW over fp32 weights (Adafactor's factored statistics span rows, so a row-wise split would change
  its step), or together with late_head_grad (both route the same gradient).
- fp16-mixed and activation_offload on CPU: they need CUDA.
- loss_vocab_chunk_size without the chunked loss: it tiles that loss's vocabulary.
- adamw8bit/adamw4bit without torchao installed; bf16_rounding kahan with an optimizer other than AdamW
  (the low-bit AdamWs round stochastically; the others have no compensation buffer); bf16 weights
  with adam-mini, muon or adafactor (their steps round to nearest and would drop small updates).
- bf16-weights for rnn-attention: its recurrent cells compute in their weights' dtype.
- for rnn-attention: selective checkpointing and mlp_chunks (it has no blocks and no MLP); its full
  checkpointing recomputes each recurrent layer over chunks of time steps.
bf16 modes on a CPU without native bf16 run, with a warning (about 10x slower than fp32 here).

Under train.distributed (ddp or fsdp) everything else composes: checkpointing, tiled MLP, the chunked
loss (under FSDP its head gradient, made in forward, lands on the tied weight's gathered copy and so
reaches the reduce-scatter; with late_head_grad it is made in the embedding lookup's backward, in the
tied weight's one gradient), accumulation (gradients reduced on the last micro-batch only), bf16 modes,
AdamW (and Adafactor under ddp). Refused there, before any rank starts (`check_distributed`):
- optimizer_in_backward under ddp: a parameter's hook sees the gradient before DDP all-reduces its bucket.
  Under fsdp it composes (with grad_clip 0): FSDP2 runs the sharded parameters' post-accumulate-grad hooks
  itself, right after the reduce-scatter, so each shard is stepped with the averaged gradient and freed.
- split_head_step (both strategies): it steps the head's rows with the gradient the chunked loss makes in
  forward, before the ranks' gradients are averaged.
- fsdp with fp16-mixed (the gradient scaler does not unscale sharded gradients; use bf16-mixed), with
  adafactor (torch.optim.Adafactor's step squares and scales its column statistics in place, which a
  sharded parameter's DTensor refuses: those statistics span the shards), and with
  adamw8bit/adamw4bit/adamw-fp8/adam-mini/muon (not verified over sharded parameters) and bf16-true/bf16-weights (the
  rounding step is not written for sharded weights); cpu_offload off CUDA.
- adamw8bit/adamw4bit under ddp too: the sharded checkpoint (DCP's safetensors writer) cannot write
  torchao's quantized moments, which are tensor subclasses. (adamw-fp8 and bf16 weights compose with ddp:
  each rank rounds its replica's updates with the same random bits, and the replicas are compared bit for
  bit at every checkpoint.)
- compile: torch.compile over a wrapped or sharded model is not wired (torchtitan compiles each block
  before sharding it).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from model.config import MemoryConfig, TrainConfig
from model.fp8_adamw import AdamWFp8, new_random_pool
from model.gpt import GPT, TiedHeadLM
from model.losses import LateHeadGrad
from model.lowbit import AdamWBF16, sliced_low_bit_adamw, store_matrices_in_bf16
from model.optim import OptimizerInBackward, SplitHeadStep
from model.optimizers import AdamMini, MuonWithAdamW
from model.rnn import RNNAttentionLM


class TechniqueError(ValueError):
    """A combination of memory techniques that cannot work; the message says why and what to change."""


def check_distributed(cfg: TrainConfig, device: torch.device) -> None:
    """Raise TechniqueError for a memory technique that does not compose with train.distributed."""
    strategy, mem = cfg.distributed.strategy, cfg.memory
    if strategy == "none":
        return
    where = f"train.distributed.strategy {strategy}"
    if mem.optimizer_in_backward and strategy == "ddp":
        switches = "optimizer_in_backward" + (" and split_head_step" if mem.split_head_step else "")
        raise TechniqueError(
            f"train.memory.{switches} cannot run with {where}: each parameter would be stepped with its own rank's "
            "gradient, before DDP all-reduces its bucket; turn them off, or use strategy fsdp (which steps each "
            "shard once its gradient is reduce-scattered)")
    if mem.split_head_step:
        raise TechniqueError(
            f"train.memory.split_head_step cannot run with {where}: it steps the head's rows with the gradient the "
            "chunked loss makes in forward, before FSDP reduce-scatters it over the ranks; turn it off "
            "(optimizer_in_backward alone, with grad_clip 0, composes with fsdp)")
    if mem.compile:
        raise TechniqueError(f"train.memory.compile is not wired for {where}: turn compile off")
    if strategy == "fsdp" and mem.precision == "fp16-mixed":
        raise TechniqueError("train.memory.precision fp16-mixed cannot run with train.distributed.strategy fsdp: "
                             "the gradient scaler does not unscale sharded gradients; use bf16-mixed")
    if strategy == "fsdp" and mem.optimizer == "adafactor":
        raise TechniqueError("train.memory.optimizer adafactor cannot run with train.distributed.strategy fsdp: "
                             "torch.optim.Adafactor updates its column statistics in place, and over a sharded "
                             "parameter they span the shards (PyTorch's DTensor refuses the in-place step); "
                             "use adamw, or strategy ddp")
    if mem.optimizer in LOW_BIT and strategy == "ddp":
        raise TechniqueError(f"train.memory.optimizer {mem.optimizer} cannot run with {where}: torchao's quantized "
                             "moments are tensor subclasses that the sharded checkpoint (DCP's safetensors writer) "
                             "cannot write; use adamw, or run in one process")
    if strategy == "fsdp" and mem.optimizer in ("adamw8bit", "adamw4bit", "adamw-fp8", "adam-mini", "muon"):
        raise TechniqueError(f"train.memory.optimizer {mem.optimizer} is not verified with train.distributed.strategy "
                             "fsdp (its state or update over sharded parameters; Muon needs each matrix whole); "
                             "use adamw, or strategy ddp")
    if strategy == "fsdp" and mem.optimizer_in_backward and cfg.grad_clip > 0:
        raise TechniqueError("train.grad_clip with memory.optimizer_in_backward cannot run with "
                             "train.distributed.strategy fsdp: each rank would sum its own shards' norms, not the "
                             "model's; set train.grad_clip: 0")
    if strategy == "fsdp" and cfg.update_clip:
        raise TechniqueError("train.update_clip cannot run with train.distributed.strategy fsdp: each rank would "
                             "measure its own shard of a weight, not the weight; set update_clip: false")
    if strategy == "fsdp" and mem.precision in BF16_WEIGHTS:
        raise TechniqueError(f"train.memory.precision {mem.precision} cannot run with train.distributed.strategy "
                             "fsdp: its optimizer rounds each weight's update with random bits made as a plain "
                             "tensor, which a sharded weight refuses; use bf16-mixed, or strategy ddp")
    if cfg.distributed.cpu_offload and (strategy != "fsdp" or device.type != "cuda"):
        raise TechniqueError(
            "train.distributed.cpu_offload moves FSDP's shards from the GPU to CPU memory: it needs strategy fsdp "
            "on CUDA; turn it off")


def check(cfg: TrainConfig, device: torch.device) -> list[str]:
    """Raise TechniqueError for refused combinations; return warnings for ones that run poorly."""
    mem = cfg.memory
    cpu = device.type == "cpu"
    if mem.optimizer_in_backward and cfg.grad_accum_steps > 1:
        raise TechniqueError(
            "train.memory.optimizer_in_backward steps each parameter as soon as its gradient is ready, so it "
            "cannot accumulate gradients over micro-batches: unset memory.micro_batch_size or turn "
            "optimizer_in_backward off")
    if mem.optimizer_in_backward and cfg.grad_clip > 0 and mem.split_head_step:
        raise TechniqueError(
            "train.memory.split_head_step steps the head's gradient in two parts, outside the clip that "
            "optimizer_in_backward applies: set train.grad_clip: 0, or use late_head_grad instead")
    if cfg.update_clip:
        if not mem.optimizer_in_backward:
            raise TechniqueError(
                "train.update_clip is the clip for memory.optimizer_in_backward, which cannot clip by the global "
                "norm at once: turn memory.optimizer_in_backward on (with grad_clip: 0), or set update_clip: false "
                "and clip with train.grad_clip (for example 1.0)")
        if cfg.grad_clip > 0:
            raise TechniqueError("train.update_clip and train.grad_clip are two clips: choose one (set grad_clip: 0 "
                                 "or update_clip: false)")
        if mem.optimizer not in ("adamw", "adamw-fp8"):
            raise TechniqueError(
                f"train.update_clip reads AdamW's second moment; {mem.optimizer} keeps none it can read: use "
                "optimizer adamw or adamw-fp8, or set update_clip: false")
        if mem.split_head_step:
            raise TechniqueError(
                "train.update_clip measures a weight's whole step, which split_head_step takes in two parts: use "
                "late_head_grad instead, or set update_clip: false")
    if mem.optimizer_in_backward and mem.precision == "fp16-mixed":
        raise TechniqueError(
            "train.memory.optimizer_in_backward cannot run with fp16-mixed: the gradient scaler must see every "
            "gradient before any step; use bf16-mixed or fp32")
    if mem.late_head_grad and mem.loss_chunk_size == 0:
        raise TechniqueError(
            "train.memory.late_head_grad postpones the chunked loss's head gradient: set memory.loss_chunk_size "
            "(for example 256)")
    if mem.loss_vocab_chunk_size and mem.loss_chunk_size == 0:
        raise TechniqueError(
            "train.memory.loss_vocab_chunk_size tiles the chunked loss's vocabulary: set memory.loss_chunk_size "
            "too (for example 128)")
    if mem.split_head_step:
        if not mem.optimizer_in_backward or mem.loss_chunk_size == 0:
            raise TechniqueError(
                "train.memory.split_head_step steps the tied head weight during backward from the chunked loss's "
                "gradient: set memory.optimizer_in_backward: true and memory.loss_chunk_size (for example 256)")
        if mem.optimizer != "adamw" or mem.precision in BF16_WEIGHTS:
            raise TechniqueError(
                "train.memory.split_head_step splits AdamW's elementwise fused step by rows; it cannot split "
                f"{mem.optimizer if mem.optimizer != 'adamw' else 'the bf16-weight AdamW of ' + mem.precision}: "
                "use late_head_grad instead")
        if mem.late_head_grad:
            raise TechniqueError(
                "train.memory.split_head_step and late_head_grad both route the head's gradient: choose one "
                "(split_head_step is faster: it does not compute the logits again)")
    check_distributed(cfg, device)
    if cpu and mem.precision == "fp16-mixed":
        raise TechniqueError("train.memory.precision fp16-mixed needs CUDA; on CPU use fp32 or bf16-mixed")
    if cpu and mem.activation_offload:
        raise TechniqueError(
            "train.memory.activation_offload moves activations from the GPU to CPU memory; on CPU there is "
            "nowhere to move them: turn it off, or use activation_checkpointing")
    bf16_weights = mem.precision in BF16_WEIGHTS
    if bf16_weights and mem.bf16_rounding == "kahan" and mem.optimizer != "adamw":
        raise TechniqueError(
            f"train.memory.bf16_rounding kahan keeps a compensation buffer in memlm's AdamW; {mem.optimizer} has "
            "none: use bf16_rounding stochastic (the low-bit AdamWs round stochastically) or optimizer adamw")
    if bf16_weights and mem.optimizer in ("adam-mini", "muon", "adafactor"):
        raise TechniqueError(
            f"train.memory.optimizer {mem.optimizer} steps bf16 weights by rounding to nearest, which drops small "
            "updates: with bf16 weights use adamw, adamw-fp8, adamw8bit or adamw4bit, or set precision fp32")
    warnings = []
    if mem.optimizer_in_backward and cfg.grad_clip > 0:
        warnings.append("optimizer_in_backward steps each weight before the step's global gradient norm is "
                        "known: train.grad_clip clips each step by the previous step's norm (the first step "
                        "unclipped)")
    if mem.optimizer in LOW_BIT:
        try:
            import torchao.optim  # noqa: F401
        except ImportError:
            raise TechniqueError(
                f"train.memory.optimizer {mem.optimizer} needs torchao: pip install 'memlm[lowbit]' (or torchao), "
                "or use adamw-fp8 (memlm's own, 2 bytes a weight too), adamw, adam-mini, muon or adafactor") from None
        if cpu:
            warnings.append(f"{mem.optimizer} on CPU: torchao compiles its step kernels at the first step "
                            "(about 20-60 s here, once per weight shape)")
    if mem.precision in ("bf16-mixed", "bf16-true") and cpu and not _cpu_has_native_bf16():
        warnings.append(
            f"precision {mem.precision}: this CPU has no native bf16, so bf16 runs about 10x slower than fp32 "
            "here; fp32 is the fast choice on this machine")
    if mem.precision == "bf16-true" and mem.optimizer == "adafactor":
        warnings.append("bf16-true with adafactor: Adafactor keeps its factored state in the weights' dtype")
    return warnings


BF16_WEIGHTS = ("bf16-true", "bf16-weights")
LOW_BIT = {"adamw8bit": "AdamW8bit", "adamw4bit": "AdamW4bit"}


def rounds_with_random_bits(mem: MemoryConfig) -> bool:
    """Whether the optimizer rounds its updates with random bits (bf16 weights rounded stochastically, fp8
    moments; torchao's 8-bit and 4-bit moments round to nearest): DDP's replicas then stay equal only while
    every rank draws the same bits."""
    return (mem.precision in BF16_WEIGHTS and mem.bf16_rounding == "stochastic") or mem.optimizer == "adamw-fp8"


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


RNN_CHECKPOINT_CHUNKS = 8


def apply_to_model(model: TiedHeadLM, mem: MemoryConfig) -> None:
    """Set the model's activation checkpointing and loss chunking, and its weights' dtype."""
    if isinstance(model, RNNAttentionLM):
        _apply_to_rnn(model, mem)
    else:
        _apply_to_gpt(model, mem)
    model.loss_chunk_size = mem.loss_chunk_size
    model.loss_vocab_chunk_size = mem.loss_vocab_chunk_size
    if isinstance(model.head_grad, SplitHeadStep):
        model.head_grad.handle.remove()
    # A split head step is attached with its optimizer, in build_optimizer.
    model.head_grad = LateHeadGrad() if mem.late_head_grad else None
    if mem.precision == "bf16-true":
        model.to(torch.bfloat16)
    elif mem.precision == "bf16-weights":
        store_matrices_in_bf16(model)


def _apply_to_rnn(model: RNNAttentionLM, mem: MemoryConfig) -> None:
    if mem.activation_checkpointing == "selective":
        raise TechniqueError(
            "train.memory.activation_checkpointing selective picks GPT blocks or their attention/MLP parts; "
            "rnn-attention has neither: use full (each recurrent layer recomputed over chunks of time steps)")
    if mem.mlp_chunks > 1:
        raise TechniqueError("train.memory.mlp_chunks tiles the GPT's MLP; rnn-attention has none: set it to 1")
    if mem.precision == "bf16-weights":
        raise TechniqueError("train.memory.precision bf16-weights casts Linear weights as they run; rnn-attention's "
                             "recurrent cells compute in their weights' dtype: use fp32 or bf16-true")
    model.time_chunks = RNN_CHECKPOINT_CHUNKS if mem.activation_checkpointing == "full" else 1


def _apply_to_gpt(model: GPT, mem: MemoryConfig) -> None:
    for i, block in enumerate(model.blocks):
        if mem.activation_checkpointing == "full":
            block.checkpoint = "block"
        elif mem.activation_checkpointing == "selective" and i % mem.checkpoint_every == 0:
            block.checkpoint = mem.checkpoint_part
        else:
            block.checkpoint = "none"
        block.mlp_chunks = mem.mlp_chunks


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """The configured optimizer, weight decay on matrices only; per parameter when stepped in backward."""
    mem = cfg.memory

    bf16_weights = mem.precision in BF16_WEIGHTS
    random_pool = new_random_pool(device) if mem.optimizer == "adamw-fp8" else None

    def make(groups: list[dict]) -> torch.optim.Optimizer:
        if mem.optimizer == "adafactor":
            return torch.optim.Adafactor(groups, lr=cfg.lr, foreach=not mem.optimizer_in_backward)
        if mem.optimizer == "adamw-fp8":
            return AdamWFp8(groups, lr=cfg.lr, betas=cfg.betas, random_pool=random_pool,
                            bf16_stochastic_round=bf16_weights and mem.bf16_rounding == "stochastic")
        if mem.optimizer in LOW_BIT:
            return sliced_low_bit_adamw(LOW_BIT[mem.optimizer])(
                groups, lr=cfg.lr, betas=cfg.betas,
                bf16_stochastic_round=bf16_weights and mem.bf16_rounding == "stochastic")
        if mem.optimizer == "adam-mini":
            return AdamMini(groups, lr=cfg.lr, betas=cfg.betas)
        if mem.optimizer == "muon":
            return MuonWithAdamW(model, groups, lr=cfg.lr, betas=cfg.betas)
        if bf16_weights:
            return AdamWBF16(groups, lr=cfg.lr, betas=cfg.betas, rounding=mem.bf16_rounding)
        # The fused kernel (CUDA and CPU) updates in one pass, with no parameter-sized temporaries.
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)

    if mem.optimizer_in_backward:
        split_head = (model.lm_head.weight, model.wte) if mem.split_head_step else None
        optimizer = OptimizerInBackward(model, make, cfg.weight_decay, split_head, update_clip=cfg.update_clip,
                                        grad_clip=cfg.grad_clip)
        if optimizer.split_head is not None:
            model.head_grad = optimizer.split_head
        return optimizer
    params = list(dict.fromkeys(p for p in model.parameters() if p.requires_grad))
    return make([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                 {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}])


def autocast(device: torch.device, mem: MemoryConfig):
    if mem.precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mem.precision == "fp16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def forward_context(device: torch.device, mem: MemoryConfig) -> Iterator[None]:
    """Autocast for mixed precision, and saved activations kept in pinned CPU memory when offloading."""
    with autocast(device, mem):
        if mem.activation_offload:
            with torch.autograd.graph.save_on_cpu(pin_memory=True):
                yield
        else:
            yield


def grad_scaler(device: torch.device, mem: MemoryConfig) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type) if mem.precision == "fp16-mixed" else None
