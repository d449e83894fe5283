"""The `memlm` command line. Heavy libraries are imported inside commands so that --help stays fast."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect's local (ephemeral) server needs 13-25 s to start on a new database on 2 cores; its default
# patience is 20 s.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# memlm's models unpickle nothing; refuse a pickled pyfunc that found its way into the registry.
os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")

app = typer.Typer(help="memlm: from a website to a registered language model, with as little memory as possible.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: built-in defaults).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Run even if the inputs did not change.")]


def _load(config_path: Path | None):
    from flows.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _servers(config) -> None:
    """Use the servers of `memlm up` (or those the environment names); fail fast when one is down."""
    from flows.servers import ServerError, use_running_servers

    try:
        use_running_servers(config)
    except ServerError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _run_flow(flow_name: str, config_path: Path | None, config=None, **kwargs):
    config = config or _load(config_path)
    _servers(config)
    from flows import pipeline
    from flows.failures import expected_failures, failures_to_run_log

    flow = getattr(pipeline, flow_name)
    with failures_to_run_log(config.run_dir) as log_file:
        try:
            return config, flow(config_path=str(config_path) if config_path else None, config=config, **kwargs)
        except expected_failures() as exc:
            err.print(f"[red]error:[/] {exc} [dim](details: {log_file})[/]", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def _print_outcomes(outcomes) -> None:
    from flows.pipeline import headline

    stages = Table(title="stages", show_header=True)
    stages.add_column("stage")
    stages.add_column("status")
    stages.add_column("time (s)", justify="right")
    for o in outcomes:
        stages.add_row(o.name, "[dim]skipped (inputs unchanged)[/]" if o.skipped else "[green]ran[/]", f"{o.elapsed_s}")
    console.print(stages)
    figures = Table(title="summary", show_header=False)
    for name, value in headline(outcomes).items():
        if value is not None:
            figures.add_row(name, str(value))
    console.print(figures)
    clean = next((o.summary for o in outcomes if o.name == "clean" and "lines_removed" in o.summary), None)
    if clean:
        from corpus.clean import report_rows

        table = Table(title="cleaning steps")
        for col in ("step", "removed", "example"):
            table.add_column(col)
        for row in report_rows(clean):
            table.add_row(row["step"], row["removed"], row["example"])
        console.print(table)
    crawl = next((o.summary for o in outcomes if o.name == "crawl"), None)
    if crawl and crawl.get("skipped"):
        console.print("crawl: no page from " + ", ".join(f"{n} ({reason})" for reason, n in
                                                       sorted(crawl["skipped"].items(), key=lambda kv: -kv[1]))
                      + f"; each URL in {crawl.get('failures_file', 'failures.jsonl')}", highlight=False)
    modules = next((o.details.get("memory", {}).get("modules") for o in outcomes if o.name == "train"), None)
    if modules:
        table = Table(title="memory by module (tracked step)")
        for col in ("module", "params MiB", "activations MiB"):
            table.add_column(col, justify="left" if col == "module" else "right")
        for row in modules:
            table.add_row(row["module"], f"{row['params_bytes'] / 2**20:.2f}", f"{row['activation_bytes'] / 2**20:.2f}")
        console.print(table)
    ranks = next((o.details.get("memory", {}).get("ranks") for o in outcomes if o.name == "train"), None)
    if ranks:
        table = Table(title="memory by rank (tracked step with the highest peak)")
        for col in ("rank", "peak MiB", "parameters", "gradients", "optimizer state", "activations", "temporaries"):
            table.add_column(col, justify="right")
        for row in ranks:
            b = row.get("breakdown") or {}
            table.add_row(str(row["rank"]), f"{row.get('peak_mib') or 0:.1f}",
                          *(f"{b.get(c, 0) / 2**20:.1f}" for c in ("parameters", "gradients", "optimizer_state",
                                                                  "activations", "temporaries")))
        console.print(table)
    samples = next((o.summary.get("samples") for o in outcomes if o.name == "evaluate"), None)
    for sample in samples or []:
        console.print(f"[bold]{sample['prompt']}[/] → {sample['text']!r}", highlight=False)


StrategyOption = Annotated[Optional[str], typer.Option(
    "--strategy", help="train.distributed.strategy: none (one process), ddp or fsdp (through torchrun).")]
NprocOption = Annotated[Optional[int], typer.Option("--nproc-per-node", help="Ranks on this machine.")]
NnodesOption = Annotated[Optional[int], typer.Option("--nnodes", help="Machines in the training job.")]
NodeRankOption = Annotated[Optional[int], typer.Option(
    "--node-rank", help="This machine's index (0 runs the pipeline and logs; others only train).")]
RdzvOption = Annotated[Optional[str], typer.Option("--rdzv-endpoint", help="HOST:PORT of node 0, where the nodes meet.")]


def _with_distributed(cfg, overrides: dict, option: str):
    """The config with train.distributed's fields changed, validated again; an invalid combination exits 2
    with one line that names `option`."""
    from pydantic import ValidationError

    from flows.config import MemlmConfig

    data = cfg.model_dump()
    data["train"]["distributed"].update(overrides)
    try:
        return MemlmConfig.model_validate(data)
    except ValidationError as exc:
        err.print(f"[red]error:[/] {option}: {exc.errors()[0]['msg']}", highlight=False)
        raise typer.Exit(2) from None


def _load_distributed(config_path: Path | None, strategy, nproc_per_node, nnodes, node_rank, rdzv_endpoint):
    """The config with the command line's train.distributed settings, its memory techniques checked
    against them before any rank starts (exit 2, one line)."""
    cfg = _load(config_path)
    given = {"strategy": strategy, "nproc_per_node": nproc_per_node, "nnodes": nnodes, "node_rank": node_rank,
             "rdzv_endpoint": rdzv_endpoint}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides:
        if "strategy" not in overrides and cfg.train.distributed.strategy == "none":
            overrides["strategy"] = "fsdp"  # asking for ranks or nodes asks for a distributed run
        cfg = _with_distributed(cfg, overrides, "train.distributed")
    if cfg.train.distributed.strategy != "none":
        from model.hardware import DeviceError, resolve_device
        from model.techniques import TechniqueError, check

        try:
            check(cfg.train, resolve_device(cfg.train.device))
        except (TechniqueError, DeviceError) as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    return cfg


def _train_other_node(cfg) -> None:
    """A node other than 0 runs only its ranks: node 0 runs the pipeline, logs and registers."""
    from flows.stages import stage_dirs
    from model.launch import LaunchError, launch

    dirs = stage_dirs(cfg)
    try:
        launch(cfg.model, cfg.train, dirs["tokens"], dirs["train"],
               echo=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    except LaunchError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"node {cfg.train.distributed.node_rank}: its ranks finished; node 0 has the results")


@app.command()
def run(config: ConfigOption = None, force: ForceOption = False, strategy: StrategyOption = None,
        nproc_per_node: NprocOption = None, nnodes: NnodesOption = None, node_rank: NodeRankOption = None,
        rdzv_endpoint: RdzvOption = None):
    """Run the whole pipeline: crawl, clean, split, tokenize, train, evaluate and register."""
    cfg = _load_distributed(config, strategy, nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    if cfg.train.distributed.node_rank > 0:
        _train_other_node(cfg)
        return
    _, outcomes = _run_flow("pipeline_flow", config, cfg, force=force)
    _print_outcomes(outcomes)


@app.command()
def train(config: ConfigOption = None, force: ForceOption = False, strategy: StrategyOption = None,
          nproc_per_node: NprocOption = None, nnodes: NnodesOption = None, node_rank: NodeRankOption = None,
          rdzv_endpoint: RdzvOption = None):
    """Train the model (resumes an interrupted run); across processes and machines with --strategy,
    --nproc-per-node, --nnodes, --node-rank and --rdzv-endpoint (or train.distributed in the config)."""
    cfg = _load_distributed(config, strategy, nproc_per_node, nnodes, node_rank, rdzv_endpoint)
    if cfg.train.distributed.node_rank > 0:
        _train_other_node(cfg)
        return
    _, outcome = _run_flow("train_flow", config, cfg, force=force)
    _print_outcomes([outcome])


def _stage_command(name: str, flow_name: str, help_text: str, forceable: bool = True):
    if forceable:
        def command(config: ConfigOption = None, force: ForceOption = False):
            _, outcome = _run_flow(flow_name, config, force=force)
            _print_outcomes([outcome])
    else:
        def command(config: ConfigOption = None):
            _, outcome = _run_flow(flow_name, config)
            _print_outcomes([outcome])
    command.__doc__ = help_text
    app.command(name=name)(command)


_stage_command("crawl", "crawl_flow", "Crawl the configured site into the raw page store.", forceable=False)
_stage_command("clean", "clean_flow", "Extract, filter and deduplicate the crawled pages.")
_stage_command("split", "split_flow", "Split documents into train and validation by URL hash.")
_stage_command("tokenize", "tokenize_flow", "Train the BPE tokenizer and write the token files.")
_stage_command("evaluate", "evaluate_flow", "Evaluate the trained model and register it in MLflow.")


@app.command("serve-site")
def serve_site(directory: Path, port: int = typer.Option(8731, help="Port on 127.0.0.1 (0: any free port).")):
    """Serve a folder of HTML on 127.0.0.1, as the crawl does for `crawl.site_dir`."""
    from crawlers.site_server import SiteServerError, make_server

    try:
        server = make_server(directory, port=port)
    except SiteServerError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print(f"serving {directory} at http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


@app.command()
def ui(config: ConfigOption = None,
       mlflow_port: Annotated[Optional[int], typer.Option(help="MLflow port (default: servers.mlflow_port).")] = None,
       prefect_port: Annotated[Optional[int], typer.Option(help="Prefect port (default: servers.prefect_port).")] = None):
    """Start the MLflow and Prefect servers and UIs as `memlm up` does, in the foreground; Ctrl-C stops
    them (servers `memlm up` had already started keep running)."""
    cfg = _load(config)
    ports = {k: v for k, v in (("mlflow_port", mlflow_port), ("prefect_port", prefect_port)) if v is not None}
    cfg = cfg.model_copy(update={"servers": cfg.servers.model_copy(update=ports)})
    from flows.servers import ServerError, down as stop, recorded, up as start

    already_up = bool(recorded(cfg))
    try:
        servers = start(cfg)
    except ServerError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    try:
        for server in servers.values():
            console.print(f"{server.name} UI: [bold]{server.ui}[/]", highlight=False)
        console.print(f"Runs are in the MLflow experiment [bold]{cfg.mlflow.experiment}[/], models under "
                      f"[bold]{cfg.mlflow.registered_model}[/]; flow runs in Prefect's Runs page. "
                      + ("Started by `memlm up`: `memlm down` stops them." if already_up else "Ctrl-C stops both."),
                      highlight=False)
        if not already_up:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        if not already_up:
            stop(cfg)


@app.command()
def up(config: ConfigOption = None):
    """Start the Prefect server and the MLflow tracking server in the background, and wait until both answer."""
    cfg = _load(config)
    from flows.servers import ServerError, up as start

    try:
        servers = start(cfg)
    except ServerError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for server in servers.values():
        console.print(f"{server.name}: [bold]{server.ui}[/]" + (f"  (pid {server.pid}, log {server.log})" if server.pid else ""))
    console.print("memlm commands now use them; `memlm down` stops them. For other tools:\n"
                  f"  export PREFECT_API_URL={servers['prefect'].url} MLFLOW_TRACKING_URI={servers['mlflow'].url}",
                  highlight=False, soft_wrap=True)
    if credentials := cfg.servers.credentials():
        user = credentials[0]
        console.print(f"  and, both servers asking for the password (never printed here): MLFLOW_TRACKING_USERNAME={user} "
                      f"MLFLOW_TRACKING_PASSWORD=PASSWORD PREFECT_API_AUTH_STRING={user}:PASSWORD", highlight=False,
                      soft_wrap=True)


@app.command()
def down(config: ConfigOption = None):
    """Stop the servers `memlm up` started (and nothing else)."""
    cfg = _load(config)
    from flows.servers import down as stop

    stopped = stop(cfg)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no server of `memlm up` was running")


@app.command()
def deploy(config: ConfigOption = None,
           schedule: bool = typer.Option(True, help="Put the crawl on its cron schedule (else: run it by hand).")):
    """Serve the crawl deployment (on `schedule.crawl_cron`) and the rebuild deployment (triggered by
    memlm.corpus.updated) until stopped. Needs the servers of `memlm up`."""
    cfg = _load(config)
    _servers(cfg)
    if not os.environ.get("PREFECT_API_URL"):
        err.print("[red]error:[/] deployments need a Prefect server: run `memlm up` first (or set PREFECT_API_URL)")
        raise typer.Exit(1)
    from flows.deploy import deployment_names, serve_deployments

    names = deployment_names(cfg)
    console.print(f"serving [bold]{names['crawl']}[/] ({cfg.schedule.crawl_cron if schedule else 'no schedule'}) and "
                  f"[bold]{names['rebuild']}[/] (on memlm.corpus.updated) at {os.environ['PREFECT_API_URL']}; "
                  f"Ctrl-C stops. Start a crawl now: prefect deployment run '{names['crawl']}'", highlight=False)
    serve_deployments(cfg, config, schedule)


@app.command()
def models(config: ConfigOption = None,
           name: Annotated[Optional[str], typer.Option(help="Registered model (default: mlflow.registered_model).")] = None):
    """List the registered model's versions with their aliases and figures."""
    cfg = _load(config)
    _servers(cfg)
    import mlflow

    from flows.registry import list_versions
    from flows.tracking import use_store

    model_name = name or cfg.mlflow.registered_model
    use_store(cfg)
    try:
        rows = list_versions(model_name)
    except mlflow.exceptions.MlflowException:
        err.print(f"[red]error:[/] no registered model {model_name!r} in {cfg.mlflow.shown_tracking_uri()}; "
                  "`memlm run` registers one")
        raise typer.Exit(1) from None
    table = Table(title=f"{model_name} ({cfg.mlflow.shown_tracking_uri()})")
    for col in ("version", "aliases", "bits/byte (own val)", "bits/byte (current val)", "decision", "run"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["version"], ", ".join(r["aliases"]), r["bits_per_byte"] or "", r["bits_per_byte_current_val"] or "",
                      r["promotion"], r["run_id"] or "")
    console.print(table)
    console.print(f"load one: mlflow.pyfunc.load_model('models:/{model_name}@champion')", highlight=False)


