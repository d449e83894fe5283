"""Training over 2 ranks with torchrun (gloo on CPU): DDP and FSDP2 match one process on the same global
batch, memory techniques compose or are refused, sharded checkpoints resume at another world size and
after a rank is killed, the per-rank memory report adds up, and two launches form one multi-node job."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from model.launch import launch
from model.train import train

pytestmark = pytest.mark.integration

STEPS = 5
# The best-memory combination that composes with both strategies (optimizer_in_backward is refused under
# ddp, split_head_step under both), with accumulation over 2 micro-batches per rank.
FRUGAL = {"activation_checkpointing": "full", "mlp_chunks": 2, "loss_chunk_size": 64, "micro_batch_size": 2}
# The head's gradient made at the end of backward, in the embedding lookup's (accumulated over micro-batches).
LATE_HEAD = {"loss_chunk_size": 64, "late_head_grad": True, "micro_batch_size": 2}
SETTINGS = {"plain": {}, "frugal": FRUGAL, "late-head": LATE_HEAD}
# Under fsdp: each shard stepped in backward, right after its reduce-scatter (no accumulation, no clipping).
IN_BACKWARD = {"activation_checkpointing": "full", "mlp_chunks": 2, "loss_chunk_size": 64,
               "optimizer_in_backward": True}


def _config(corpus, memory: dict | None = None, strategy: str = "none", nproc: int = 2, **train):
    config, _ = corpus
    base = {"max_steps": STEPS, "eval_interval": STEPS, "checkpoint_interval": STEPS, "log_interval": 1,
            "memory_sample_steps": [1], "threads": 1, "memory": memory or {},
            "distributed": {"strategy": strategy, "nproc_per_node": nproc}}
    return config.train.model_validate({**config.train.model_dump(), **base, **train})


def _run(corpus, out_dir, cfg):
    config, parts = corpus
    tokens = parts["tokens"].manifest_file.parent
    if cfg.distributed.strategy == "none":
        return train(config.model, cfg, tokens, out_dir)
    lines = []
    result = launch(config.model, cfg, tokens, out_dir, echo=lambda line: (lines.append(line), print(line)))
    # torchrun's rank prefixes on what the ranks print (which rank prints, e.g. a profiler warning, varies)
    assert any(line.startswith("[default") for line in lines) or not lines
    return result


def _losses(result) -> list[float]:
    return [json.loads(line)["train/loss"] for line in open(result.history_file) if "train/loss" in line]


def _weights(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.checkpoint_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """One process, the same global batch: the reference for each memory setting."""
    root = tmp_path_factory.mktemp("single")
    return {name: _run(corpus, root / name, _config(corpus, memory)) for name, memory in SETTINGS.items()}


# fp32, but the sum over the batch is taken in another order: each rank sums its half, then the all-reduce
# (DDP) or reduce-scatter (FSDP) adds the halves, where one process sums all 8 sequences in its matrix
# multiplies. The two differ in the last bits of a gradient (about 1e-7 relative). AdamW divides each
# gradient by its own running magnitude, so where a gradient element is a near-cancelling sum its rounding
# is amplified up to a whole step (these tests' lr: 0.002 to 0.01 in warm-up): one element of a 5-step
# run moved 2.7e-6 apart while the tensor's mean difference was 1e-8, so no element-wise bound holds on
# every machine. The whole tensor's difference as a share of its norm stays small: at most 2.0e-7 over
# these tests' tensors at 2 threads, 2.5e-6 in one run under two pytest workers (a thread each, other
# matrix-multiply blocking); the bound leaves a factor of 8 over that. A rank stepping on its own half
# batch alone would be off by about the steps' own size on most elements, orders of magnitude more (an
# estimate, not measured).
WEIGHT_RTOL, LOSS_RTOL = 2e-5, 1e-6


def _assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for name, weight in theirs.items():
        off = float(torch.linalg.vector_norm(ours[name] - weight) / torch.linalg.vector_norm(weight))
        assert off <= WEIGHT_RTOL, f"{name}: {off:.2e} of its norm apart"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_two_ranks_match_one_process(corpus, single, tmp_path, strategy, setting):
    reference = single[setting]
    result = _run(corpus, tmp_path, _config(corpus, SETTINGS[setting], strategy))
    assert _losses(result) == pytest.approx(_losses(reference), rel=LOSS_RTOL)
    _assert_same_weights(_weights(result), _weights(reference))


def _train_losses(result) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in map(json.loads, open(result.history_file)) if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    """One process, 6 steps without a stop: the curve a resumed run must continue."""
    return _run(corpus, tmp_path_factory.mktemp("whole") / "run", _config(corpus, max_steps=6, checkpoint_interval=3))


@pytest.mark.parametrize(("first", "then"), [(("fsdp", 2), ("none", 1)), (("ddp", 1), ("fsdp", 2))],
                         ids=["2-ranks-to-1-process", "1-rank-to-2-ranks"])
def test_sharded_checkpoint_resumes_at_another_world_size(corpus, uninterrupted, tmp_path, first, then):
    # max_minutes this small stops the first run right after step 1, with a checkpoint.
    stopped = _run(corpus, tmp_path, _config(corpus, strategy=first[0], nproc=first[1], max_steps=6,
                                             checkpoint_interval=3, max_minutes=1e-6))
    assert stopped.stopped_early and stopped.steps == 1
    assert (tmp_path / "checkpoint_sharded" / "train_state.json").exists()
    assert not list((tmp_path / "checkpoint_sharded").glob("*.distcp"))  # safetensors shards, no pickles
    resumed = _run(corpus, tmp_path, _config(corpus, strategy=then[0], nproc=then[1], max_steps=6,
                                             checkpoint_interval=3))
    assert resumed.resumed_from == 1
    assert _train_losses(resumed) == pytest.approx(_train_losses(uninterrupted), rel=LOSS_RTOL)
    _assert_same_weights(_weights(resumed), _weights(uninterrupted))


def test_a_killed_rank_ends_the_job_and_the_same_command_resumes(corpus, tmp_path):
    import threading
    import time

    import psutil

    from model.launch import LaunchError

    # Memory tracked every step slows the tiny model down enough to kill it mid-run.
    cfg = _config(corpus, strategy="fsdp", max_steps=12, checkpoint_interval=4, memory_sample_every=1)
    outcome = {}

    def first_run():
        try:
            _run(corpus, tmp_path, cfg)
        except LaunchError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=first_run)
    thread.start()
    history = tmp_path / "history.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (history.exists() and '"step": 9,' in history.read_text()):
        time.sleep(0.02)
    ranks = [p for p in psutil.Process().children(recursive=True) if "model.launch" in " ".join(p.cmdline())]
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    victim.kill()
    thread.join(60)
    assert not thread.is_alive() and "error" in outcome  # torchrun ended the job and said so
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
    assert '"step": 12,' not in history.read_text()

    resumed = _run(corpus, tmp_path, cfg)
    assert resumed.resumed_from == 8 and resumed.steps == 12
    reference = _run(corpus, tmp_path / "reference", _config(corpus, max_steps=12, checkpoint_interval=4))
    assert _train_losses(resumed) == pytest.approx(_train_losses(reference), rel=LOSS_RTOL)


def test_fsdp_steps_each_shard_in_backward_as_one_process_does(corpus, tmp_path):
    """FSDP2 runs a sharded parameter's post-accumulate-grad hooks after the reduce-scatter: stepped there,
    each shard sees the gradient averaged over the ranks. The run matches one process stepping in
    backward, and a run stopped after step 1 resumes from its sharded checkpoint (every parameter's
    optimizer state) in one process, on the same curve."""
    single = _run(corpus, tmp_path / "single", _config(corpus, IN_BACKWARD, grad_clip=0.0))
    sharded = _run(corpus, tmp_path / "fsdp", _config(corpus, IN_BACKWARD, "fsdp", grad_clip=0.0))
    assert _losses(sharded) == pytest.approx(_losses(single), rel=LOSS_RTOL)
    _assert_same_weights(_weights(sharded), _weights(single))
    # Every gradient shard was applied and freed in backward: none is left for the optimizer phase.
    at_optimizer = [rank["phases"]["optimizer"]["breakdown"] for rank in sharded.memory["ranks"]]
    assert len(at_optimizer) == 2 and all(r["gradients"] == 0 and r["optimizer_state"] > 0 for r in at_optimizer)

    stopped = _run(corpus, tmp_path / "resumed", _config(corpus, IN_BACKWARD, "fsdp", grad_clip=0.0,
                                                         max_minutes=1e-6))
    assert stopped.stopped_early and stopped.steps == 1
    resumed = _run(corpus, tmp_path / "resumed", _config(corpus, IN_BACKWARD, grad_clip=0.0))
    assert resumed.resumed_from == 1
    assert _train_losses(resumed) == pytest.approx(_train_losses(single), rel=LOSS_RTOL)


# bf16 matrices whose updates are rounded stochastically, and fp8 moments rounded the same way: every
# rank rounds its own replica with random bits.
ROUNDED = {"precision": "bf16-weights", "bf16_rounding": "stochastic", "optimizer": "adamw-fp8"}


def test_ddp_replicas_rounded_stochastically_stay_equal_and_resume_exactly(corpus, tmp_path):
    """Every rank draws the same rounding bits (seeded alike, drawn in the same order), so the replicas stay
    bit for bit equal: the run compares them, weights and optimizer state, at each checkpoint (steps 2, 4
    and 5) and stops if they differ. A run stopped after step 1 resumes (fp8 moments through the sharded
    checkpoint, the generators' states restored) onto the same weights, bit for bit."""
    whole = _run(corpus, tmp_path / "whole", _config(corpus, ROUNDED, "ddp", checkpoint_interval=2))
    assert whole.steps == STEPS and not whole.stopped_early
    stopped = _run(corpus, tmp_path / "resumed", _config(corpus, ROUNDED, "ddp", max_minutes=1e-6))
    assert stopped.stopped_early and stopped.steps == 1
    resumed = _run(corpus, tmp_path / "resumed", _config(corpus, ROUNDED, "ddp"))
    assert resumed.resumed_from == 1 and resumed.steps == STEPS
    assert _train_losses(resumed) == _train_losses(whole)
    resumed_weights, whole_weights = _weights(resumed), _weights(whole)
    assert resumed_weights.keys() == whole_weights.keys()
    assert all(torch.equal(resumed_weights[name], weight) for name, weight in whole_weights.items())


def _drifting_rank(rank: int, port: int, model_cfg, cfg, tokens_dir: str, out_dir: str, outcome_file: str) -> None:
    """One rank of a DDP run as torchrun would start it, rank 1 seeding its generator apart: DDP's start still
    gives it rank 0's weights, but it draws other rounding bits. Writes how the run ended."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if rank == 1:
        seed = torch.manual_seed
        torch.manual_seed = lambda value: seed(value + 1)
    try:
        train(model_cfg, cfg, tokens_dir, out_dir)
        outcome = "finished"
    except RuntimeError as e:
        outcome = str(e)
    with open(f"{outcome_file}.{rank}", "w") as f:
        f.write(outcome)
    os._exit(0)  # both ranks stop at the same check; leaving the process group behind cannot hang either


def test_ddp_ranks_that_draw_other_rounding_bits_stop_before_a_checkpoint(corpus, tmp_path):
    """The run's own check (weights and optimizer state compared at each checkpoint) catches replicas that
    drifted apart and stops every rank, with nothing written."""
    import socket

    import torch.multiprocessing as mp

    from model.train import CHECKPOINT_DIR, SHARDED_CHECKPOINT_DIR

    config, parts = corpus
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(corpus, ROUNDED, "ddp", checkpoint_interval=2)
    out = tmp_path / "run"
    mp.start_processes(_drifting_rank, args=(port, config.model, cfg, str(parts["tokens"].manifest_file.parent),
                                             str(out), str(tmp_path / "outcome")), nprocs=2, start_method="spawn")
    outcomes = [(tmp_path / f"outcome.{rank}").read_text() for rank in range(2)]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0].startswith("after step 2 the DDP ranks hold different weights or optimizer state (")
    assert "drifted apart, so no checkpoint was written" in outcomes[0]
    assert not (out / CHECKPOINT_DIR).exists() and not (out / SHARDED_CHECKPOINT_DIR).exists()


def _replicas_rank(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from model.distributed import Ranks, replicas_that_differ

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(600, 500), torch.nn.Linear(500, 2))
    model[1].to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters())
    model[1](model[0](torch.ones(3, 600)).bfloat16()).float().sum().backward()
    optimizer.step()
    ranks = Ranks("ddp", rank, 2)

    def on_rank_1(change) -> list[str]:
        with torch.no_grad():
            if rank == 1:
                change()
        return replicas_that_differ(model, optimizer, ranks)

    bits = model[0].weight.view(-1).view(torch.int32)
    found = {"equal": replicas_that_differ(model, optimizer, ranks),
             # one bit of one element, past the first slice sent
             "one_bit": on_rank_1(lambda: bits.__setitem__(280_000, bits[280_000] ^ 1))}
    on_rank_1(lambda: bits.__setitem__(280_000, bits[280_000] ^ 1))
    found["swapped"] = on_rank_1(lambda: model[1].weight.copy_(model[1].weight.flip(1)))  # same bits, other order
    on_rank_1(lambda: model[1].weight.copy_(model[1].weight.flip(1)))
    found["moment"] = on_rank_1(lambda: optimizer.state[model[0].bias]["exp_avg_sq"].mul_(1.5))
    found["fsdp"] = replicas_that_differ(model, optimizer, Ranks("fsdp", rank, 2))  # shards differ by design
    # a moment missing on one rank: named, without sending out of step
    found["missing"] = on_rank_1(lambda: optimizer.state[model[0].bias].pop("exp_avg"))
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump(found, f)
    dist.destroy_process_group()


def test_ddp_replicas_are_compared_bit_for_bit():
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/found.json"
        mp.start_processes(_replicas_rank, args=(f"{tmp}/init", out), nprocs=2, start_method="spawn")
        found = [json.load(open(f"{out}.{rank}")) for rank in range(2)]
    assert found[0] == found[1]  # every rank reaches the same verdict
    assert found[0] == {"equal": [], "one_bit": ["0.weight"], "swapped": ["1.weight"],
                        "moment": ["0.bias (exp_avg_sq)"], "fsdp": [], "missing": ["0.bias (exp_avg)"]}


def test_a_refused_combination_exits_2_before_any_rank_starts(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "c.yaml"
    config.write_text("train:\n  grad_clip: 0\n  memory:\n    optimizer_in_backward: true\n")
    run = subprocess.run([sys.executable, "-m", "flows.cli", "train", "-c", str(config), "--strategy", "ddp"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimizer_in_backward" in lines[0] and "strategy ddp" in lines[0]
    assert "torch.distributed.run" not in run.stdout + run.stderr


def test_per_rank_memory_adds_up_to_the_single_process(corpus, tmp_path):
    """Sharding loses nothing and counts nothing twice. At the optimizer phase's peak of step 2 (every
    gradient and all optimizer state alive) the FSDP ranks' parameter and optimizer-state shards sum to the
    single process's bytes, except AdamW's step counters (one fp32 scalar per parameter tensor), which
    every rank keeps; their gradient shards sum to one gradient per parameter. (The single process's
    tracker files the tied head's gradient, made by the chunked loss in forward, under activations, so
    its own gradient figure is short of that by the embedding's size.) DDP's ranks each hold it all."""
    # Step 2: the optimizer state exists from its start; DDP rebuilt its gradient buckets in step 2: step 3.
    runs = {strategy: _run(corpus, tmp_path / strategy, _config(
        corpus, strategy=strategy, memory_sample_steps=[3 if strategy == "ddp" else 2])) for strategy in ("none", "fsdp", "ddp")}

    def at_optimizer(report: dict) -> dict[str, int]:
        return report["phases"]["optimizer"]["breakdown"]

    single = at_optimizer(runs["none"].memory)
    fsdp = [at_optimizer(r) for r in runs["fsdp"].memory["ranks"]]
    n_tensors = 15  # 2 blocks x 6 weights, token and position embeddings, final norm
    assert len(fsdp) == 2 and all(r["parameters"] == single["parameters"] // 2 for r in fsdp)
    assert sum(r["parameters"] for r in fsdp) == single["parameters"]
    assert sum(r["gradients"] for r in fsdp) == single["parameters"]  # fp32 gradients, one per weight
    assert sum(r["optimizer_state"] for r in fsdp) == single["optimizer_state"] + 4 * n_tensors
    for rank in map(at_optimizer, runs["ddp"].memory["ranks"]):  # its gradients: the buckets, one per weight
        assert [rank[c] for c in ("parameters", "gradients", "optimizer_state")] == [
            single["parameters"], single["parameters"], single["optimizer_state"]]
    # The headline is the largest rank's peak, and every rank's peak was logged.
    assert runs["fsdp"].peak_memory_mib == max(r["peak_mib"] for r in runs["fsdp"].memory["ranks"])
    logged = [json.loads(line) for line in open(runs["fsdp"].history_file) if "memory/rank1/peak_mib" in line]
    assert logged and logged[0]["memory/peak_mib"] == max(logged[0][f"memory/rank{r}/peak_mib"] for r in (0, 1))


def test_two_launches_on_127_0_0_1_form_one_job_that_registers(corpus, prefect_api, tmp_path):
    """Node 0's launch (as the train task runs it) and `memlm train --node-rank 1` form one 2-node job;
    its full weights register as today's pyfunc."""
    import os
    import subprocess
    import sys
    import threading

    import mlflow
    import yaml

    from model.pyfunc import log_text_generator
    from tests.conftest import free_port

    config, parts = corpus
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tokens").symlink_to(parts["tokens"].manifest_file.parent)
    endpoint = f"127.0.0.1:{free_port()}"
    node = {"strategy": "fsdp", "nproc_per_node": 1, "nnodes": 2, "rdzv_endpoint": endpoint}
    cfg = _config(corpus, distributed={**node, "node_rank": 0})
    config_file = tmp_path / "memlm.yaml"
    config_file.write_text(yaml.safe_dump({"run_dir": str(run_dir), "model": config.model.model_dump(),
                                           "train": cfg.model_dump(mode="json", exclude={"distributed"})}))
    outcome = {}
    node0 = threading.Thread(target=lambda: outcome.update(result=launch(
        config.model, cfg, run_dir / "tokens", run_dir / "train", echo=print)))
    node0.start()
    node1 = subprocess.run([sys.executable, "-m", "flows.cli", "train", "-c", str(config_file), "--strategy", "fsdp",
                            "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", endpoint],
                           capture_output=True, text=True, timeout=300, env={**os.environ, **prefect_api})
    node0.join(300)
    assert node1.returncode == 0, node1.stdout[-2000:] + node1.stderr[-2000:]
    assert "node 1: its ranks finished" in node1.stdout
    result = outcome["result"]
    assert result.steps == STEPS and result.memory["world_size"] == 2
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = mlflow.create_experiment("two-nodes", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_text_generator(result.checkpoint_dir, parts["tokens"].manifest_file.parent / "tokenizer.json",
                                  "memlm-two-nodes", "The list")
    assert info.registered_model_version == 1
    assert len(mlflow.pyfunc.load_model(info.model_uri).predict(["The list"])) == 1


@pytest.mark.usefixtures("prefect_flows")
def test_the_pipeline_trains_on_two_ranks_in_one_train_task_and_registers(site_url, tmp_path):
    import mlflow

    from flows.pipeline import pipeline_flow
    from tests.conftest import small_config

    config = small_config(tmp_path, site_url, train={
        "max_steps": 10, "threads": 1, "memory_sample_steps": [2], "distributed": {"strategy": "fsdp"}})
    outcomes = {o.name: o for o in pipeline_flow(config=config)}
    assert list(outcomes) == ["crawl", "clean", "split", "tokenize", "train", "evaluate"]
    train_summary = outcomes["train"].summary
    assert train_summary["steps"] == 10 and len(train_summary["peak_memory_per_rank_mib"]) == 2
    assert outcomes["evaluate"].summary["registered_version"] == 1
    # Rank 0 logged every rank's metrics into the train task's MLflow run.
    mlflow.set_tracking_uri(config.mlflow.resolved_tracking_uri())
    metrics = mlflow.MlflowClient().get_run(train_summary["mlflow_run_id"]).data.metrics
    assert {"train/loss", "val/loss", "memory/rank0/peak_mib", "memory/rank1/peak_mib"} <= set(metrics)


def test_killing_the_launching_process_ends_every_rank(corpus, tmp_path):
    """What a cancelled flow run or Ctrl-C does to the train task's process: even SIGKILL of it reaches
    torchrun (the kernel's parent-death signal), which ends its ranks."""
    import subprocess
    import sys
    import time

    import psutil

    config, parts = corpus
    cfg = _config(corpus, strategy="ddp", max_steps=10_000, memory_sample_every=1)
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys\nfrom pathlib import Path\nfrom model.config import ModelConfig, TrainConfig\n"
        "from model.launch import launch\n"
        f"launch(ModelConfig.model_validate_json({config.model.model_dump_json()!r}), "
        f"TrainConfig.model_validate_json({cfg.model_dump_json()!r}), Path({str(parts['tokens'].manifest_file.parent)!r}), "
        f"Path({str(tmp_path / 'run')!r}))\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        history = tmp_path / "run" / "history.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (history.exists() and '"step": 3,' in history.read_text()):
            time.sleep(0.05)
        family = psutil.Process(parent.pid).children(recursive=True)  # torchrun and its 2 ranks
        assert sum(p.cmdline()[1:4] == ["-u", "-m", "model.launch"] for p in family) == 2
    finally:
        parent.kill()
        parent.wait()
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive


def _collectives_rank(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from model.distributed import InPlaceAllGather, InPlaceReduceScatter

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    gradients = torch.arange(2**20, dtype=torch.float32) * (rank + 1)  # 4 MiB, as a block's flat gradients
    shard = torch.arange(2**19, dtype=torch.float32) - rank * 7.5  # this rank's half of a block's weights
    shard[0] = -0.0  # kept as -0.0, not summed into +0.0
    reduced = {"gloo": torch.empty(2**19), "in_place": torch.empty(2**19)}
    gathered = {"gloo": torch.empty(2**20), "in_place": torch.empty(2**20)}
    inputs = {name: gradients.clone() for name in reduced}
    gathered["in_place"][rank * 2**19:(rank + 1) * 2**19] = shard  # FSDP copies its shard into the output
    calls = {
        "reduce_scatter/gloo": lambda: dist.reduce_scatter_tensor(reduced["gloo"], inputs["gloo"]),
        # FSDP2 asks gloo for an average (the sum halved: exact here)
        "reduce_scatter/in_place": lambda: InPlaceReduceScatter()(reduced["in_place"], inputs["in_place"], None,
                                                                 dist.ReduceOp.AVG),
        "all_gather/gloo": lambda: dist.all_gather_into_tensor(gathered["gloo"], shard),
        "all_gather/in_place": lambda: InPlaceAllGather()(
            gathered["in_place"], gathered["in_place"][rank * 2**19:(rank + 1) * 2**19], None)}
    allocated = {}
    for name, call in calls.items():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
        allocated[name] = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())  # on any thread
    with open(f"{out_file}.{rank}", "w") as f:
        json.dump({"reduced_equal": bool(torch.equal(reduced["in_place"], reduced["gloo"] / 2)),
                   "gathered_equal": bool(torch.equal(gathered["in_place"], gathered["gloo"])
                                          and torch.equal(gathered["in_place"].signbit(), gathered["gloo"].signbit())),
                   "allocated": allocated}, f)
    dist.destroy_process_group()


def test_fsdp_collectives_over_gloo_make_no_copies(tmp_path):
    """Gloo's reduce-scatter copies its whole input and its all-gather allocates output-sized buffers (freed
    on its worker thread, where the memory report cannot see it); FSDP2 is given in-place ones, with the
    same results and nothing of a buffer's size allocated."""
    import torch.multiprocessing as mp

    out = tmp_path / "result.json"
    mp.start_processes(_collectives_rank, args=(str(tmp_path / "init"), str(out)), nprocs=2,
                       start_method="spawn")
    for rank in range(2):
        result = json.loads(out.with_name(f"{out.name}.{rank}").read_text())
        assert result["reduced_equal"] and result["gathered_equal"], rank
        allocated = result["allocated"]
        # why the in-place ones exist: gloo allocates at least the input's, or the output's, size
        assert allocated["reduce_scatter/gloo"] >= 4 * 2**20 and allocated["all_gather/gloo"] >= 4 * 2**20
        # nothing of a buffer's size (gloo's average may make a scalar to divide by)
        assert allocated["reduce_scatter/in_place"] <= 64 and allocated["all_gather/in_place"] <= 64
