"""`memlm plan` over N ranks on this machine: a candidate measured by N torchrun ranks, each under its own
memory tracker (model.plan.measure with the rank's process group), rank 0 writing every rank's figures.

The planner starts torchrun with `-m model.plan_ranks SPEC` for each candidate through model/launch.py,
as `memlm train` starts training (the same environment, threads a rank, and cleanup); a candidate's figure
for each stage is its largest rank's."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from model.arch import config_from_dict
from model.config import TrainConfig
from model.gpt import GPTConfig
from model.launch import end_ranks, rank_env, start_ranks, torchrun_command
from model.plan import Measured, measure
from model.rnn import RNNConfig
from model.techniques import TechniqueError


def runnable_here(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether this machine can run the job's ranks itself: one node, and a device a rank (a GPU each on
    CUDA, a core each on CPU)."""
    d = cfg.distributed
    if d.nnodes > 1:
        return False
    available = torch.cuda.device_count() if device.type == "cuda" else (os.cpu_count() or 1)
    return d.nproc_per_node <= available


def measure_over_ranks(arch_cfg: GPTConfig | RNNConfig, cfg: TrainConfig, device: torch.device,
                       meter: str = "tensors") -> Measured:
    """Run the candidate's ranks; returns each stage's largest rank's peak, every rank's peak in `rank_peaks`."""
    world = cfg.distributed.nproc_per_node
    with tempfile.TemporaryDirectory(prefix="memlm-plan-ranks-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"arch": arch_cfg.to_dict(), "train": cfg.model_dump(mode="json"),
                                    "device": device.type, "meter": meter, "out": str(out)}))
        proc = start_ranks(torchrun_command(cfg, spec, module="model.plan_ranks"), rank_env(cfg))
        try:
            output = proc.communicate()[0]  # stderr goes into stdout
        except BaseException:
            end_ranks(proc)
            raise
        result = json.loads(out.read_text()) if out.exists() else None
    if result is None:
        tail = "\n".join(output.splitlines()[-80:])
        raise RuntimeError(f"the plan's {world} ranks failed (torchrun exit {proc.returncode}):\n{tail}")
    if "out_of_memory" in result:
        raise torch.OutOfMemoryError(result["out_of_memory"])
    if result.get("refused"):
        raise TechniqueError(result["refused"])
    return Measured(**result)


def _rank_main(spec_file: Path) -> None:
    from model.distributed import gather_objects, start, stop

    spec = json.loads(spec_file.read_text())
    cfg = TrainConfig.model_validate(spec["train"])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ranks, device = start(cfg.distributed, torch.device(spec["device"]))
    try:
        mine = dataclasses.asdict(measure(config_from_dict(spec["arch"]), cfg, device, spec["meter"], ranks=ranks))
    except TechniqueError as exc:  # every rank refuses alike, before its first collective
        mine = {"refused": str(exc)}
    except torch.OutOfMemoryError as exc:
        # The other ranks wait in a collective: say why, then end this rank, and torchrun ends them.
        Path(spec["out"]).write_text(json.dumps({"out_of_memory": f"rank {ranks.rank}: {str(exc).splitlines()[0]}"}))
        os._exit(1)
    every = gather_objects(mine, ranks)
    stop(ranks)
    if ranks.is_main:
        refused = next((r["refused"] for r in every if "refused" in r), None)
        # Each stage's largest rank (rank 0 alone gathers the full weights for the checkpoint and runs the
        # stages after training; another rank may have the larger step), the step's breakdown and time from
        # the rank with the largest step.
        stages = {name: max(r["stages"].get(name, 0) for r in every) for name in every[0]["stages"]} if not refused else {}
        largest = {"refused": refused} if refused else {
            **max(every, key=lambda r: r["stages"]["train_step"]), "stages": stages,
            "peak_bytes": max(stages.values()), "rank_peaks": [r["peak_bytes"] for r in every]}
        Path(spec["out"]).write_text(json.dumps(largest))


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
