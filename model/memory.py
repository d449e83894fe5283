"""Where a training step's memory goes: peak, and its breakdown by category, phase and module.

A tracked step runs under the PyTorch profiler with memory profiling on, which records every allocation
and free inside operators (exact on CPU; on CUDA the caching allocator's view). Each allocation is then
given a category from what the step did with it, told to the profiler as named marks:
- parameters, gradients and optimizer state that exist when the step starts are found by identity;
- memory allocated in a forward phase and still alive when the backward phase starts is an activation
  (what autograd saved, and the inputs that activation checkpointing keeps);
- a gradient accumulated into a parameter (a post-accumulate-grad hook) is a gradient;
- optimizer state created during the step is found by identity at its end;
- everything else allocated during the step is a temporary.
Phases (forward, backward, optimizer) and top-level modules are marked the same way, so that the replay
of the allocation timeline knows where it was. Only sampled steps are tracked: it costs about 20-50%.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile, record_function

CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "temporaries")
PHASES = ("forward", "backward", "optimizer")
MiB = 2**20
_MARK = "memlm::"
_MAX_TIMELINE_POINTS = 1500


@dataclass
class MemoryReport:
    """A tracked step: peak live tensor bytes on the device and where they went."""

    step: int
    device: str
    peak_bytes: int
    peak_phase: str
    breakdown: dict[str, int]
    phases: dict[str, dict] = field(default_factory=dict)
    modules: list[dict] = field(default_factory=list)
    timeline: list[tuple[float, list[int]]] = field(default_factory=list)
    phase_starts_ms: dict[str, float] = field(default_factory=dict)
    module_activation_bytes: dict[str, int] = field(default_factory=dict)
    cuda_max_allocated: int | None = None

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MiB

    def metrics(self) -> dict[str, float]:
        """Flat metrics for MLflow: memory/peak_mib, memory/<category>_mib, memory/<phase>/...."""
        out = {"memory/peak_mib": round(self.peak_mib, 3)}
        out.update({f"memory/{c}_mib": round(b / MiB, 3) for c, b in self.breakdown.items()})
        for phase, info in self.phases.items():
            out[f"memory/{phase}/peak_mib"] = round(info["peak_bytes"] / MiB, 3)
            out.update({f"memory/{phase}/{c}_mib": round(b / MiB, 3) for c, b in info["breakdown"].items()})
        if self.cuda_max_allocated is not None:
            out["memory/cuda_max_allocated_mib"] = round(self.cuda_max_allocated / MiB, 3)
        return out

    def to_dict(self) -> dict:
        return {
            "step": self.step, "device": self.device, "peak_bytes": self.peak_bytes,
            "peak_mib": round(self.peak_mib, 3), "peak_phase": self.peak_phase, "breakdown": self.breakdown,
            "phases": self.phases, "modules": self.modules, "cuda_max_allocated": self.cuda_max_allocated,
        }


_UNOWNED_BLOCKS = -1  # a key no real storage pointer can take


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _plain_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold a tensor subclass's data (such as torchao's 8-bit optimizer state)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        inner = (getattr(t, name) for name in names)  # a DTensor also names its device mesh
        return [plain for value in inner if isinstance(value, torch.Tensor) for plain in _plain_tensors(value)]
    return [t]


def _top_level_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Children, with a ModuleList expanded (blocks.0, blocks.1, ...), so a GPT shows one row a layer."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            out += [(f"{name}.{i}", sub) for i, sub in enumerate(child)]
        else:
            out.append((name, child))
    return out


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """PyTorch's profiler backend prints a line to the process's stderr as it starts and as it stops;
    on every tracked step of a long run that is noise. Silence file descriptor 2 for just those calls."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _mark(text: str) -> None:
    with record_function(_MARK + text):
        pass


