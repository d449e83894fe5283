"""The memory planner: its candidates are valid, it chooses as documented, and a run with the written
plan stays inside the budget (its own memory report says so)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml

from flows.config import load_config
from model.config import TrainConfig
from model.gpt import GPTConfig
from model.plan import (MiB, Trial, apply_changes, candidates, choose, measure, parse_size, plan, predict,
                        quality_costs)
from model.techniques import check
from model.train import MemoryBudgetError, train
from tests.test_cli import memlm


@pytest.mark.parametrize("text, expected", [("300MiB", 300 * MiB), ("1.5 GiB", int(1.5 * 2**30)),
                                            ("512MB", 512 * 10**6), ("300", 300 * MiB)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-3MiB", "3 parsecs", "0"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(ValueError, match="300MiB"):
        parse_size(text)


@pytest.mark.parametrize("arch", ["gpt", "rnn-attention"])
@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
@pytest.mark.parametrize("lossy", [False, True])
@pytest.mark.parametrize("strategy", ["none", "ddp", "fsdp"])
def test_every_candidate_is_a_combination_memlm_accepts(arch, grad_clip, lossy, strategy):
    cfg = TrainConfig(batch_size=16, grad_clip=grad_clip, distributed={"strategy": strategy, "nproc_per_node": 2})
    found = candidates(cfg, arch, lossy)
    assert found[0] == ("as configured", {}, False)
    for name, changes, is_lossy in found:
        candidate = apply_changes(cfg, changes)
        check(candidate, torch.device("cpu"))  # raises for a refused combination
        if not is_lossy:  # exact: the optimizer and the clipping stay as configured
            assert candidate.memory.optimizer == cfg.memory.optimizer and candidate.grad_clip == grad_clip
        if arch == "rnn-attention":
            assert candidate.memory.activation_checkpointing != "selective" and candidate.memory.mlp_chunks == 1
    exact = [c for c in found if not c[2]]
    # Stepping in backward is exact only without clipping (and in one process); with it, the exact ladder
    # never uses it.
    assert any(apply_changes(cfg, c[1]).memory.split_head_step for c in exact) == (grad_clip == 0 and strategy == "none")
    # Halving the micro-batch: of the batch, or of each rank's share of it.
    micro = [c[1].get("memory.micro_batch_size") for c in exact if "micro" in c[0]]
    assert micro == ([8, 4, 2, 1] if strategy == "none" else [4, 2, 1])
    assert any(c[2] for c in found) == (lossy and strategy != "fsdp")  # fsdp runs AdamW only


def test_the_lossy_ladder_offers_fp8_adamw_before_torchaos_8_bit():
    names = [name for name, _, lossy in candidates(TrainConfig(batch_size=16), "gpt", lossy=True) if lossy]

    def first(label: str) -> int:
        return next(i for i, name in enumerate(names) if name.endswith(label))

    # Same state size; memlm's compiles nothing and steps faster on CPU (bench/results/optimizer-step-cpu.json).
    assert first(", fp8 AdamW") < first(", 8-bit AdamW")
    assert first("bf16 weights, fp8 AdamW") < first("bf16 weights, 8-bit AdamW") < first("bf16 weights, 4-bit AdamW")


@pytest.mark.parametrize("memory, grad_clip", [({}, 1.0), ({"precision": "bf16-weights", "optimizer": "adamw8bit"}, 0.0)])
def test_the_late_head_gradient_is_the_last_rung_before_micro_batches(memory, grad_clip):
    """It makes the logits again in backward (a quarter of the step at the reference config): tried only after
    every recomputation rung, and never where the head is stepped in backward; over ranks too (made in the
    embedding lookup's backward, it is part of the tied weight's one gradient that the ranks reduce)."""
    cfg = TrainConfig(batch_size=8, grad_clip=grad_clip, memory=memory)
    found = candidates(cfg, "gpt")
    late = [name for name, changes, _ in found if apply_changes(cfg, changes).memory.late_head_grad]
    after = [name for name, _, _ in found][[name for name, _, _ in found].index("+ head gradient late") + 1:]
    assert late[0] == "+ head gradient late" and after and all(name.startswith("+ micro-batches") for name in after)
    assert late[1:] == after  # the micro-batch rungs build on the most frugal one
    split = TrainConfig(batch_size=8, grad_clip=0.0)
    # (its micro-batch rungs accumulate, so they cannot step in backward: they take the late gradient)
    assert not any(apply_changes(split, c).memory.late_head_grad for name, c, lossy in candidates(split, "gpt")
                   if not lossy and "micro" not in name)
    ranks = TrainConfig(batch_size=8, distributed={"strategy": "fsdp", "nproc_per_node": 2})
    names = [name for name, _, _ in candidates(ranks, "gpt")]
    assert "+ head gradient late" in names and all(n.startswith("+ micro-batches")
                                                   for n in names[names.index("+ head gradient late") + 1:])


@pytest.mark.parametrize("batch, micro, world, expected", [(18, None, 1, [9, 3, 1]), (12, 6, 1, [3, 1]), (1, None, 1, []),
                                                           (20, None, 4, [1]), (36, None, 2, [9, 3, 1])])
def test_micro_batches_divide_each_ranks_share_of_the_batch(batch, micro, world, expected):
    cfg = TrainConfig(batch_size=batch, memory={"micro_batch_size": micro},
                      distributed={"strategy": "fsdp" if world > 1 else "none", "nproc_per_node": world})
    found = [c[1]["memory.micro_batch_size"] for c in candidates(cfg, "gpt") if "micro" in c[0]]
    assert found == expected


def test_a_config_that_steps_in_backward_still_gets_micro_batch_candidates():
    cfg = TrainConfig(batch_size=8, grad_clip=0.0,
                      memory={"optimizer_in_backward": True, "split_head_step": True})
    for name, changes, _ in candidates(cfg, "gpt"):
        check(apply_changes(cfg, changes), torch.device("cpu"))


def test_choose_keeps_the_first_fit_unless_a_later_one_is_clearly_faster():
    def trial(name, mib, tokens_per_s):
        return Trial(name, {}, False, peak_bytes=mib * MiB, tokens_per_s=tokens_per_s)

    over, first, slower, bit_faster = trial("a", 300, 900), trial("b", 200, 500), trial("c", 150, 300), \
        trial("d", 100, 550)
    assert choose([over, first, slower, bit_faster], 250 * MiB) is first
    much_faster = trial("e", 120, 700)
    assert choose([over, first, slower, much_faster], 250 * MiB) is much_faster
    assert choose([over], 250 * MiB) is None


def test_lossy_candidates_carry_the_convergence_benchmarks_quality_cost(tmp_path):
    rows = [{"name": "fp32-adamw", "memory": {}, "val_loss_vs_fp32_adamw": 0.0},
            {"name": "bf16-stochastic+adamw8bit", "val_loss_vs_fp32_adamw": 0.004,
             "memory": {"precision": "bf16-weights", "bf16_rounding": "stochastic", "optimizer": "adamw8bit"}},
            {"name": "bf16-stochastic+adamw8bit-seed-1", "val_loss_vs_fp32_adamw": 0.002,
             "memory": {"precision": "bf16-weights", "bf16_rounding": "stochastic", "optimizer": "adamw8bit"}},
            {"name": "bf16-nearest", "val_loss_vs_fp32_adamw": 0.05,
             "memory": {"precision": "bf16-weights", "bf16_rounding": "nearest"}},
            {"name": "vocab-tiled-loss", "memory": {"loss_vocab_chunk_size": 1024}, "val_loss_vs_fp32_adamw": 0.0},
            {"name": "muon", "memory": {"optimizer": "muon"}, "error": "killed"}]
    results = tmp_path / "convergence.json"
    results.write_text(json.dumps(rows))
    # Only measured rows that change the precision and the optimizer alone, rounded as the planner rounds.
    assert quality_costs([results]) == pytest.approx({("bf16-weights", "adamw8bit"): 0.003})  # the seeds' mean
    assert quality_costs([tmp_path / "missing.json"]) == {}


@pytest.mark.integration
def test_plan_command_writes_a_config_that_loads(corpus, tmp_path):
    config, _ = corpus
    source = tmp_path / "small.yaml"
    data = json.loads(config.model_dump_json())
    data["train"]["batch_size"] = 4  # fewer micro-batch candidates to try when nothing fits
    source.write_text(yaml.safe_dump(data))
    written = tmp_path / "planned.yaml"
    result = memlm("plan", "-c", str(source), "--budget", "100GiB", "--write", str(written),
                   "--json", str(tmp_path / "plan.json"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "chosen: as configured" in result.stdout
    planned = load_config(written)
    # It fits as configured: nothing changes but the budget, which the planned run checks.
    assert planned.train == config.train.model_copy(update={"batch_size": 4, "memory_budget_mib": 102400})
    figures = json.loads((tmp_path / "plan.json").read_text())
    assert figures["chosen"] == "as configured" and figures["trials"][0]["peak_mib"] > 0

    too_small = memlm("plan", "-c", str(source), "--budget", "64KiB", cwd=tmp_path)
    assert too_small.returncode == 1
    assert "nothing tried fits 0.0625 MiB" in too_small.stderr and "--lossy" in too_small.stderr

    bad = memlm("plan", "-c", str(source), "--budget", "a lot", cwd=tmp_path)
    assert bad.returncode == 2 and "--budget" in bad.stderr
    no_budget = memlm("plan", "-c", str(source), cwd=tmp_path)
    assert no_budget.returncode == 2 and "give --budget" in no_budget.stderr


@pytest.mark.integration
def test_training_stops_at_a_step_over_its_budget(corpus, tmp_path):
    config, parts = corpus
    tokens_dir = parts["tokens"].manifest_file.parent
    over = config.train.model_copy(update={"max_steps": 5, "memory_budget_mib": 0.25})
    # The first stage of a run is the validation before step 1.
    with pytest.raises(MemoryBudgetError, match=r"stage validation peaked at [0-9.]+ MiB, over "
                                                r"train.memory_budget_mib \(0.25\): change train.memory.micro_batch_size"):
        train(config.model, over, tokens_dir, tmp_path / "over")
    inside = train(config.model, over.model_copy(update={"memory_budget_mib": 1024}), tokens_dir, tmp_path / "in")
    assert inside.steps == 5


def test_help_lists_plan(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "plan", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0 and "--budget" in result.stdout


@pytest.mark.parametrize("memory", [{}, {"activation_checkpointing": "full", "micro_batch_size": 2},
                                    {"loss_chunk_size": 0, "optimizer": "adafactor", "activation_checkpointing": "selective"},
                                    {"optimizer": "adamw-fp8"},
                                    {"precision": "bf16-weights", "optimizer": "adamw-fp8", "optimizer_in_backward": True}],
                         ids=["chunked-loss", "checkpointed-micro-batches", "plain-loss-adafactor", "fp8-adamw",
                              "bf16-fp8-adamw-in-backward"])
def test_a_prediction_matches_the_measurement(memory):
    arch = GPTConfig(vocab_size=2048, block_size=64, n_layer=2, n_head=2, n_embd=64)
    cfg = TrainConfig(batch_size=4, memory=memory, grad_clip=0.0 if memory.get("optimizer_in_backward") else 1.0)
    predicted, measured = predict(arch, cfg), measure(arch, cfg, torch.device("cpu"))
    assert set(predicted.stages) == set(measured.stages) == {
        "train_step", "validation", "checkpoint_save", "resume", "checkpoint_load", "evaluate", "generate", "rescore"}
    for stage, peak in measured.stages.items():
        assert predicted.stages[stage] == pytest.approx(peak, rel=0.02), stage


def test_a_model_this_machine_cannot_hold_is_planned_for_a_cuda_device_in_seconds():
    # About 1.07 B parameters: with AdamW its weights, gradients and moments alone are 16 GiB.
    arch = GPTConfig(vocab_size=32768, block_size=1024, n_layer=20, n_head=16, n_embd=2048)
    cfg = TrainConfig(batch_size=8, device="cuda")
    started = time.perf_counter()
    result = plan(arch, cfg, 24 * 2**30, torch.device("cuda"), predict_only=True)
    assert time.perf_counter() - started < 60
    assert not result.trials[0].fits(24 * 2**30) and result.chosen is not None
    assert result.chosen.peak_bytes <= 24 * 2**30 and result.chosen.tokens_per_s is None
    assert all(peak % 512 == 0 for peak in result.chosen.stages.values())  # the caching allocator's blocks


@pytest.mark.integration
def test_plan_command_predicts_for_a_device_it_does_not_have(corpus, tmp_path):
    config, _ = corpus
    source = tmp_path / "small.yaml"
    source.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    result = memlm("plan", "-c", str(source), "--predict", "--device", "cuda", "--budget", "1GiB", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(predicted) on cuda" in result.stdout and "assuming" in result.stdout
    assert "chosen: as configured" in result.stdout
    refused = memlm("plan", "-c", str(source), "--predict", "--meter", "process", "--budget", "1GiB", cwd=tmp_path)
    assert refused.returncode == 2 and "--predict" in refused.stderr


@pytest.mark.integration
@pytest.mark.parametrize("arch_name, strategy, memory", [
    ("gpt", "fsdp", {"activation_checkpointing": "full", "mlp_chunks": 2, "loss_chunk_size": 32}),
    ("rnn-attention", "ddp", {"micro_batch_size": 2, "optimizer": "adafactor"})],
    ids=["gpt-fsdp-frugal", "rnn-attention-ddp-micro-batches-adafactor"])
def test_a_rank_prediction_matches_what_two_torchrun_ranks_measure(arch_name, strategy, memory):
    from model.plan_ranks import measure_over_ranks
    from model.rnn import RNNConfig

    arch = GPTConfig(vocab_size=2048, block_size=64, n_layer=2, n_head=2, n_embd=64) if arch_name == "gpt" \
        else RNNConfig(vocab_size=2048, block_size=32, n_layer=2, n_embd=64)
    cfg = TrainConfig(batch_size=8, memory=memory, distributed={"strategy": strategy, "nproc_per_node": 2})
    predicted, measured = predict(arch, cfg), measure_over_ranks(arch, cfg, torch.device("cpu"))
    assert len(measured.rank_peaks) == 2
    assert set(predicted.stages) == set(measured.stages)
    # Recomputation in backward is where gloo's own reduce-scatter held (and the report counted, its free
    # unseen) a copy of a block's gradients, one to two blocks' worth depending on the run.
    for stage, peak in measured.stages.items():
        assert abs(peak - predicted.stages[stage]) <= 0.05 * peak, stage


@pytest.mark.integration
def test_plan_command_plans_each_rank(corpus, tmp_path):
    config, _ = corpus
    source = tmp_path / "small.yaml"
    data = json.loads(config.model_dump_json())
    data["train"]["batch_size"] = 8
    source.write_text(yaml.safe_dump(data))
    written = tmp_path / "planned.yaml"
    measured = memlm("plan", "-c", str(source), "--budget", "100GiB", "--world-size", "2", "--write", str(written),
                     "--json", str(tmp_path / "plan.json"), cwd=tmp_path)
    assert measured.returncode == 0, measured.stderr
    said = " ".join(measured.stdout.split())  # rich wraps the table's title at the terminal's width
    assert "per rank of 2: measured by 2 torchrun ranks" in said and "shard arithmetic" in said
    figures = json.loads((tmp_path / "plan.json").read_text())
    assert figures["world_size"] == 2 and not figures["predicted"]
    assert len(figures["trials"][0]["rank_peaks_mib"]) == 2
    planned = load_config(written).train.distributed
    assert (planned.strategy, planned.nproc_per_node) == ("fsdp", 2)

    # More ranks than this machine has cores: rank 0 predicted, in one process.
    many = os.cpu_count() * 4
    data["train"]["batch_size"] = many
    source.write_text(yaml.safe_dump(data))
    predicted = memlm("plan", "-c", str(source), "--budget", "100GiB", "--world-size", str(many),
                      "--json", str(tmp_path / "many.json"), cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    said = " ".join(predicted.stdout.split())
    assert f"per rank of {many}: rank 0, from one process" in said and "assuming" in said
    many_figures = json.loads((tmp_path / "many.json").read_text())
    assert many_figures["predicted"] and many_figures["trials"][0]["peak_mib"] < figures["trials"][0]["peak_mib"]

    uneven = memlm("plan", "-c", str(source), "--budget", "100GiB", "--world-size", str(many + 1), cwd=tmp_path)
    assert uneven.returncode == 2 and f"--world-size {many + 1}" in uneven.stderr and "multiple" in uneven.stderr


def test_the_stages_after_training_score_with_the_training_loss():
    # Evaluation without a training chunk scores 512 tokens at a time (16 MiB of logits over 8192 words);
    # with training's chunk of 64, an eighth; with vocabulary tiles of 512 words, less again.
    arch = GPTConfig(vocab_size=8192, block_size=64, n_layer=1, n_head=2, n_embd=64)
    plain, chunked, tiled = (predict(arch, TrainConfig(batch_size=8, memory=memory)).stages["evaluate"] for memory in (
        {"loss_chunk_size": 0}, {"loss_chunk_size": 64}, {"loss_chunk_size": 64, "loss_vocab_chunk_size": 512}))
    assert chunked < plain - 8 * 2**20 and tiled < chunked - 0.5 * 2**20
