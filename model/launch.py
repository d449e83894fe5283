"""Launch training through torchrun (`torch.distributed.run`) and run it in each rank.

The parent (the Prefect train task, or `memlm train` on a node other than 0) starts torchrun as a
subprocess in its own process group, streams its output (every line prefixed by torchrun with the local
rank, `[default0]:`; each rank's log also lands in `<train dir>/ranks/`), and ends every rank when it is
interrupted, cancelled or killed itself (the kernel's parent-death signal reaches torchrun, which stops
its workers). Each rank runs `python -m model.launch SPEC`: the training of model/train.py, rank 0 logging
metrics to MLflow and writing the result for the parent.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from model.config import ModelConfig, TrainConfig
from model.train import TrainResult

RESULT_FILE = "result.json"
RANK_LOG_DIR = "ranks"
_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """torchrun ended without a result (a rank failed or was killed)."""


def torchrun_command(cfg: TrainConfig, spec_file: Path, log_dir: Path | None = None,
                     module: str = "model.launch") -> list[str]:
    """torchrun starting `python -m module spec_file` on each of this node's ranks; with `log_dir`, each
    rank's output also kept there."""
    d = cfg.distributed
    if d.nnodes == 1 and d.rdzv_endpoint is None:
        rendezvous = ["--standalone"]  # a free port on this machine
    else:
        # Static rendezvous: node 0 hosts the store at the endpoint, the others connect to it.
        rendezvous = [f"--nnodes={d.nnodes}", f"--node-rank={d.node_rank}", f"--rdzv-endpoint={d.rdzv_endpoint}"]
    logs = [] if log_dir is None else ["--tee=3", f"--log-dir={log_dir}"]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={d.nproc_per_node}",
            "--max-restarts=0", *logs, "-m", module, str(spec_file)]


def rank_env(cfg: TrainConfig) -> dict[str, str]:
    """The ranks' environment: this checkout's code on their path, and on CPU train.threads each."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[1]),
                                                    env.get("PYTHONPATH")] if p)
    if cfg.device != "cuda":
        env["OMP_NUM_THREADS"] = str(cfg.threads or 1)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_ranks(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """torchrun in a process group of its own (so that `end_ranks` reaches every rank), ended with its parent."""
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    # In the child before exec: if the parent dies (even by SIGKILL), torchrun gets SIGTERM and ends its ranks.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def launch(model_cfg: ModelConfig, cfg: TrainConfig, tokens_dir: Path, out_dir: Path,
           mlflow_run: tuple[str, str] | None = None, echo: Callable[[str], None] = print) -> TrainResult | None:
    """Run the training job's ranks of this node; returns rank 0's result (None on nodes other than 0).
    `mlflow_run` is (tracking URI, run id) for rank 0's metrics."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result_file = out_dir / RESULT_FILE
    if cfg.distributed.node_rank == 0:
        result_file.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="memlm-launch-") as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps({
            "model": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json"),
            "tokens_dir": str(tokens_dir), "out_dir": str(out_dir), "mlflow_run_id": mlflow_run and mlflow_run[1]}))
        env = rank_env(cfg)
        if mlflow_run:  # through the environment, like the servers' secrets: a URI may hold a password
            env["MLFLOW_TRACKING_URI"] = mlflow_run[0]
        log_dir = out_dir / RANK_LOG_DIR / f"node{cfg.distributed.node_rank}"
        proc = start_ranks(torchrun_command(cfg, spec_file, log_dir), env)
        try:
            for line in proc.stdout:
                echo(line.rstrip("\n"))
            code = proc.wait()
        except BaseException:
            end_ranks(proc)
            raise
    if code != 0:
        raise LaunchError(
            f"training ranks failed (torchrun exit {code}); their logs are above and in {log_dir}. "
            "Once what they report is fixed, the same command resumes from the last checkpoint")
    if cfg.distributed.node_rank != 0:
        return None
    data = json.loads(result_file.read_text())
    return TrainResult(**{k: Path(v) if k.endswith(("_dir", "_file")) else v for k, v in data.items()})


def end_ranks(proc: subprocess.Popen) -> None:
    """torchrun and every rank: SIGTERM to the process group, SIGKILL after a grace period."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _rank_main(spec_file: Path) -> None:
    from model.train import train

    spec = json.loads(spec_file.read_text())
    model_cfg = ModelConfig.model_validate(spec["model"])
    cfg = TrainConfig.model_validate(spec["train"])
    rank = int(os.environ["RANK"])
    on_metrics = None
    if rank == 0 and spec["mlflow_run_id"]:
        import mlflow

        run_id = spec["mlflow_run_id"]  # the tracking URI comes in MLFLOW_TRACKING_URI
        on_metrics = lambda metrics, step: mlflow.log_metrics(metrics, step=step, run_id=run_id)  # noqa: E731
    result = train(model_cfg, cfg, Path(spec["tokens_dir"]), Path(spec["out_dir"]), on_metrics=on_metrics)
    if rank == 0:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()}
        out = Path(spec["out_dir"]) / RESULT_FILE
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.rename(out)


if __name__ == "__main__":
    _rank_main(Path(sys.argv[1]))