@app.command()
def plan(
    config: ConfigOption = None,
    budget: Annotated[Optional[str], typer.Option("--budget", "-b", help="Memory the run may use: 300MiB, 1.5GiB, 512MB (a bare number is MiB; default: train.memory_budget_mib).")] = None,
    lossy: bool = typer.Option(False, help="Also try changes that alter training: Adafactor, no gradient clipping."),
    try_all: bool = typer.Option(False, "--all", help="Try every candidate, not only up to the first that fits."),
    write: Annotated[Optional[Path], typer.Option(help="Write the config with the chosen settings to this YAML file.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every trial's figures to this file.")] = None,
    meter: str = typer.Option("tensors", help="What the budget limits: tensors (live tensor bytes; on CUDA the "
                              "allocator's allocated peak) or process (on CPU the resident set; on CUDA the "
                              "allocator's reserved memory)."),
    predict: bool = typer.Option(False, help="Predict each candidate's peak from one step traced under fake tensors "
                                 "(no memory, seconds; any model size) instead of running steps."),
    device_kind: Annotated[Optional[str], typer.Option("--device", help="With --predict: plan for cpu or cuda "
                           "(default: train.device), a device this machine need not have.")] = None,
    world_size: Annotated[Optional[int], typer.Option("--world-size", min=1, help="Plan each rank of N (default: "
                          "train.distributed): measured by N torchrun ranks where this machine runs them, "
                          "otherwise predicted; train.distributed.strategy none becomes fsdp.")] = None,
):
    """Fit training into a memory budget: try memory techniques a few steps each, from the fastest kind on."""
    import json
    import os
    import sys

    import torch
    import yaml

    from model.memory import PROCESS_METER_ENV, ProcessMeter

    if meter not in ("tensors", "process"):
        err.print(f"[red]error:[/] --meter is tensors or process, got {meter!r}", highlight=False)
        raise typer.Exit(2)
    if predict and meter != "tensors":
        err.print("[red]error:[/] --predict predicts tensor bytes: leave --meter at tensors", highlight=False)
        raise typer.Exit(2)
    if device_kind is not None and (not predict or device_kind not in ("cpu", "cuda")):
        err.print("[red]error:[/] --device is cpu or cuda, and goes with --predict (a measured plan runs on "
                  "train.device)", highlight=False)
        raise typer.Exit(2)
    if meter == "process" and not ProcessMeter.pinned():
        # glibc reads its mmap threshold once, as the process starts: start again with it pinned, so that
        # freed blocks leave the resident set at once and the meter sees only what is in use.
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **PROCESS_METER_ENV})

    from model.arch import config_for
    from model.hardware import resolve_device
    from model.plan import MiB, PlanRequestError, parse_size
    from model.plan import plan as make_plan

    cfg = _load(config)
    if world_size is not None:
        strategy = "none" if world_size == 1 else \
            "fsdp" if cfg.train.distributed.strategy == "none" else cfg.train.distributed.strategy
        cfg = _with_distributed(cfg, {"strategy": strategy, "nproc_per_node": world_size, "nnodes": 1, "node_rank": 0,
                                      "rdzv_endpoint": None}, f"--world-size {world_size}")
    ranks = cfg.train.distributed
    if budget is None:
        if cfg.train.memory_budget_mib is None:
            err.print("[red]error:[/] give --budget (for example --budget 300MiB) or set train.memory_budget_mib "
                      "in the config", highlight=False)
            raise typer.Exit(2)
        budget = f"{cfg.train.memory_budget_mib:g}MiB"
    try:
        budget_bytes = parse_size(budget)
    except ValueError as exc:
        err.print(f"[red]error:[/] --budget: {exc}", highlight=False)
        raise typer.Exit(2) from None
    manifest = Path(cfg.run_dir) / "tokens" / "manifest.json"
    vocab = json.loads(manifest.read_text())["vocab_size"] if manifest.exists() else cfg.tokenize.vocab_size
    device = torch.device(device_kind) if device_kind else resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    arch_cfg = config_for(cfg.model, vocab)
    console.print(f"planning {cfg.model.arch} ({cfg.model.n_layer} layers, width {cfg.model.n_embd}, vocabulary {vocab}"
                  f"{'' if manifest.exists() else ' from tokenize.vocab_size'}), batch {cfg.train.batch_size} x "
                  f"{cfg.model.block_size} tokens on {device}, budget {budget_bytes / MiB:.4g} MiB", highlight=False)
    if ranks.world_size > 1:
        console.print(f"per rank: {ranks.world_size} ranks, {ranks.strategy}, {cfg.train.rank_batch_size} sequences "
                      "each a step", highlight=False)
    with console.status("") as status:
        try:
            result = make_plan(arch_cfg, cfg.train, budget_bytes, device, lossy, try_all,
                               on_trial=lambda t: status.update(f"tried {t.name}"), meter=meter, predict_only=predict)
        except PlanRequestError as exc:  # e.g. N ranks this machine cannot run are predicted: tensor bytes only
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
    how = ("predicted" if result.predicted else f"{meter} meter") + (
        f", per rank of {result.world_size}: " + ("rank 0, from one process" if result.predicted
                                                  else f"measured by {result.world_size} torchrun ranks")
        if result.world_size > 1 else "")
    table = Table(title=f"memory plan: budget {budget_bytes / MiB:.4g} MiB ({how}) on {device}")
    columns = ["candidate", "peak MiB", *(["each rank"] if result.world_size > 1 and not result.predicted else []),
               "largest stage", "activations", "optimizer", "tokens/s", "val loss vs fp32 AdamW", ""]
    for col in columns:
        table.add_column(col, justify="left" if col in ("candidate", "") else "right")
    for trial in result.trials:
        name = trial.name + (" (lossy)" if trial.lossy else "")
        if trial.refused:
            table.add_row(name, *[""] * (len(columns) - 2), f"[yellow]refused:[/] {trial.refused}")
            continue
        verdict = "[green]fits[/]" if trial.fits(budget_bytes) else "[red]over[/]"
        if trial is result.chosen:
            verdict, name = "[bold green]chosen[/]", f"[bold]{name}[/]"
        each = [" / ".join(f"{b / MiB:.0f}" for b in trial.rank_peaks)] if "each rank" in columns else []
        table.add_row(name, f"{trial.peak_bytes / MiB:.1f}", *each, trial.largest_stage.replace("_", " "),
                      f"{trial.breakdown.get('activations', 0) / MiB:.1f}",
                      f"{trial.breakdown.get('optimizer_state', 0) / MiB:.1f}",
                      "predicted" if trial.tokens_per_s is None else f"{trial.tokens_per_s:,.0f}",
                      "" if not trial.lossy else "not measured" if trial.quality_cost is None
                      else f"{trial.quality_cost:+.2%}", verdict)
    console.print(table)
    if result.world_size > 1:
        from model.plan import shard_arithmetic

        console.print(shard_arithmetic(arch_cfg, cfg.train), highlight=False)
    if result.predicted:
        from model.plan import PREDICTION_ASSUMES

        console.print(f"predicted, assuming {PREDICTION_ASSUMES}", highlight=False)
    if json_out:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))
    if result.chosen is None:
        measured = [t for t in result.trials if t.peak_bytes is not None]
        smallest = min(measured, key=lambda t: t.peak_bytes, default=None)
        hint = "" if lossy else "; --lossy also tries Adafactor and no gradient clipping"
        err.print(f"[red]error:[/] nothing tried fits {budget_bytes / MiB:.4g} MiB"
                  + (f" (the least was {smallest.peak_bytes / MiB:.1f} MiB: {smallest.name})" if smallest else "")
                  + f"{hint}; or make the model (model.n_embd, n_layer), model.block_size or train.batch_size "
                  "smaller", highlight=False)
        raise typer.Exit(1)
    section = {"grad_clip": result.train.grad_clip} if result.train.grad_clip != cfg.train.grad_clip else {}
    section["memory"] = result.train.memory.model_dump(mode="json", exclude_defaults=True)
    if world_size is not None:
        section["distributed"] = result.train.distributed.model_dump(mode="json", exclude_defaults=True)
    speed = "" if result.chosen.tokens_per_s is None else f" at {result.chosen.tokens_per_s:,.0f} tokens/s"
    console.print(f"chosen: [bold]{result.chosen.name}[/], {result.chosen.peak_bytes / MiB:.1f} MiB{speed}"
                  " (every stage's peak). In the config:", highlight=False)
    console.print(yaml.safe_dump({"train": section}, sort_keys=False).rstrip(), highlight=False)
    if write:
        data = (yaml.safe_load(config.read_text()) or {}) if config else {}
        train = data.setdefault("train", {})
        train.update(section)
        train["memory_budget_mib"] = round(budget_bytes / MiB, 3)  # the run then stops if it goes over
        write.write_text(f"# memlm plan --budget {budget}: {result.chosen.name}, "
                         f"{'predicted' if result.predicted else 'measured'} {result.chosen.peak_bytes / MiB:.1f} MiB "
                         f"on {device}{' per rank' if result.world_size > 1 else ''}\n"
                         + yaml.safe_dump(data, sort_keys=False))
        console.print(f"wrote {write} (with train.memory_budget_mib, which the run checks); run it with: "
                      f"memlm run -c {write}", highlight=False)


