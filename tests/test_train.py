"""Training on the tiny corpus: the loss falls, a resumed run continues the same run, memory adds up."""
from __future__ import annotations

import json

import pytest
import torch

from model.config import TrainConfig
from model.gpt import GPT, GPTConfig
from model.memory import CATEGORIES, MemoryTracker
from model.train import lr_at, train

pytestmark = pytest.mark.integration


def history(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_tiny_model_loss_falls(corpus, tmp_path):
    config, parts = corpus
    result = train(config.model, config.train.model_copy(update={"max_steps": 60}), parts["tokens"].manifest_file.parent,
                   tmp_path)
    losses = [r["train/loss"] for r in history(result.history_file) if "train/loss" in r]
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0]
    assert result.val_loss < result.val_loss_start - 1.0
    assert result.peak_memory_mib > 0 and result.tokens_per_s > 0
    assert (tmp_path / "checkpoint" / "model.safetensors").exists()


def test_resume_continues_the_same_run(corpus, tmp_path):
    config, parts = corpus
    tokens_dir = parts["tokens"].manifest_file.parent
    full = train(config.model, config.train.model_copy(update={"max_steps": 20}), tokens_dir, tmp_path / "full")

    def interrupt_at_step_16(step, total, info):
        # After step 15 was logged and the checkpoint of step 10 written: steps 11-15 run again.
        if step == 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config.model, config.train.model_copy(update={"max_steps": 20}), tokens_dir, tmp_path / "split",
              on_progress=interrupt_at_step_16)
    resumed = train(config.model, config.train.model_copy(update={"max_steps": 20}), tokens_dir, tmp_path / "split")
    assert resumed.resumed_from == 10
    a = [r for r in history(full.history_file) if "train/loss" in r]
    b = [r for r in history(resumed.history_file) if "train/loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r["train/loss"] for r in a] == pytest.approx([r["train/loss"] for r in b], rel=1e-5)
    assert full.val_loss == pytest.approx(resumed.val_loss, rel=1e-5)


def test_resume_refuses_a_checkpoint_of_another_shape(corpus, tmp_path):
    config, parts = corpus
    tokens_dir = parts["tokens"].manifest_file.parent
    train(config.model, config.train.model_copy(update={"max_steps": 2}), tokens_dir, tmp_path)
    wider = config.model.model_copy(update={"n_embd": 64})
    with pytest.raises(ValueError, match="another model shape"):
        train(wider, config.train.model_copy(update={"max_steps": 4}), tokens_dir, tmp_path)


def test_lr_schedule_warms_up_then_decays_to_min():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(5, cfg) == pytest.approx(0.5)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


def _independent_peak(step_fn, baseline_bytes: int) -> int:
    """Peak live bytes from CPU allocator's own running total, as the profiler reports it with each
    allocation event: the baseline plus the highest total reached above the total before the step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step_fn()
    stack, allocations = list(prof.profiler.kineto_results.experimental_event_tree()), []
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.typed[0].name == "Allocation" and event.typed[1].device.type == "cpu":
            allocations.append((event.start_time_ns, event.typed[1]))
    allocations.sort(key=lambda a: a[0])
    first = allocations[0][1]
    before = first.total_allocated - first.alloc_size
    return baseline_bytes + max(a.total_allocated for _, a in allocations) - before


def test_memory_tracker_breakdown_adds_up_and_matches_an_independent_count():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 512, (4, 32))
    y = torch.randint(0, 512, (4, 32))
    tracker = MemoryTracker(model, opt, torch.device("cpu"), sample_steps=[1, 2])

    def step():
        with tracker.phase("forward"):
            loss = model.loss(model(x), y)
        with tracker.phase("backward"):
            loss.backward()
        with tracker.phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)

    for i in (1, 2):
        with tracker.track(i):
            step()
    report = tracker.last
    assert set(report.breakdown) == set(CATEGORIES)
    assert sum(report.breakdown.values()) == report.peak_bytes
    for phase in ("forward", "backward", "optimizer"):
        assert sum(report.phases[phase]["breakdown"].values()) == report.phases[phase]["peak_bytes"]
    params = sum(p.numel() * 4 for p in model.parameters())  # tied weights counted once
    assert report.breakdown["parameters"] == params
    assert report.breakdown["optimizer_state"] >= 2 * params
    assert report.phases["optimizer"]["breakdown"]["gradients"] == params
    assert report.breakdown["activations"] > 0
    state = params + sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                         if torch.is_tensor(t))
    independent = _independent_peak(step, state)
    assert report.peak_bytes == pytest.approx(independent, rel=0.02)
    rows = {r["module"]: r for r in report.modules}
    assert rows["blocks.0"]["activation_bytes"] > 0 and rows["blocks.0"]["params_bytes"] > 0


def test_untracked_steps_cost_nothing_and_record_nothing():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=1, n_embd=8))
    tracker = MemoryTracker(model, None, torch.device("cpu"), sample_steps=[1], sample_every=100)
    with tracker.track(3):
        model.loss(model(torch.zeros(1, 8, dtype=torch.long)), torch.zeros(1, 8, dtype=torch.long)).backward()
    assert tracker.reports == []
    assert tracker.wants(1) and tracker.wants(200) and not tracker.wants(3)


def test_the_matmul_peak_is_measured_once_per_process_unless_asked_again():
    import time

    from model.hardware import matmul_peak_flops, peak_is_known

    cpu = torch.device("cpu")
    first = matmul_peak_flops(cpu, size=96, seconds=0.01, rounds=1)
    assert first > 0 and peak_is_known(cpu, size=96) and not peak_is_known(cpu, size=97)
    started = time.perf_counter()
    assert matmul_peak_flops(cpu, size=96, seconds=1.0) == first  # a measurement would take 3 s
    assert time.perf_counter() - started < 0.5
    assert matmul_peak_flops(cpu, size=96, seconds=0.01, rounds=1, fresh=True) >= first  # the best is kept


def test_an_allocation_freed_out_of_the_profilers_sight_ends_when_its_address_is_reused():
    """A collective's worker thread frees a buffer where the profiler does not record it: the next
    allocation at that address ends it, so it is not counted as alive for the rest of the step."""
    from model.memory import _replay

    mib = 2**20
    events = [("mark", 0, "phase::forward"), ("alloc", 1, 0x1000, 4 * mib, "aten::clone"),
              ("alloc", 2, 0x9000, 1 * mib, "aten::mm"),  # the clone freed unseen, then its address reused:
              ("alloc", 3, 0x1000, 4 * mib, "aten::clone"), ("free", 4, 0x1000), ("mark", 5, "phase::end")]
    report = _replay(events, {}, torch.device("cpu"), 1)
    assert report.peak_bytes == 5 * mib  # not 9: the first clone ended when the second took its address