class MemoryTracker:
    """Measures sampled training steps. Use `with tracker.track(step):` around a whole optimizer step,
    `with tracker.phase("forward"):` around its phases and `tracker.scope("loss")` around work that
    is not a module (such as the loss)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, device: torch.device,
                 sample_steps: list[int] | tuple[int, ...] = (1,), sample_every: int = 100,
                 snapshot_path: Path | None = None):
        self.model = model
        self.optimizer = optimizer
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # Tensors say cuda:0, and torch.device("cuda") != torch.device("cuda:0").
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.sample_steps = set(sample_steps)
        self.sample_every = sample_every
        self.snapshot_path = snapshot_path
        self.reports: list[MemoryReport] = []
        self._active = False
        self._module_hooks: list = []
        # Registered now, before an optimizer that steps in backward registers its own, so that a gradient
        # is noted before that optimizer frees it. They do nothing outside tracked steps.
        self._grad_hooks = [p.register_post_accumulate_grad_hook(self._note_gradient)
                            for p in dict.fromkeys(model.parameters()) if p.requires_grad]

    def _note_gradient(self, param: torch.Tensor) -> None:
        if self._active and param.grad is not None:
            for t in _plain_tensors(param.grad):
                _mark(f"note::gradients::{t.untyped_storage().data_ptr()}")

    def note_gradients(self) -> None:
        """After backward: gradients that no post-accumulate-grad hook saw (FSDP assigns each rank's
        reduce-scattered shard instead of accumulating it)."""
        if self._active:
            for p in dict.fromkeys(self.model.parameters()):
                if p.grad is not None:
                    self._note_gradient(p)

    @property
    def last(self) -> MemoryReport | None:
        return self.reports[-1] if self.reports else None

    @property
    def peak(self) -> MemoryReport | None:
        return max(self.reports, key=lambda r: r.peak_bytes, default=None)

    def wants(self, step: int) -> bool:
        return step in self.sample_steps or step % self.sample_every == 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self._active:
            yield
            return
        with record_function(f"{_MARK}phase::{name}"):
            yield
        _mark("phase::end")

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        if not self._active:
            yield
            return
        _mark(f"enter::{name}")
        yield
        _mark(f"exit::{name}")

    @contextlib.contextmanager
    def track(self, step: int) -> Iterator[None]:
        if not self.wants(step):
            yield
            return
        cuda = self.device.type == "cuda"
        baseline = self._baseline()
        handles = self._install_hooks()
        snapshot = cuda and self.snapshot_path is not None and not self.reports
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            if snapshot:
                torch.cuda.memory._record_memory_history(max_entries=200_000)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self._active = True
        prof = profile(activities=activities, profile_memory=True)
        try:
            with _native_stderr_silenced():
                prof.start()
            try:
                yield
                self._note_model_state()
            finally:
                with _native_stderr_silenced():
                    prof.stop()
            if cuda:
                torch.cuda.synchronize(self.device)
        finally:
            self._active = False
            for handle in handles:
                handle.remove()
        report = _replay(prof, baseline, self.device, step)
        report.modules = self._module_table(report)
        if cuda:
            report.cuda_max_allocated = torch.cuda.max_memory_allocated(self.device)
            if snapshot:
                self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
                torch.cuda.memory._dump_snapshot(str(self.snapshot_path))
                torch.cuda.memory._record_memory_history(enabled=None)
        self.reports.append(report)

    def _state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        # A sharded (FSDP) parameter, gradient or optimizer state counts as this rank's local shard.
        for p in self.model.parameters():
            yield from (("parameters", t) for t in _plain_tensors(p))
            if p.grad is not None:
                yield from (("gradients", t) for t in _plain_tensors(p.grad))
        for b in self.model.buffers():
            yield "parameters", b
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        yield from (("optimizer_state", t) for t in _plain_tensors(value))

    def _baseline(self) -> dict[int, tuple[int, str]]:
        live: dict[int, tuple[int, str]] = {}
        for category, t in self._state_tensors():
            if t.device == self.device and t.numel():
                ptr, nbytes = _storage_key(t)
                live.setdefault(ptr, (nbytes, category))
        if self.device.type == "cuda":
            # The caching allocator also holds blocks no model tensor owns (cuBLAS workspaces, the last
            # batch) and rounds every block up: count that difference as temporaries, so that the
            # replay starts where torch.cuda.memory_allocated stands.
            unowned = torch.cuda.memory_allocated(self.device) - sum(n for n, _ in live.values())
            if unowned > 0:
                live[_UNOWNED_BLOCKS] = (unowned, "temporaries")
        return live

    def _note_model_state(self) -> None:
        for category, t in self._state_tensors():
            if t.device == self.device and t.numel():
                _mark(f"note::{category}::{t.untyped_storage().data_ptr()}")

    @staticmethod
    def _note_gathered(module: nn.Module) -> None:
        """FSDP's all-gathered (unsharded) weights are temporaries, even those kept from forward into
        backward: they are not activations, and this rank's parameters are its shards."""
        from torch.distributed.tensor import DTensor

        for p in module.parameters():
            if not isinstance(p, DTensor) and p.numel():
                _mark(f"note::gathered::{p.untyped_storage().data_ptr()}")

    def _install_hooks(self) -> list:
        from torch.distributed.tensor import DTensor

        handles = []
        # Registered after FSDP's own pre-forward hooks, so they see the weights FSDP just gathered.
        sharded = any(isinstance(p, DTensor) for p in self.model.parameters())
        if sharded:
            handles.append(self.model.register_forward_pre_hook(lambda m, a: self._note_gathered(m)))
        for name, module in _top_level_modules(self.model):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: _mark(f"enter::{n}")))
            if sharded:
                handles.append(module.register_forward_pre_hook(lambda m, a: self._note_gathered(m)))
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: _mark(f"exit::{n}")))
        return handles

    def _module_table(self, report: MemoryReport) -> list[dict]:
        rows = []
        seen: set[int] = set()  # a tied weight counts once, under the first module that holds it
        for name, module in _top_level_modules(self.model):
            param_bytes = 0
            for p in (t for p in module.parameters() for t in _plain_tensors(p)):
                ptr, nbytes = _storage_key(p)
                if ptr not in seen:
                    seen.add(ptr)
                    param_bytes += nbytes
            rows.append({"module": name, "params_bytes": param_bytes,
                         "activation_bytes": report.module_activation_bytes.get(name, 0)})
        for name, nbytes in report.module_activation_bytes.items():
            if name not in {r["module"] for r in rows}:
                rows.append({"module": name, "params_bytes": 0, "activation_bytes": nbytes})
        return rows


