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
A gradient made early (the chunked loss's head gradient, made in forward) is a gradient from its
allocation on; what an optimizer step leaves alive, and tensors an optimizer keeps as attributes, are
optimizer state. The same replay measures whole stages (validation, checkpoints, evaluation) against
the budget, and steps traced under fake tensors (AllocationRecorder) for the planner's prediction.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch._C._profiler import _EventType
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "temporaries")
PHASES = ("forward", "backward", "optimizer")
MiB = 2**20
_MARK = "memlm::"
_MAX_TIMELINE_POINTS = 1500
_TEMPORARY_ROWS = 8


@dataclass
class MemoryReport:
    """A tracked step (or stage): peak live tensor bytes on the device and where they went, with the
    process's own meter beside it where one was taken."""

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
    temporaries_at_peak: list[dict] = field(default_factory=list)
    stage: str | None = None  # a stage's name (validation, checkpoint_save, ...); None for a training step
    process_peak_bytes: int | None = None  # CPU: live tensor bytes at the start + the resident set's rise
    cuda_max_reserved: int | None = None
    cuda_device_used: int | None = None  # the device's used memory (every process, the CUDA context too)

    @property
    def budgeted_bytes(self) -> int:
        """What the budget is checked against: on CUDA the allocator's peak, on CPU the tracker's."""
        return self.cuda_max_allocated if self.cuda_max_allocated is not None else self.peak_bytes

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
        for name, nbytes in self.meters().items():
            out[f"memory/{name}_mib"] = round(nbytes / MiB, 3)
        return out

    def meters(self) -> dict[str, int]:
        figures = {"process_peak": self.process_peak_bytes, "cuda_max_allocated": self.cuda_max_allocated,
                   "cuda_max_reserved": self.cuda_max_reserved, "cuda_device_used": self.cuda_device_used}
        return {name: nbytes for name, nbytes in figures.items() if nbytes is not None}

    def stage_metrics(self) -> dict[str, float]:
        """memory/stage/<stage>/peak_mib and its breakdown, for MLflow."""
        prefix = f"memory/stage/{self.stage}"
        out = {f"{prefix}/peak_mib": round(self.budgeted_bytes / MiB, 3)}
        out.update({f"{prefix}/{c}_mib": round(b / MiB, 3) for c, b in self.breakdown.items()})
        out.update({f"{prefix}/{name}_mib": round(b / MiB, 3) for name, b in self.meters().items()})
        return out

    def to_dict(self) -> dict:
        return {
            "step": self.step, "device": self.device, "peak_bytes": self.peak_bytes,
            "peak_mib": round(self.peak_mib, 3), "peak_phase": self.peak_phase, "breakdown": self.breakdown,
            "phases": self.phases, "modules": self.modules, "cuda_max_allocated": self.cuda_max_allocated,
            "temporaries_at_peak": self.temporaries_at_peak,
            **({"stage": self.stage} if self.stage else {}),
            "meters": {name: {"bytes": b, "mib": round(b / MiB, 3)} for name, b in self.meters().items()},
        }


class MemoryBudgetError(ValueError):
    """A training step or a stage used more memory than train.memory_budget_mib."""


# What to change when a stage goes over the budget (a training step: `memlm plan`'s techniques).
_SCORING = ("train.memory.micro_batch_size (sequences per evaluation forward) or train.memory."
            "loss_vocab_chunk_size (the loss's vocabulary in tiles)")
_WHOLE_MODEL = ("a smaller model (model.n_embd, n_layer): the stage holds the whole fp32 model and a loaded copy of "
                "its weights, beside no training state (over ranks, not sharded)")
_STAGE_SETTING = {
    "validation": _SCORING,
    "evaluate": _SCORING,
    "rescore": f"{_SCORING}, or {_WHOLE_MODEL}",
    "checkpoint_load": _WHOLE_MODEL,
    "generate": "a smaller model.block_size or model (the decoding cache is made for the whole context at its "
                "first use, beside the whole model)",
}
_STATE_SETTING = ("train.memory.optimizer (adafactor or adamw8bit keep less state) or a smaller model "
                  "(model.n_embd, n_layer): the stage holds the weights and the optimizer state")


