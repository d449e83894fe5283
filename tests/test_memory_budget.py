"""The memory budget holds for every stage of a run, the tracker's categories are honest, and the tracker
agrees with the process's own meter."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from model.arch import config_for
from model.evaluate import evaluate
from model.distributed import ddp_bucket_bytes
from model.gpt import GPT, GPTConfig
from model.memory import PROCESS_METER_ENV, MemoryTracker
from model.plan import MiB, plan
from model.train import MemoryBudgetError, train

ROOT = Path(__file__).resolve().parents[1]


def tracked_step(model, opt, tracker, x, y, step):
    with tracker.track(step):
        with tracker.phase("forward"):
            loss = model.loss(model(x), y)
        with tracker.phase("backward"):
            loss.backward()
        with tracker.phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)


def test_the_chunked_loss_head_gradient_counts_as_a_gradient():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=4096, block_size=32, n_layer=2, n_head=2, n_embd=64))
    model.loss_chunk_size = 64  # the head's gradient is computed in forward, chunk by chunk
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tracker = MemoryTracker(model, opt, torch.device("cpu"), sample_steps=[1, 2])
    x, y = torch.randint(0, 4096, (4, 32)), torch.randint(0, 4096, (4, 32))
    for step in (1, 2):
        tracked_step(model, opt, tracker, x, y, step)
    head = model.lm_head.weight.numel() * 4
    forward = tracker.last.phases["forward"]["breakdown"]
    # Alive from the loss on, before backward made any other (it was filed under activations before).
    assert forward["gradients"] == head
    assert tracker.last.phases["backward"]["breakdown"]["gradients"] == sum(p.numel() * 4 for p in model.parameters())


class SGDWithKeptCopy(torch.optim.SGD):
    """Keeps a buffer between steps outside its per-parameter state (as some optimizers keep workspaces)."""

    def step(self, closure=None):
        if not hasattr(self, "kept"):
            self.kept = torch.zeros(256 * 1024)  # 1 MiB
        return super().step(closure)


def test_buffers_an_optimizer_keeps_between_steps_are_optimizer_state():
    model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=1, n_embd=32))
    opt = SGDWithKeptCopy(model.parameters(), lr=0.1)  # no per-parameter state at all
    tracker = MemoryTracker(model, opt, torch.device("cpu"), sample_steps=[1, 2])
    x, y = torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16))
    for step in (1, 2):
        tracked_step(model, opt, tracker, x, y, step)
    first, second = tracker.reports
    assert first.phases["optimizer"]["breakdown"]["optimizer_state"] == MiB  # made in the step, kept after it
    assert second.breakdown["optimizer_state"] == MiB  # alive at the start of the next: found on the optimizer
    assert second.temporaries_at_peak and all(row["bytes"] > 0 and row["op"] for row in second.temporaries_at_peak)



def test_gradient_buckets_count_before_the_gradients_point_into_them():
    model = GPT(GPTConfig(vocab_size=256, block_size=16, n_layer=1, n_head=1, n_embd=32))
    params = [p for p in model.parameters() if p.requires_grad]
    bucket_bytes = ddp_bucket_bytes(model)
    assert bucket_bytes == sum(p.numel() * 4 for p in params)
    tracker = MemoryTracker(model, None, torch.device("cpu"), grad_bucket_bytes=bucket_bytes)
    assert sum(n for n, category in tracker._baseline().values() if category == "gradients") == bucket_bytes
    # After the first backward every gradient is a view into the bucket: the bucket counts once.
    bucket, offset = torch.zeros(bucket_bytes // 4), 0
    for p in params:
        p.grad = bucket[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    assert sum(n for n, category in tracker._baseline().values() if category == "gradients") == bucket_bytes


_METERS_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from model.config import TrainConfig
    from model.gpt import GPT, GPTConfig
    from model.step import TrainStep
    torch.set_num_threads(2)
    torch.manual_seed(0)
    memory = json.loads(sys.argv[1])
    model = GPT(GPTConfig(vocab_size=8192, block_size=128, n_layer=4, n_head=4, n_embd=256))
    cfg = TrainConfig(batch_size=8, memory_sample_steps=[2], memory_sample_every=10**9, memory=memory)
    step = TrainStep(model, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    def batch(n):
        t = torch.randint(0, 8192, (n, 129), generator=gen)
        return t[:, :-1], t[:, 1:]
    for i in (1, 2, 3):
        step(i, batch)
    report = step.tracker.reports[-1]
    print(json.dumps({"tensors": report.peak_bytes, "process": report.process_peak_bytes}))
""")


