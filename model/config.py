"""Settings of the model stages (the `model:`, `train:` and `evaluate:` sections of the config)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arch: Literal["gpt", "rnn-attention"] = Field(
        default="gpt", description="gpt, or rnn-attention (recurrent layers with attention over their states)")
    cell: Literal["relu", "gru", "lstm"] = Field(default="relu", description="rnn-attention: the recurrent cell.")
    n_layer: int = Field(default=4, ge=1)
    n_head: int = Field(default=4, ge=1)
    n_embd: int = Field(default=256, ge=8)
    block_size: int = Field(default=128, ge=8, description="Context length in tokens.")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    bias: bool = False

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.arch == "gpt" and self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


class MemoryConfig(BaseModel):
    """Memory techniques, each a switch; they compose. `model/techniques.py` says which pairs are refused."""

    model_config = ConfigDict(extra="forbid")

    micro_batch_size: int | None = Field(
        default=None, ge=1,
        description="Sequences per forward/backward; batch_size / micro_batch_size steps are accumulated.",
    )
    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        default="none", description="Recompute activations in backward: every block, or a selection."
    )
    checkpoint_every: int = Field(default=2, ge=1, description="selective: checkpoint every k-th block.")
    checkpoint_part: Literal["block", "attention", "mlp"] = Field(
        default="block", description="selective: the whole block, or only its attention or MLP sub-block."
    )
    mlp_chunks: int = Field(
        default=1, ge=1,
        description="Tiled MLP: run each block's MLP over this many sequence slices, each recomputed in "
        "backward, so the 4x-wide hidden layer exists for one slice at a time (1: off).",
    )
    loss_chunk_size: int = Field(
        default=512, ge=0,
        description="Tokens per chunk of the chunked cross-entropy, which never holds the full logits "
        "(0: the plain loss over full logits).",
    )
    loss_vocab_chunk_size: int = Field(
        default=0, ge=0,
        description="With the chunked loss: vocabulary rows per tile (Cut Cross-Entropy's scheme), so that a "
        "chunk's logits exist one tokens x vocabulary tile at a time, at the price of one more head matrix "
        "multiply (0: a chunk's whole vocabulary at once).",
    )
    late_head_grad: bool = Field(
        default=False,
        description="With the chunked loss: compute the tied output head's weight gradient at the end of "
        "backward, beside the embedding's, instead of holding it through the whole backward pass.",
    )
    split_head_step: bool = Field(
        default=False,
        description="With optimizer_in_backward, AdamW and the chunked loss: step the tied head weight's rows "
        "that no input token touched as soon as the loss's gradient is known, the rest at the end of backward "
        "with the embedding's gradient: AdamW's exact step, with neither a vocabulary x width gradient kept "
        "through backward nor the logits computed again (late_head_grad's cost).",
    )
    precision: Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "bf16-weights"] = Field(
        default="fp32",
        description="bf16-true: bf16 weights and arithmetic; bf16-weights: bf16 matrices (vectors fp32) with "
        "fp32 arithmetic, each Linear casting its weight as it runs (for CPUs without bf16 hardware).")
    bf16_rounding: Literal["nearest", "stochastic", "kahan"] = Field(
        default="stochastic",
        description="How bf16 weights take the optimizer's fp32 update: nearest (drops updates under half a "
        "bf16 step), stochastic (right in expectation, no memory) or kahan (a 2-byte compensation buffer per "
        "weight; AdamW only).")
    optimizer: Literal["adamw", "adafactor", "adamw8bit", "adamw4bit", "adamw-fp8", "adam-mini", "muon"] = Field(
        default="adamw",
        description="adamw8bit/adamw4bit: torchao's block-quantized moments (2/1 bytes a weight); adamw-fp8: "
        "memlm's fp8 moments, stochastically rounded (2 bytes a weight, no torchao, fast on CPU); adam-mini: one "
        "second moment per matrix row; muon: torch.optim.Muon for the blocks' matrices, AdamW for the rest.")
    optimizer_in_backward: bool = Field(
        default=False, description="Step each parameter in its gradient hook and free the gradient at once."
    )
    activation_offload: bool = Field(default=False, description="Keep saved activations in pinned CPU memory (CUDA).")
    compile: bool = Field(default=False, description="torch.compile the model.")


class DistributedConfig(BaseModel):
    """Training across processes and machines, launched through torchrun (see model/distributed.py)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["none", "ddp", "fsdp"] = Field(
        default="none", description="none: one process (no launcher); ddp: replicate the model and all-reduce "
        "gradients; fsdp: FSDP2, parameters, gradients and optimizer state sharded over the ranks.")
    nproc_per_node: int = Field(default=2, ge=1, description="Ranks (processes) started on each machine.")
    nnodes: int = Field(default=1, ge=1, description="Machines in the job.")
    node_rank: int = Field(default=0, ge=0, description="This machine's index, 0 to nnodes - 1.")
    rdzv_endpoint: str | None = Field(
        default=None, description="HOST:PORT where the nodes meet (node 0's address); default with one node: "
        "a free port on 127.0.0.1.")
    backend: Literal["auto", "nccl", "gloo"] = Field(default="auto", description="auto: nccl on CUDA, gloo on CPU.")
    reshard_after_forward: bool = Field(
        default=True, description="fsdp: free each block's gathered weights after its forward (gathered again "
        "in backward): less memory, one more all-gather per block.")
    cpu_offload: bool = Field(
        default=False, description="fsdp: keep the parameter, gradient and optimizer shards in CPU memory "
        "(FSDP2's CPUOffloadPolicy; for CUDA).")

    @model_validator(mode="after")
    def _node_in_job(self) -> "DistributedConfig":
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank ({self.node_rank}) must be below nnodes ({self.nnodes})")
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("with nnodes > 1 every node needs rdzv_endpoint: HOST:PORT of node 0")
        return self

    @property
    def world_size(self) -> int:
        return 1 if self.strategy == "none" else self.nproc_per_node * self.nnodes


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1, description="CPU threads for PyTorch (default: all cores).")
    seed: int = 1337
    batch_size: int = Field(
        default=16, ge=1, description="Sequences per optimizer step, over all ranks: per-rank micro-batch x "
        "accumulation steps x world size.")
    max_steps: int = Field(default=300, ge=1)
    max_minutes: float | None = Field(
        default=None, gt=0, description="Stop early (with a checkpoint) when training has run this long."
    )
    lr: float = Field(default=3e-3, gt=0)
    min_lr: float = Field(default=3e-4, ge=0)
    warmup_steps: int = Field(default=30, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, ge=0, description="Max gradient norm (0: no clipping).")
    update_clip: bool = Field(
        default=False, description="StableAdamW's update clipping, where memory.optimizer_in_backward steps each "
        "weight before the others' gradients exist, instead of grad_clip (set it to 0): each weight's step size "
        "divided by max(1, RMS of grad^2 / AdamW's second moment) over its own tensor. For adamw and adamw-fp8.")
    eval_interval: int = Field(default=100, ge=1, description="Steps between validation passes.")
    eval_batches: int = Field(default=20, ge=1, description="Batches per periodic validation pass.")
    checkpoint_interval: int = Field(default=100, ge=1)
    log_interval: int = Field(default=10, ge=1, description="Steps between logged training metrics.")
    memory_sample_steps: list[int] = Field(
        default_factory=lambda: [1, 2], description="Steps whose memory is measured in full (on CPU)."
    )
    memory_sample_every: int = Field(default=100, ge=1, description="And every this many steps after.")
    resume: bool = Field(default=True, description="Continue from the last checkpoint when one exists.")
    memory_budget_mib: float | None = Field(
        default=None, gt=0,
        description="Stop with an error as soon as a measured step's peak exceeds this many MiB (every step on "
        "CUDA, the tracked steps on CPU); `memlm plan` finds memory settings that fit it.")
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        world = self.distributed.world_size
        if self.batch_size % world:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of the world size ({world} ranks)")
        micro = self.memory.micro_batch_size
        if micro is not None and self.rank_batch_size % micro:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of memory.micro_batch_size ({micro})"
                             + (f" x the world size ({world})" if world > 1 else ""))
        return self

    @property
    def rank_batch_size(self) -> int:
        """Sequences each rank takes of a step's batch."""
        return self.batch_size // self.distributed.world_size

    @property
    def micro_batch_size(self) -> int:
        return self.memory.micro_batch_size or self.rank_batch_size

    @property
    def grad_accum_steps(self) -> int:
        return self.rank_batch_size // self.micro_batch_size


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batches: int | None = Field(
        default=None, ge=1, description="Validation batches for the final figures (default: the whole split)."
    )
    prompts: list[str] = Field(
        default_factory=lambda: ["The Python", "def main(", "A list is"],
        description="Fixed prompts for sample generations.",
    )
    max_new_tokens: int = Field(default=60, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_k: int | None = Field(default=40, ge=1)
    seed: int = 0