def _walk(events) -> Iterator:
    for e in events:
        yield e
        yield from _walk(e.children)


def _replay(prof, baseline: dict[int, tuple[int, str]], device: torch.device, step: int) -> MemoryReport:
    """Settle each allocation's category from the marks, then replay live bytes per category in time."""
    events = sorted(_walk(prof.profiler.kineto_results.experimental_event_tree()), key=lambda e: e.start_time_ns)
    dev_type, dev_index = device.type, (device.index or 0)

    def on_device(fields) -> bool:
        d = fields.device
        return d.type == dev_type and (dev_type == "cpu" or (d.index or 0) == dev_index)

    category: dict[int, str] = {}
    size: dict[int, int] = {}
    live: dict[int, int] = {}  # ptr -> allocation id; tensors alive at the start get negative ids
    for i, (ptr, (nbytes, cat)) in enumerate(baseline.items()):
        live[ptr], category[-(i + 1)], size[-(i + 1)] = -(i + 1), cat, nbytes
    stream: list[tuple[str, int, int | str]] = []
    phase = "other"
    from_forward: set[int] = set()
    for e in events:
        kind = e.typed[0]
        if kind == _EventType.Allocation:
            f = e.typed[1]
            if not on_device(f):
                continue
            if f.alloc_size > 0:
                alloc_id = len(stream)
                live[f.ptr], category[alloc_id], size[alloc_id] = alloc_id, "temporaries", f.alloc_size
                if phase == "forward":
                    from_forward.add(alloc_id)
                stream.append(("alloc", e.start_time_ns, alloc_id))
            elif (alloc_id := live.pop(f.ptr, None)) is not None:
                stream.append(("free", e.start_time_ns, alloc_id))
        elif kind == _EventType.TorchOp and e.name.startswith(_MARK):
            mark = e.name[len(_MARK):]
            if mark.startswith("note::"):
                _, cat, ptr = mark.split("::")
                alloc_id = live.get(int(ptr))
                if cat == "gathered":
                    from_forward.discard(alloc_id)
                    continue
                # A note only settles what the step allocated: weights saved for backward stay
                # parameters, and a gradient that a later op saves stays a gradient.
                if alloc_id is not None and category[alloc_id] == "temporaries":
                    category[alloc_id] = cat
            else:
                if mark.startswith("phase::"):
                    phase = mark.split("::", 1)[1]
                    if phase == "backward":
                        for alloc_id in live.values():
                            if alloc_id in from_forward and category[alloc_id] == "temporaries":
                                category[alloc_id] = "activations"
                stream.append(("mark", e.start_time_ns, mark))

    index = {c: i for i, c in enumerate(CATEGORIES)}
    sizes = [0] * len(CATEGORIES)
    for alloc_id in range(-len(baseline), 0):
        sizes[index[category[alloc_id]]] += size[alloc_id]
    phase, scopes = "other", []
    t0 = stream[0][1] if stream else 0
    best = (sum(sizes), list(sizes), "start")
    phase_best: dict[str, tuple[int, list[int]]] = {}
    phase_starts: dict[str, float] = {}
    module_acts: dict[str, int] = {}
    timeline: list[tuple[float, list[int]]] = [(0.0, list(sizes))]
    for kind, t, ref in stream:
        if kind == "mark":
            if ref.startswith("phase::"):
                phase = "other" if ref == "phase::end" else ref.split("::", 1)[1]
                phase_starts.setdefault(phase, (t - t0) / 1e6)
                if sum(sizes) > phase_best.get(phase, (-1,))[0]:
                    phase_best[phase] = (sum(sizes), list(sizes))
            elif ref.startswith("enter::"):
                scopes.append(ref.split("::", 1)[1])
            elif ref.startswith("exit::") and scopes:
                scopes.pop()
            continue
        cat = category[ref]
        delta = size[ref] if kind == "alloc" else -size[ref]
        sizes[index[cat]] += delta
        if kind == "alloc" and phase == "forward" and cat == "activations":
            owner = scopes[-1] if scopes else "(outside modules)"
            module_acts[owner] = module_acts.get(owner, 0) + size[ref]
        total = sum(sizes)
        if total > best[0]:
            best = (total, list(sizes), phase)
        if total > phase_best.get(phase, (-1,))[0]:
            phase_best[phase] = (total, list(sizes))
        timeline.append(((t - t0) / 1e6, list(sizes)))
    if len(timeline) > _MAX_TIMELINE_POINTS:
        stride = len(timeline) // _MAX_TIMELINE_POINTS + 1
        peak_i = max(range(len(timeline)), key=lambda i: sum(timeline[i][1]))
        timeline = [p for i, p in enumerate(timeline) if i % stride == 0 or i == peak_i]
    return MemoryReport(
        step=step,
        device=str(device),
        peak_bytes=best[0],
        peak_phase=best[2],
        breakdown=dict(zip(CATEGORIES, best[1])),
        phases={p: {"peak_bytes": v[0], "breakdown": dict(zip(CATEGORIES, v[1]))}
                for p, v in phase_best.items() if p in PHASES},
        timeline=timeline,
        phase_starts_ms=phase_starts,
        module_activation_bytes=module_acts,
    )