@pytest.mark.parametrize("memory", [{"loss_chunk_size": 0}, {"loss_chunk_size": 0, "activation_checkpointing": "full"},
                                    {"loss_chunk_size": 256}], ids=["plain", "checkpointed", "chunked-loss"])
def test_the_tracker_agrees_with_the_process_meter(memory):
    # A fresh process, started with glibc's mmap threshold pinned: freed blocks leave the resident set.
    env = {**os.environ, **PROCESS_METER_ENV, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _METERS_SCRIPT, json.dumps(memory)], capture_output=True,
                            text=True, env=env, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.splitlines()[-1])
    assert figures["tensors"] > 50 * MiB
    assert figures["process"] == pytest.approx(figures["tensors"], rel=0.02)


def stage_peaks(memory: dict) -> dict[str, float]:
    return {name: entry["peak_mib"] for name, entry in memory["stages"].items()}


@pytest.mark.integration
@pytest.mark.parametrize("micro_batch_size", [None, 4])
def test_a_planned_run_keeps_every_stage_inside_the_budget(corpus, tmp_path, micro_batch_size):
    config, parts = corpus
    tokens_dir = parts["tokens"].manifest_file.parent
    model_cfg = config.model.model_copy(update={"block_size": 64})
    train_cfg = config.train.model_copy(update={
        "batch_size": 16, "max_steps": 4, "eval_interval": 2, "checkpoint_interval": 2,
        "memory": config.train.memory.model_copy(update={"micro_batch_size": micro_batch_size})})
    arch_cfg = config_for(model_cfg, json.loads((tokens_dir / "manifest.json").read_text())["vocab_size"])
    as_configured = plan(arch_cfg, train_cfg, 2**40, torch.device("cpu")).trials[0].peak_bytes
    budget = int(0.8 * as_configured)
    planned = plan(arch_cfg, train_cfg, budget, torch.device("cpu"))
    assert planned.trials[0].peak_bytes == as_configured and not planned.trials[0].fits(budget)
    assert planned.chosen is planned.trials[-1] and planned.chosen.peak_bytes <= budget  # stops at the first fit
    run_cfg = planned.train.model_copy(update={"memory_budget_mib": budget / MiB})

    first = train(model_cfg, run_cfg.model_copy(update={"max_steps": 2}), tokens_dir, tmp_path / "run")
    resumed = train(model_cfg, run_cfg, tokens_dir, tmp_path / "run")  # resumes from step 2's checkpoint
    assert resumed.resumed_from == 2
    evaluated = evaluate(resumed.checkpoint_dir, tokens_dir, config.evaluate, tmp_path / "eval",
                         batch_size=run_cfg.batch_size, device="cpu", micro_batch_size=run_cfg.micro_batch_size,
                         budget_mib=run_cfg.memory_budget_mib, memory=run_cfg.memory)
    peaks = {**stage_peaks(first.memory), **stage_peaks(resumed.memory), **stage_peaks(evaluated.memory)}
    assert set(peaks) == {"train_step", "validation", "checkpoint_save", "resume", "checkpoint_load", "evaluate",
                          "generate"}
    assert all(peak * MiB <= budget for peak in peaks.values()), (peaks, budget / MiB)
    # Stage by stage, the run is what the plan measured (the run's prompts add a few tokens to generation).
    for name, peak in peaks.items():
        assert peak * MiB <= 1.02 * planned.chosen.stages[name] + 2**16, (name, peak, planned.chosen.stages[name] / MiB)
    assert json.loads((tmp_path / "eval" / "memory.json").read_text())["stages"]["evaluate"]["peak_mib"] > 0

    # 10% below what the plan measured: the run stops at the first stage over it, saying which and what to change.
    tight = run_cfg.model_copy(update={"memory_budget_mib": 0.9 * planned.chosen.peak_bytes / MiB})
    with pytest.raises(MemoryBudgetError) as failure:
        train(model_cfg, tight, tokens_dir, tmp_path / "tight")
    message = str(failure.value)
    over = max(planned.chosen.stages, key=planned.chosen.stages.get)
    named = r"training step [12]" if over == "train_step" else f"stage {over}"  # step 1 makes the optimizer state
    assert re.match(rf"{named} peaked at [0-9.]+ MiB", message), message
    assert f"over train.memory_budget_mib ({tight.memory_budget_mib:g})" in message and "or raise the budget" in message