def check_budget(budget_mib: float | None, report: MemoryReport) -> None:
    """Raise MemoryBudgetError when the report's peak (the allocator's on CUDA) exceeds the budget."""
    measured = report.budgeted_bytes / MiB
    if budget_mib is None or measured <= budget_mib:
        return
    if report.stage is None:
        what = f"training step {report.step}"
        change = "`memlm plan -c CONFIG` finds memory settings that fit it (it reads the budget from the config)"
    else:
        what = f"stage {report.stage}"
        change = f"change {_STAGE_SETTING.get(report.stage, _STATE_SETTING)}"
    raise MemoryBudgetError(
        f"{what} peaked at {measured:.1f} MiB, over train.memory_budget_mib ({budget_mib:g}): {change}, "
        "or raise the budget")


class ProcessMeter:
    """The process's own meter on Linux: the resident set's rise from now to its high-water mark (the
    kernel's VmHWM, reset to the current resident set by writing 5 to /proc/self/clear_refs).

    Freed memory leaves the resident set only when glibc gives it back: start Python with
    MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 in the environment (PROCESS_METER_ENV), or the
    rise also counts freed blocks that glibc keeps for reuse."""

    _CLEAR_REFS = Path("/proc/self/clear_refs")

    @classmethod
    def available(cls) -> bool:
        return cls._CLEAR_REFS.exists() and os.access(cls._CLEAR_REFS, os.W_OK)

    @staticmethod
    def pinned() -> bool:
        """Whether this process started with glibc's mmap threshold pinned (see PROCESS_METER_ENV)."""
        return all(os.environ.get(k) == v for k, v in PROCESS_METER_ENV.items())

    def __init__(self):
        self._CLEAR_REFS.write_text("5")
        self.rss_at_start = _status_bytes("VmRSS")

    def rise(self) -> int:
        return max(0, _status_bytes("VmHWM") - self.rss_at_start)


PROCESS_METER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