@app.command()
def generate(
    model: Annotated[str, typer.Option("--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a run id, or a checkpoint folder.")],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text to continue.")] = None,
    prompts_file: Annotated[Optional[Path], typer.Option("--prompts-file", help="One prompt a line; generates for each.")] = None,
    max_new_tokens: int = 80, temperature: float = 0.8, top_k: int = 40,
    top_p: float = typer.Option(1.0, help="Nucleus sampling: keep the likeliest tokens up to this probability, in (0, 1]."),
    seed: int = typer.Option(0, help="Seed for reproducible sampling (each prompt of a file gets seed + its index)."),
    stop: Annotated[Optional[list[str]], typer.Option("--stop", help="Stop before this text (repeatable).")] = None,
    stream: bool = typer.Option(True, help="Print tokens as they are sampled."),
    weights: str = typer.Option("fp32", help="Weights for generation: fp32; fp16 (half the memory, about "
                                "fp32's speed on a CPU); bf16; int8 (weight-only, about a quarter of fp32's)."),
    config: ConfigOption = None,
):
    """Generate text from a registered model, a run, or a checkpoint folder."""
    cfg = _load(config)
    if not Path(model).is_dir():
        _servers(cfg)
    from model.generate import check_sampling, stream_text
    from model.quantize import INFERENCE_WEIGHTS, inference_weights

    try:
        check_sampling(temperature, top_k, top_p, max_new_tokens)
        if weights not in INFERENCE_WEIGHTS:
            raise ValueError(f"--weights must be one of {', '.join(INFERENCE_WEIGHTS)}, got {weights!r}")
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if (prompt is None) == (prompts_file is None):
        err.print("[red]error:[/] give exactly one of --prompt and --prompts-file")
        raise typer.Exit(2)
    prompts = [prompt] if prompt is not None else [
        line for line in prompts_file.read_text().splitlines() if line.strip()]
    gpt, tokenizer = _load_generator(model, cfg)
    inference_weights(gpt, weights)
    for i, text in enumerate(prompts):
        pieces = stream_text(gpt, tokenizer, text, max_new_tokens, temperature, top_k, top_p, seed + i, stop or ())
        if stream:
            console.print(text, end="", highlight=False, style="bold")
            for piece in pieces:
                console.print(piece, end="", highlight=False, soft_wrap=True)
            console.print()
        else:
            console.print(text + "".join(pieces), highlight=False, soft_wrap=True)


