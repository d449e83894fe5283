"""The README's demo figures: `make demo`'s run, its rerun, the GPT-versus-RNN pair and the demo's two
`memlm plan` commands, each made by the same command the README shows.

    python bench/demo.py --json bench/results/demo-cpu.json

Each run starts from an empty run folder and MLflow store (copies of configs/demo.yaml and
configs/demo-rnn.yaml pointed at a temporary folder; same site, cleaning, split and tokenizer), and is
timed as the whole `memlm run` command, Prefect's local server start included. The GPT run is then run
again to time the rerun that finds the site unchanged. Takes about 15 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MEMLM = str(Path(sys.executable).with_name("memlm"))
# name of the README row -> config
RUNS = {"GPT (4 layers, width 256)": "configs/demo.yaml",
        "RNN with attention (2 layers, width 456)": "configs/demo-rnn.yaml"}
PLANS = {  # the README's command -> its arguments after the config
    "memlm plan -c configs/demo.yaml --budget 150MiB": ["--budget", "150MiB"],
    "memlm plan -c configs/demo.yaml --budget 100MiB --lossy --all": ["--budget", "100MiB", "--lossy", "--all"],
}


def isolated_config(config: str, folder: Path) -> Path:
    """The config with its run folder and MLflow store in `folder`, so that the run starts from nothing."""
    data = yaml.safe_load((ROOT / config).read_text())
    data["run_dir"] = str(folder / "run")
    data.setdefault("mlflow", {})["tracking_uri"] = f"sqlite:///{folder / 'mlflow.db'}"
    path = folder / Path(config).name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def timed(command: list[str], log: Path) -> float:
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-40:])
        sys.exit(f"{tail}\n{' '.join(command)} failed with exit status {done.returncode} (its output's end above)")
    return round(time.monotonic() - started, 1)


def run_row(name: str, config: str, folder: Path, rerun: bool) -> dict:
    folder.mkdir(parents=True)
    path = isolated_config(config, folder)
    print(f"{name}: memlm run -c {config}", flush=True)
    row = {"name": name, "config": config, "command_s": timed([MEMLM, "run", "-c", str(path)], folder / "run.log")}
    row.update(json.loads((folder / "run" / "summary.json").read_text()))
    row["name"] = name  # the summary's own name is the config's
    if rerun:
        row["rerun_command_s"] = timed([MEMLM, "run", "-c", str(path)], folder / "rerun.log")
        again = json.loads((folder / "run" / "summary.json").read_text())
        row["rerun_stages"] = again["stages"]
    return row


def plan_row(command: str, arguments: list[str], folder: Path) -> dict:
    """The command on configs/demo.yaml with an empty run folder: the vocabulary is tokenize.vocab_size's,
    not whatever a local run's tokenizer left in runs/."""
    out = folder / f"plan-{len(list(folder.glob('plan-*.json')))}.json"
    print(command, flush=True)
    plan_folder = folder / out.stem
    plan_folder.mkdir()
    config = isolated_config("configs/demo.yaml", plan_folder)
    seconds = timed([MEMLM, "plan", "-c", str(config), *arguments, "--json", str(out)], out.with_suffix(".log"))
    plan = json.loads(out.read_text())
    chosen = next((t for t in plan["trials"] if t["name"] == plan["chosen"]), None)
    return {"name": command, "command_s": seconds, "tried": len(plan["trials"]),
            "tried_before_chosen_mib": [t["peak_mib"] for t in plan["trials"][:plan["trials"].index(chosen)]]
            if chosen else None, **plan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--plans-only", action="store_true",
                        help="run only the plan commands, keeping the runs already in the --json file")
    args = parser.parse_args()
    if args.plans_only and not (args.json and args.json.exists()):
        parser.error("--plans-only keeps the runs of an existing --json file; give one")

    with tempfile.TemporaryDirectory(prefix="memlm-demo-bench-") as tmp:
        folder = Path(tmp)
        runs = json.loads(args.json.read_text())["runs"] if args.plans_only else [
            run_row(name, config, folder / f"run{i}", rerun=i == 0) for i, (name, config) in enumerate(RUNS.items())]
        plans = [plan_row(command, arguments, folder) for command, arguments in PLANS.items()]

    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python bench/demo.py --json bench/results/demo-cpu.json", "runs": runs, "plans": plans}
    for row in runs:
        f = row["figures"]
        print(f"{row['name']}: {f['pages_crawled']} pages, {f['docs_kept']} documents, {f['parameters']} parameters, "
              f"{f['steps']} steps, bits per byte {f['bits_per_byte']:.4f}, {f['tokens_per_s']:.0f} tokens/s, "
              f"peak {f['peak_memory_mib']} MiB, {row['command_s']} s"
              + (f", rerun {row['rerun_command_s']} s" if "rerun_command_s" in row else ""))
    for row in plans:
        chosen = next((t for t in row["trials"] if t["name"] == row["chosen"]), None)
        print(f"{row['name']}: {len(row['trials'])} tried, chosen {row['chosen']}"
              + (f" at {chosen['peak_mib']} MiB, {chosen['tokens_per_s']} tokens/s" if chosen else "")
              + f", {row['command_s']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