class AllocationRecorder(TorchDispatchMode):
    """Under fake tensors (no memory behind them), the allocations a step would make: every new storage an
    operator returns, freed when its storage dies. What an operator allocates and frees inside itself
    (a kernel's workspace) is not seen: the replay's figure is the live tensors between operators.

    One difference from real tensors is undone: autograd sums two gradients of one input in place when
    the first is a plain tensor it holds the last reference to, but out of place for a tensor subclass
    (a fake tensor is one). In backward, a sum whose first operand dies right after it is recorded as the
    in-place sum it would have been."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple] = []
        self._clock = itertools.count()
        self._ids: dict[int, int] = {}  # a live storage's id -> its allocation's id in the events
        self._watched: set[int] = set()  # storages with a finalizer (FSDP2 regrows one storage every step)
        self._next_id = itertools.count(1)  # small numbers: no real storage has such an address
        self._phase = "other"
        self._summed: tuple[int, int, int, set[int]] | None = None  # (event index, key, bytes, input keys)

    def __enter__(self):
        # A storage resized in place allocates or frees without an operator returning it: FSDP2 gathers a
        # block's weights into storage it grows from nothing, and frees them by resizing it to nothing.
        recorder, resize = self, torch.UntypedStorage.resize_

        def recorded_resize(storage, nbytes):
            out = resize(storage, nbytes)
            recorder._resized(storage, nbytes)
            return out

        self._resize, torch.UntypedStorage.resize_ = resize, recorded_resize
        return super().__enter__()

    def __exit__(self, *exc):
        torch.UntypedStorage.resize_ = self._resize
        return super().__exit__(*exc)

    def _resized(self, storage: torch.UntypedStorage, nbytes: int) -> None:
        key = storage_id(storage)
        self._free(key)
        if nbytes:
            self._ids[key] = alloc_id = next(self._next_id)
            self.events.append(("alloc", next(self._clock), alloc_id, nbytes, "resize_storage"))
            self._watch(storage, key)

    def _watch(self, storage: torch.UntypedStorage, key: int) -> None:
        """Free the storage's allocation when the storage dies (once, however often it was regrown)."""
        if key not in self._watched:
            self._watched.add(key)
            weakref.finalize(storage, self._storage_died, key)

    def _storage_died(self, key: int) -> None:
        self._watched.discard(key)
        self._free(key)

    def mark(self, text: str) -> None:
        self._summed = None
        if text.startswith("phase::"):
            self._phase = text.split("::", 1)[1]
        elif text.startswith("note::"):
            _, category, key = text.split("::")
            text = f"note::{category}::{self._ids.get(int(key), key)}"
        self.events.append(("mark", next(self._clock), text))

    def _free(self, key: int) -> None:
        alloc_id = self._ids.pop(key, None)
        if alloc_id is None:
            return
        summed, self._summed = self._summed, None
        if summed is not None and summed[0] == len(self.events) - 1 and key in summed[3]:
            index, out_key, nbytes, _ = summed
            if self.events[index][3] == nbytes:  # same size: the sum would have reused this block
                self.events.pop()
                self._ids[out_key] = alloc_id
                return
        self.events.append(("free", next(self._clock), alloc_id))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._summed = None
        if func is torch.ops.aten._local_scalar_dense.default:
            # A value read on the host (a loss for the log, an optimizer's step count): fake tensors have
            # none, and memory does not depend on it. 1 keeps step-count arithmetic (1/sqrt(step)) defined.
            return {torch.bool: True}.get(args[0].dtype, 1.0 if args[0].is_floating_point() else 1)
        kwargs = kwargs or {}
        # An output that shares an input's storage (a view, an in-place op) allocated nothing. A tensor
        # subclass (FSDP's DTensor) counts as the plain tensors inside it: its own storage is the global
        # shape's, and the operators on its local shards run below this mode, unseen.
        inputs = {storage_id(t.untyped_storage()) for t in _plain_leaves((args, kwargs))}
        out = func(*args, **kwargs)
        for t in _plain_leaves(out):
            storage = t.untyped_storage()
            key = storage_id(storage)
            if key not in self._ids and key not in inputs and storage.nbytes() > 0:
                self._ids[key] = alloc_id = next(self._next_id)
                self.events.append(("alloc", next(self._clock), alloc_id, storage.nbytes(), func.name()))
                self._watch(storage, key)
                if func is torch.ops.aten.add.Tensor and self._phase == "backward":
                    self._summed = (len(self.events) - 1, key, storage.nbytes(), inputs)
        return out


def attribute_tensors(optimizer, depth: int = 2) -> Iterator[torch.Tensor]:
    """Tensors an optimizer keeps as attributes (in dicts, lists or tuples too), and those of optimizers it
    keeps, `depth` levels down."""
    for value in vars(optimizer).values():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) \
            else (value,)
        for item in values:
            if isinstance(item, torch.Tensor):
                yield item
            elif depth > 1 and isinstance(item, torch.optim.Optimizer):
                yield from attribute_tensors(item, depth - 1)


_UNOWNED_BLOCKS = -1  # keys no real storage pointer can take
_UNVIEWED_BUCKETS = -2


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage_id(storage), storage.nbytes()


def storage_bytes(tensors) -> dict[int, int]:
    """Storage id -> bytes of the distinct storages under `tensors` (subclass tensors unwrapped, as the
    tracker counts them): a storage shared by several tensors is there once."""
    return dict(_storage_key(plain) for t in tensors for plain in _plain_tensors(t))


def storage_id(storage: torch.UntypedStorage) -> int:
    """A storage's address; for a fake tensor's (which has none), its storage object's identity."""
    if storage.device.type == "meta":
        return storage._cdata
    try:
        return storage.data_ptr()
    except RuntimeError:  # a storage with no data: FSDP2's freed gathered weights under fake tensors
        return storage._cdata


def _plain_leaves(tree) -> list[torch.Tensor]:
    return [plain for t in tree_leaves(tree) if isinstance(t, torch.Tensor) for plain in _plain_tensors(t)]


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