def _load_generator(reference: str, cfg):
    """(GPT, tokenizer) from a checkpoint folder, or from an MLflow model reference or run id."""
    import re

    from tokenizers import Tokenizer

    from model.checkpoint import has_checkpoint, load_lm

    folder = Path(reference)
    if folder.is_dir() and has_checkpoint(folder):
        tokenizer_file = next((f for f in (folder / "tokenizer.json", folder.parent.parent / "tokens" / "tokenizer.json",
                                           Path(cfg.run_dir) / "tokens" / "tokenizer.json") if f.exists()), None)
        if tokenizer_file is None:
            err.print(f"[red]error:[/] no tokenizer.json beside {folder} or in {cfg.run_dir}/tokens")
            raise typer.Exit(2)
        return load_lm(folder), Tokenizer.from_file(str(tokenizer_file))
    uri = f"runs:/{reference}/model" if re.fullmatch(r"[0-9a-f]{32}", reference) else reference
    if not uri.startswith(("models:/", "runs:/")):
        err.print(f"[red]error:[/] {reference!r} is not a checkpoint folder, a models:/ or runs:/ reference, "
                  "or a run id")
        raise typer.Exit(2)
    from flows.tracking import use_store
    from model.pyfunc import load_registered

    use_store(cfg)
    try:
        return load_registered(uri)
    except Exception as exc:  # MLflow raises several types for a reference it cannot resolve
        err.print(f"[red]error:[/] cannot load model {uri!r} from {cfg.mlflow.shown_tracking_uri()}: "
                  f"{str(exc).splitlines()[0]}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
