"""Pictures people would rather look at than read: loss curves and a step's memory timeline."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model.memory import CATEGORIES, MiB  # noqa: E402

CATEGORY_COLORS = {"parameters": "#2e7d32", "gradients": "#1565c0", "optimizer_state": "#f9a825",
                   "activations": "#c62828", "temporaries": "#8e8e8e"}


def loss_curve(history_file: Path, out_file: Path) -> Path:
    rows = [json.loads(line) for line in Path(history_file).read_text().splitlines() if line.strip()]
    train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    val = [(r["step"], r["val/loss"]) for r in rows if "val/loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train", lw=1.2)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", lw=1.5)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file


def memory_timeline(memory: dict, out_file: Path) -> Path:
    """Stacked live memory by category through one tracked step, with the phases marked."""
    timeline = memory.get("timeline") or []
    fig, ax = plt.subplots(figsize=(9.5, 4.2))
    if timeline:
        times = [t for t, _ in timeline]
        layers = [[sizes[i] / MiB for _, sizes in timeline] for i in range(len(CATEGORIES))]
        ax.stackplot(times, layers, labels=CATEGORIES, colors=[CATEGORY_COLORS[c] for c in CATEGORIES],
                     step="post", alpha=0.85)
        for phase, start in (memory.get("phase_starts_ms") or {}).items():
            if phase != "other":
                ax.axvline(start, color="black", lw=0.8, ls="--")
                ax.text(start, ax.get_ylim()[1] * 0.97, f" {phase}", va="top", fontsize=8)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    title = f"Memory through step {memory.get('step', '?')} on {memory.get('device', '?')}"
    if "peak_mib" in memory:
        title += f": peak {memory['peak_mib']:.1f} MiB in {memory.get('peak_phase')}"
    ax.set(xlabel="time in step (ms)", ylabel="live tensor memory (MiB)", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return out_file