# Where marks go while a step is traced under fake tensors (AllocationRecorder) instead of the profiler.
mark_sink = None


def _mark(text: str) -> None:
    if mark_sink is not None:
        mark_sink(text)
        return
    with record_function(_MARK + text):
        pass


class MemoryTracker:
    """Measures sampled training steps. Use `with tracker.track(step):` around a whole optimizer step,
    `with tracker.phase("forward"):` around its phases and `tracker.scope("loss")` around work that
    is not a module (such as the loss)."""

    def __init__(self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None, device: torch.device,
                 sample_steps: list[int] | tuple[int, ...] = (1,), sample_every: int = 100,
                 snapshot_path: Path | None = None, budget_mib: float | None = None, grad_bucket_bytes: int = 0):
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
        self.stages: dict[str, MemoryReport] = {}  # stage name -> its largest measurement
        self.budget_mib = budget_mib
        # Gradient storage the model's parameters may not point at yet: DDP allocates its all-reduce buckets
        # when it wraps the model, and its gradients become views into them only in the first backward.
        self.grad_bucket_bytes = grad_bucket_bytes
        self._active = False
        self._recording = False  # a step traced under fake tensors (traced) is running
        self._module_hooks: list = []
        # Registered now, before an optimizer that steps in backward registers its own, so that a gradient
        # is noted before that optimizer frees it. They do nothing outside tracked steps.
        self._grad_hooks = [p.register_post_accumulate_grad_hook(self._note_gradient)
                            for p in dict.fromkeys(model.parameters()) if p.requires_grad] if model is not None else []

    def release(self) -> None:
        """Let go of the model and optimizer, so that they can be freed once their owner drops them; the
        reports stay. (The gradient hooks would otherwise keep this tracker and the model alive together.)"""
        for hook in self._grad_hooks:
            hook.remove()
        self._grad_hooks, self.model, self.optimizer = [], None, None

    def _note_gradient(self, param: torch.Tensor) -> None:
        if self._active and param.grad is not None:
            for t in _plain_tensors(param.grad):
                _mark(f"note::gradients::{storage_id(t.untyped_storage())}")

    def note_gradients(self) -> None:
        """After backward: gradients that no post-accumulate-grad hook saw (a fallback; FSDP2 runs the
        sharded parameters' hooks itself after each reduce-scatter)."""
        if self._active and self.model is not None:
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
        _mark(f"phase::{name}")
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
        """Measure a sampled step with the tracker; on CPU, the step after one (same shapes, no profiler
        records in the way) with the process meter, whose figure joins the sampled step's report."""
        if self.wants(step):
            with self._measured(step) as reports:
                yield
            self.reports.append(reports[0])
        elif (self.device.type == "cpu" and not self._recording and ProcessMeter.available() and self.reports
              and self.reports[-1].step == step - 1 and self.reports[-1].process_peak_bytes is None):
            live_at_start = sum(n for n, _ in self._baseline().values())
            meter = ProcessMeter()
            yield
            self.reports[-1].process_peak_bytes = live_at_start + meter.rise()
        else:
            yield

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure a whole stage (validation, a checkpoint's save or load, evaluation, generation) and
        check it against the budget; each stage keeps its largest measurement. On CPU the process meter
        runs beside the tracker (its figure then includes the profiler's own records, a few KiB a batch)."""
        meter = ProcessMeter() if self.device.type == "cpu" and ProcessMeter.available() else None
        live_at_start = sum(n for n, _ in self._baseline().values()) if meter else 0
        with self._measured(-1, name) as reports:
            yield
        report = reports[0]
        if meter is not None:
            report.process_peak_bytes = live_at_start + meter.rise()
        kept = self.stages.get(name)
        if kept is None or report.budgeted_bytes > kept.budgeted_bytes:
            self.stages[name] = report
        check_budget(self.budget_mib, report)

    @contextlib.contextmanager
    def traced(self, step: int, recorder: AllocationRecorder,
               round_size: Callable[[int], int] = lambda n: n) -> Iterator[list[MemoryReport]]:
        """Like a tracked step, for a step run under fake tensors: the recorder's allocations instead of the
        profiler's, each rounded by `round_size` (a device allocator's rounding), through the same replay."""
        global mark_sink
        baseline = {key: (round_size(n), cat) for key, (n, cat) in self._baseline().items()}
        handles = self._install_hooks()
        recorder.events = []
        self._active, self._recording, mark_sink = True, True, recorder.mark
        out: list[MemoryReport] = []
        try:
            with recorder:
                yield out
                self._note_model_state()
        finally:
            self._active, self._recording, mark_sink = False, False, None
            for handle in handles:
                handle.remove()
        events = [(e[0], e[1], e[2], round_size(e[3]), e[4]) if e[0] == "alloc" else e for e in recorder.events]
        report = _replay(events, baseline, self.device, step)
        report.modules = self._module_table(report)
        self.reports.append(report)
        out.append(report)

    @contextlib.contextmanager
    def _measured(self, step: int, stage: str | None = None) -> Iterator[list[MemoryReport]]:
        cuda = self.device.type == "cuda"
        baseline = self._baseline()
        handles = self._install_hooks()
        snapshot = cuda and stage is None and self.snapshot_path is not None and not self.reports
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            if snapshot:
                torch.cuda.memory._record_memory_history(max_entries=200_000)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self._active = True
        prof = profile(activities=activities, profile_memory=True)
        out: list[MemoryReport] = []
        try:
            with _native_stderr_silenced():
                prof.start()
            try:
                yield out
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
        report = _replay(_profiler_events(prof, self.device), baseline, self.device, step)
        report.stage = stage
        report.modules = self._module_table(report)
        if cuda:
            report.cuda_max_allocated = torch.cuda.max_memory_allocated(self.device)
            report.cuda_max_reserved = torch.cuda.max_memory_reserved(self.device)
            free, total = torch.cuda.mem_get_info(self.device)
            report.cuda_device_used = total - free
            if snapshot:
                self.snapshot_path.parent.mkdir(parents=True, exist_ok=True)
                torch.cuda.memory._dump_snapshot(str(self.snapshot_path))
                torch.cuda.memory._record_memory_history(enabled=None)
        out.append(report)

    def _state_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        if self.model is not None:
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
            # Buffers an optimizer keeps between steps outside its per-parameter state (also those of the
            # per-parameter optimizers inside one stepped in backward).
            for t in attribute_tensors(self.optimizer):
                yield from (("optimizer_state", inner) for inner in _plain_tensors(t))

    def _baseline(self) -> dict[int, tuple[int, str]]:
        live: dict[int, tuple[int, str]] = {}
        for category, t in self._state_tensors():
            if t.device == self.device and t.numel():
                ptr, nbytes = _storage_key(t)
                live.setdefault(ptr, (nbytes, category))
        unviewed = self.grad_bucket_bytes - sum(n for n, category in live.values() if category == "gradients")
        if unviewed > 0:
            live[_UNVIEWED_BUCKETS] = (unviewed, "gradients")
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
                _mark(f"note::{category}::{storage_id(t.untyped_storage())}")

    @staticmethod
    def _note_gathered(module: nn.Module) -> None:
        """FSDP's all-gathered (unsharded) weights are temporaries, even those kept from forward into
        backward: they are not activations, and this rank's parameters are its shards."""
        from torch.distributed.tensor import DTensor

        for p in module.parameters():
            if not isinstance(p, DTensor) and p.numel():
                _mark(f"note::gathered::{storage_id(p.untyped_storage())}")

    def _install_hooks(self) -> list:
        from torch.distributed.tensor import DTensor

        # Every optimizer's step, whoever calls it (the trainer, or a gradient hook stepping in backward).
        handles = [register_optimizer_step_pre_hook(lambda *_: _mark("optimizer_step::enter")),
                   register_optimizer_step_post_hook(lambda *_: _mark("optimizer_step::exit"))]
        if self.model is None:
            return handles
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
        for name, module in _top_level_modules(self.model) if self.model is not None else []:
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


def _profiler_events(prof, device: torch.device) -> Iterator[tuple]:
    """The profiler's record as the replay reads it: ("alloc", time, ptr, bytes, operator),
    ("free", time, ptr) and ("mark", time, text), in time order."""
    events = sorted(_walk(prof.profiler.kineto_results.experimental_event_tree()), key=lambda e: e.start_time_ns)
    dev_type, dev_index = device.type, (device.index or 0)
    for e in events:
        kind = e.typed[0]
        if kind == _EventType.Allocation:
            f = e.typed[1]
            if f.device.type != dev_type or (dev_type != "cpu" and (f.device.index or 0) != dev_index):
                continue
            if f.alloc_size > 0:
                yield ("alloc", e.start_time_ns, f.ptr, f.alloc_size,
                       e.parent.name if e.parent is not None else "(outside operators)")
            else:
                yield ("free", e.start_time_ns, f.ptr)
        elif kind == _EventType.TorchOp and e.name.startswith(_MARK):
            yield ("mark", e.start_time_ns, e.name[len(_MARK):])


def _replay(events, baseline: dict[int, tuple[int, str]], device: torch.device, step: int) -> MemoryReport:
    """Settle each allocation's category from the marks, then replay live bytes per category in time."""
    category: dict[int, str] = {}
    size: dict[int, int] = {}
    live: dict[int, int] = {}  # ptr -> allocation id; tensors alive at the start get negative ids
    for i, (ptr, (nbytes, cat)) in enumerate(baseline.items()):
        live[ptr], category[-(i + 1)], size[-(i + 1)] = -(i + 1), cat, nbytes
    stream: list[tuple[str, int, int | str]] = []
    phase = "other"
    from_forward: set[int] = set()
    origin: dict[int, tuple[str, str]] = {}  # allocation id -> (phase, operator that allocated it)
    in_optimizer_step, from_optimizer_step = 0, set()
    for kind, time_ns, *fields in events:
        if kind == "alloc":
            ptr, nbytes, op = fields
            if (earlier := live.get(ptr)) is not None:
                # Freed where the profiler did not see it (on a thread of its own, e.g. a collective's
                # worker): an address holds one live allocation at a time.
                stream.append(("free", time_ns, earlier))
            alloc_id = len(stream)
            live[ptr], category[alloc_id], size[alloc_id] = alloc_id, "temporaries", nbytes
            origin[alloc_id] = (phase, op)
            if phase == "forward":
                from_forward.add(alloc_id)
            if in_optimizer_step:
                from_optimizer_step.add(alloc_id)
            stream.append(("alloc", time_ns, alloc_id))
        elif kind == "free":
            if (alloc_id := live.pop(fields[0], None)) is not None:
                stream.append(("free", time_ns, alloc_id))
        else:
            mark = fields[0]
            if mark.startswith("note::"):
                _, cat, ptr = mark.split("::")
                alloc_id = live.get(int(ptr))
                if cat == "gathered":
                    from_forward.discard(alloc_id)
                    continue
                # A note only settles what the step allocated: weights saved for backward stay
                # parameters, and a gradient that a later op saves stays a gradient. A gradient
                # made in forward (the chunked loss's head gradient, saved for backward and handed to
                # autograd as the weight's gradient) was a gradient from the moment it was allocated.
                settles = ("temporaries", "activations") if cat == "gradients" else ("temporaries",)
                if alloc_id is not None and category[alloc_id] in settles:
                    category[alloc_id] = cat
            elif mark.startswith("optimizer_step::"):
                in_optimizer_step += 1 if mark == "optimizer_step::enter" else -1
            else:
                if mark.startswith("phase::"):
                    phase = mark.split("::", 1)[1]
                    if phase == "backward":
                        for alloc_id in live.values():
                            if alloc_id in from_forward and category[alloc_id] == "temporaries":
                                category[alloc_id] = "activations"
                stream.append(("mark", time_ns, mark))

    # What an optimizer step allocated and left alive when the step ends, it keeps for the next step.
    for alloc_id in live.values():
        if alloc_id in from_optimizer_step and category[alloc_id] == "temporaries":
            category[alloc_id] = "optimizer_state"

    index = {c: i for i, c in enumerate(CATEGORIES)}
    sizes = [0] * len(CATEGORIES)
    for alloc_id in range(-len(baseline), 0):
        sizes[index[category[alloc_id]]] += size[alloc_id]
    phase, scopes = "other", []
    t0 = stream[0][1] if stream else 0
    best = (sum(sizes), list(sizes), "start")
    best_at = -1  # index in the stream of the event that reached the peak
    phase_best: dict[str, tuple[int, list[int]]] = {}
    phase_starts: dict[str, float] = {}
    module_acts: dict[str, int] = {}
    timeline: list[tuple[float, list[int]]] = [(0.0, list(sizes))]
    for position, (kind, t, ref) in enumerate(stream):
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
            best, best_at = (total, list(sizes), phase), position
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
        temporaries_at_peak=_temporaries_at(stream, best_at, category, size, origin, baseline),
    )


def _temporaries_at(stream, position: int, category: dict[int, str], size: dict[int, int],
                    origin: dict[int, tuple[str, str]], baseline: dict) -> list[dict]:
    """The temporaries alive at the peak, summed by the phase and operator that allocated them."""
    alive = {-(i + 1) for i, (_, (_, cat)) in enumerate(baseline.items()) if cat == "temporaries"}
    for kind, _, ref in stream[:position + 1]:
        if kind == "alloc":
            alive.add(ref)
        elif kind == "free":
            alive.discard(ref)
    groups: dict[tuple[str, str], int] = {}
    for alloc_id in alive:
        if category[alloc_id] == "temporaries":
            key = origin.get(alloc_id, ("start", "(alive when the step started)"))
            groups[key] = groups.get(key, 0) + size[alloc_id]
    rows = sorted(groups.items(), key=lambda kv: -kv[1])
    return [{"phase": phase, "op": op, "bytes": nbytes} for (phase, op), nbytes in rows[:_TEMPORARY_ROWS]]


def meters_note(device: torch.device) -> str:
    """What the difference between the two meters is made of, on this kind of device."""
    if torch.device(device).type == "cuda":
        return ("cuda_max_reserved - peak: the caching allocator's cache (freed blocks it keeps, 2 MiB and "
                "20 MiB segments, sizes rounded up to 512 bytes); cuda_device_used - cuda_max_reserved: the "
                "CUDA context, cuBLAS/cuDNN workspaces outside the allocator, and other processes")
    pinned = "" if ProcessMeter.pinned() else (
        " This process did not start with MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0, so the "
        "process figure also counts freed blocks that glibc kept for reuse.")
    return ("process_peak - peak: memory outside PyTorch's tensors that grew during the step or stage: the "
            "math libraries' buffers (oneDNN/MKL scratch, OpenMP threads), Python objects, the profiler's own "
            "records in a stage (steps take the process meter on the step after a tracked one, without the "
            "profiler), and for a checkpoint's save the serialized copies of the tensors." + pinned)


def stage_entry(report: MemoryReport) -> dict:
    """A stage's figures for memory.json: its peak (the allocator's on CUDA), breakdown and meters."""
    return {"peak_mib": round(report.budgeted_bytes / MiB, 3), "peak_bytes": report.budgeted_bytes,
            "breakdown_mib": {c: round(b / MiB, 3) for c, b in report.breakdown.items()},
            "temporaries_at_peak": report.temporaries_at_peak,
            "meters_mib": {name: round(b / MiB, 3) for name, b in report.meters().items()}}


def stage_summary(tracker: MemoryTracker) -> dict:
    """Every stage the tracker measured, for memory.json."""
    return {"device": str(tracker.device), "budget_mib": tracker.budget_mib,
            "stages": {name: stage_entry(r) for name, r in tracker.stages.items()},
            "meters_note": meters_note(tracker.device)}
