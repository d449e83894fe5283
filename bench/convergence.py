"""Convergence benchmark: does a memory technique keep AdamW's quality over a real training run?

Every row trains the demo's model shape (configs/demo.yaml: 4 layers, width 256, 4 heads, vocabulary 8192,
sequence 128, batch 16, lr 3e-3 to 3e-4 cosine after 30 warm-up steps, clipping at 1.0 except in the
rows of CLIPPING) on the demo corpus's tokens from the same seed, in the same data order, on the same schedule; only train.memory
differs (in the seed rows, only the seed: how far fp32 AdamW runs differ by chance alone). At the end:
validation loss and bits per byte over the whole validation split. A row "keeps
AdamW's quality" when its final validation loss is within 1% of the fp32 AdamW row's.

    python bench/convergence.py --tokens runs/demo/tokens --steps 500 --json bench/results/convergence-cpu.json
    python bench/convergence.py --rows fp32-adamw,bf16-stochastic --parallel 2 ...
    python bench/convergence.py --progress-only --json bench/results/convergence-cpu-partial.json
        # a run cut short: every row's progress so far (train loss, mean of 25 steps), no validation

Each row runs in its own process (`--parallel` of them at a time, one thread each: the figures do not
depend on the timing). Loss curves go to MLflow (a local sqlite store, `--mlflow`), and one plot of all
rows to `--plot`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BF16_SR = {"precision": "bf16-weights", "bf16_rounding": "stochastic"}
REFERENCE = "fp32-adamw"
# name -> train.memory of the row (the demo's, loss_chunk_size 512, unless it says otherwise)
ROWS: dict[str, dict] = {
    "fp32-adamw": {},
    "vocab-tiled-loss": {"loss_chunk_size": 128, "loss_vocab_chunk_size": 1024},
    "bf16-stochastic": BF16_SR,
    "bf16-kahan": {"precision": "bf16-weights", "bf16_rounding": "kahan"},
    "bf16-nearest": {"precision": "bf16-weights", "bf16_rounding": "nearest"},
    "adamw8bit": {"optimizer": "adamw8bit"},
    "adamw4bit": {"optimizer": "adamw4bit"},
    "adam-mini": {"optimizer": "adam-mini"},
    "muon": {"optimizer": "muon"},
    "adafactor": {"optimizer": "adafactor"},  # the planner's last lossy rung, at the same learning rates
    "bf16-stochastic+adamw8bit": {**BF16_SR, "optimizer": "adamw8bit"},
    "bf16-stochastic+adamw4bit": {**BF16_SR, "optimizer": "adamw4bit"},
    "adamw-fp8": {"optimizer": "adamw-fp8"},
    "bf16-stochastic+adamw-fp8": {**BF16_SR, "optimizer": "adamw-fp8"},
    # The <= 150 MiB memory rows step each weight in backward, which leaves no whole gradient to clip:
    # their optimizer unclipped, and fp32 AdamW unclipped, for what dropping the clipping costs alone; then
    # both stepped in backward with StableAdamW's per-weight update clipping, and with the global norm clip
    # one step late (what train.grad_clip does in backward).
    "fp32-adamw-no-clip": {},
    "bf16-stochastic+adamw-fp8-in-backward": {**BF16_SR, "optimizer": "adamw-fp8", "optimizer_in_backward": True},
    "fp32-adamw-in-backward-update-clip": {"optimizer_in_backward": True},
    "bf16-stochastic+adamw-fp8-in-backward-update-clip": {**BF16_SR, "optimizer": "adamw-fp8",
                                                          "optimizer_in_backward": True},
    "fp32-adamw-in-backward-late-clip": {"optimizer_in_backward": True},
    "bf16-stochastic+adamw-fp8-in-backward-late-clip": {**BF16_SR, "optimizer": "adamw-fp8",
                                                        "optimizer_in_backward": True},
}
# How a row clips, when not by the gradients' global norm (train.grad_clip, the demo's 1.0): not at all,
# or by update clipping (train.update_clip, grad_clip 0).
CLIPPING = {"fp32-adamw-no-clip": "none", "bf16-stochastic+adamw-fp8-in-backward": "none",
            "fp32-adamw-in-backward-update-clip": "update",
            "bf16-stochastic+adamw-fp8-in-backward-update-clip": "update"}
# Rows again with other seeds (weights' initialization and data order), each compared with fp32 AdamW of
# its own seed: the fp32 AdamW rows' spread is the noise floor for the verdicts.
SEEDED = {f"{base}-seed-{seed}": (base, seed)
          for base in (REFERENCE, "bf16-stochastic+adamw8bit", "bf16-stochastic+adamw-fp8")
          for seed in (1, 2)}
ROWS.update({name: ROWS[base] for name, (base, _) in SEEDED.items()})
KEEPS_QUALITY = 0.01  # relative validation loss over the reference's


def run_row(name: str, tokens_dir: Path, steps: int) -> dict:
    import torch

    from flows.config import load_config
    from model.config import TrainConfig
    from model.data import TokenFile
    from model.evaluate import bits_per_byte, evaluate_loss
    from model.gpt import GPT, GPTConfig
    from model.step import TrainStep
    from model.train import lr_at

    torch.set_num_threads(1)
    demo = load_config(ROOT / "configs/demo.yaml")
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    model_cfg = demo.model
    train_cfg = TrainConfig.model_validate({
        **demo.train.model_dump(), "max_steps": steps, "max_minutes": None, "memory_sample_steps": [],
        "memory": ROWS[name], "seed": SEEDED[name][1] if name in SEEDED else demo.train.seed,
        "grad_clip": demo.train.grad_clip if name not in CLIPPING else 0.0,
        "update_clip": CLIPPING.get(name) == "update"})
    torch.manual_seed(train_cfg.seed)
    model = GPT(GPTConfig(vocab_size=manifest["vocab_size"], block_size=model_cfg.block_size,
                          n_layer=model_cfg.n_layer, n_head=model_cfg.n_head, n_embd=model_cfg.n_embd))
    device = torch.device("cpu")
    train_tokens = TokenFile(tokens_dir / "train.bin", model_cfg.block_size)
    val_tokens = TokenFile(tokens_dir / "val.bin", model_cfg.block_size)
    data_rng = torch.Generator().manual_seed(train_cfg.seed)
    train_step = TrainStep(model, train_cfg, device)
    curve = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        train_step.set_lr(lr_at(step, train_cfg))
        loss, _ = train_step(step, lambda n: train_tokens.random_batch(n, data_rng, device))
        curve.append(loss)
        if step % 25 == 0:  # progress, for a run that is watched or cut short
            print(json.dumps({"row": name, "step": step, "s": round(time.perf_counter() - start, 1),
                              "train_loss_mean_25": round(sum(curve[-25:]) / 25, 4)}), file=sys.stderr, flush=True)
    train_s = time.perf_counter() - start
    val_loss, val_count = evaluate_loss(model, val_tokens, train_cfg.batch_size, device)
    val = manifest["splits"]["val"]
    result = {
        "name": name, "memory": ROWS[name], "seed": train_cfg.seed, "grad_clip": train_cfg.grad_clip,
        "update_clip": train_cfg.update_clip, "steps": steps,
        "val_loss": round(val_loss, 5), "val_tokens": val_count,
        "val_bits_per_byte": round(bits_per_byte(val_loss, val["tokens"], val["bytes"]), 5),
        "final_train_loss": round(sum(curve[-20:]) / 20, 5), "train_s": round(train_s, 1),
        "train_loss_curve": [round(x, 4) for x in curve],
    }
    return result


def log_to_mlflow(result: dict, mlflow_uri: str, experiment: str) -> None:
    """One MLflow run per row: its parameters, loss curve and final figures (from the main process only,
    so that parallel rows never write the sqlite store at once)."""
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=result["name"]) as run:
        mlflow.log_params({"row": result["name"], "steps": result["steps"],
                           **{f"memory.{k}": v for k, v in result["memory"].items()}})
        now = int(time.time() * 1000)
        metrics = [Metric("train/loss", x, now, i + 1) for i, x in enumerate(result["train_loss_curve"])]
        client = mlflow.tracking.MlflowClient()
        for i in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[i:i + 1000])
        mlflow.log_metrics({"val/loss": result["val_loss"], "val/bits_per_byte": result["val_bits_per_byte"],
                            "train_s": result["train_s"]})


def plot(rows: list[dict], out_file: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    window = 20
    for r in rows:
        curve = r["train_loss_curve"]
        smooth = [sum(curve[max(0, i - window + 1):i + 1]) / len(curve[max(0, i - window + 1):i + 1])
                  for i in range(len(curve))]
        ax.plot(range(1, len(curve) + 1), smooth, lw=1.1, label=f"{r['name']} (val {r['val_loss']:.3f})")
    ax.set(xlabel="step", ylabel=f"train loss, mean of {window} steps (nats/token)",
           title="Convergence on the demo corpus (demo model shape)", ylim=(None, min(8.0, ax.get_ylim()[1])))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=110)


def collect_progress(log_dir: Path, json_file: Path | None, plot_file: Path) -> None:
    """What rows cut short measured: (step, train loss mean of the 25 steps before it) from their logs."""
    rows = []
    for log in sorted(log_dir.glob("*.progress.log")):
        points = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"row"')]
        if points:
            rows.append({"name": points[0]["row"], "memory": ROWS[points[0]["row"]], "partial": True,
                         "steps_done": points[-1]["step"], "seconds": points[-1]["s"],
                         "train_loss_mean_25": {p["step"]: p["train_loss_mean_25"] for p in points}})
    def seed(name: str) -> int | None:
        return SEEDED[name][1] if name in SEEDED else None

    refs = {seed(r["name"]): r for r in rows if r["name"].split("-seed-")[0] == REFERENCE}
    for r in rows:
        ref = refs.get(seed(r["name"]))  # the reference of the same seed
        if ref is not None:
            common = max(set(r["train_loss_mean_25"]) & set(ref["train_loss_mean_25"]), default=None)
            if common is not None:
                r["at_step"] = common
                r["train_loss_vs_fp32_adamw"] = round(
                    r["train_loss_mean_25"][common] / ref["train_loss_mean_25"][common] - 1, 5)
        print(json.dumps({k: v for k, v in r.items() if k != "train_loss_mean_25"}))
    if json_file:
        json_file.write_text(json.dumps(rows, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows:
        steps = sorted(r["train_loss_mean_25"])
        ax.plot(steps, [r["train_loss_mean_25"][s] for s in steps], marker="o", ms=3, label=r["name"])
    ax.set(xlabel="step", ylabel="train loss, mean of 25 steps (nats/token)",
           title="Convergence on the demo corpus (cut short: see the JSON)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(plot_file, dpi=110)


def summarize(rows: list[dict], default_seed: int) -> list[dict]:
    """Each row against the fp32 AdamW row of the same seed."""
    refs = {r.get("seed", default_seed): r for r in rows
            if "error" not in r and r["name"].split("-seed-")[0] == REFERENCE}
    for r in rows:
        ref = refs.get(r.get("seed", default_seed))
        r.pop("val_loss_vs_fp32_adamw", None), r.pop("keeps_adamw_quality", None)  # never against an old reference
        if ref is not None and "error" not in r:
            r["val_loss_vs_fp32_adamw"] = round(r["val_loss"] / ref["val_loss"] - 1, 5)
            r["keeps_adamw_quality"] = r["val_loss"] <= ref["val_loss"] * (1 + KEEPS_QUALITY)
    # Where fp32 AdamW unclipped ran too, every row also against it: what an unclipped row's technique
    # costs, clipping aside, and how much of the clipping's gain another way of clipping keeps.
    unclipped = next((r for r in rows if r["name"] == "fp32-adamw-no-clip" and "error" not in r), None)
    for r in rows:
        r.pop("val_loss_vs_fp32_adamw_no_clip", None)
        if unclipped is not None and "error" not in r \
                and r.get("seed", default_seed) == unclipped.get("seed", default_seed):
            r["val_loss_vs_fp32_adamw_no_clip"] = round(r["val_loss"] / unclipped["val_loss"] - 1, 5)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", help=f"comma-separated rows (default: all); known: {', '.join(ROWS)}")
    parser.add_argument("--tokens", type=Path, default=ROOT / "runs/demo/tokens",
                        help="the tokenize stage's output folder (train.bin, val.bin, manifest.json)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=1, help="rows run at a time (one thread each)")
    parser.add_argument("--json", type=Path, help="write the rows here (rows already in it are kept)")
    parser.add_argument("--plot", type=Path, default=ROOT / "bench/results/convergence-cpu.png")
    parser.add_argument("--mlflow", default=f"sqlite:///{ROOT}/runs/convergence/mlflow.db")
    parser.add_argument("--experiment", default="memlm-convergence")
    parser.add_argument("--progress-only", action="store_true",
                        help="run nothing: collect the rows' progress logs (next to the MLflow store) into --json "
                        "and --plot, for a run that was cut short")
    parser.add_argument("--row-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row_worker:
        print(json.dumps(run_row(args.row_worker, args.tokens, args.steps)))
        return
    if args.progress_only:
        collect_progress(Path(args.mlflow.removeprefix("sqlite:///")).parent, args.json, args.plot)
        return
    names = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    if not (args.tokens / "manifest.json").exists():
        parser.error(f"no token files in {args.tokens}: run `memlm tokenize -c configs/demo.yaml` first")
    Path(args.mlflow.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    if args.json and args.json.exists():
        done = {r["name"]: r for r in json.loads(args.json.read_text())}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    from flows.config import load_config

    default_seed = load_config(ROOT / "configs/demo.yaml").train.seed

    def one(name: str) -> dict:
        cmd = [sys.executable, __file__, "--row-worker", name, "--tokens", str(args.tokens), "--steps",
               str(args.steps)]
        progress = Path(args.mlflow.removeprefix("sqlite:///")).parent / f"{name}.progress.log"
        with progress.open("w") as log:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
        if proc.returncode != 0:
            return {"name": name, "error": (progress.read_text().strip().splitlines() or ["failed"])[-1]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(args.parallel) as pool:
        for result in pool.map(one, names):
            done[result["name"]] = result
            if "error" not in result:
                log_to_mlflow(result, args.mlflow, args.experiment)
            print(f"{result['name']}: " + json.dumps({k: v for k, v in result.items() if k != "train_loss_curve"}),
                  file=sys.stderr)
            rows = summarize([done[n] for n in ROWS if n in done], default_seed)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(rows, indent=2))
    rows = [r for r in rows if "error" not in r]
    if rows:
        plot(rows, args.plot)
    for r in rows:
        print(f"{r['name']:28s} val loss {r['val_loss']:.4f}  bpb {r['val_bits_per_byte']:.4f}  "
              f"{r.get('val_loss_vs_fp32_adamw', 0):+.2%}  keeps quality: {r.get('keeps_adamw_quality')}  "
              f"{r['train_s']:.0f} s")


if __name__ == "__main__":
    main()
