"""Machine commands: ``bench`` (selection throughput) and ``random-model`` (test models)."""

from __future__ import annotations

from selectllm_local.cli.app import app
from selectllm_local.cli.options import command, emit, show_progress
from selectllm_local.config import BenchCommand, RandomModelCommand


@command(app, BenchCommand)
def bench(cfg: BenchCommand, *, json_out: bool) -> None:
    """Benchmark selection throughput against this machine's measured matmul peak."""
    from selectllm_local.bench.command import bench_command

    doc, text = bench_command(cfg, progress=show_progress(json_out))
    if json_out:
        emit(doc, json_out, lambda: text)
    else:  # laid out for the width already (or Markdown when piped): printed as it is
        print(text)


@command(app, RandomModelCommand, name="random-model")
def random_model(cfg: RandomModelCommand, *, json_out: bool) -> None:
    """Write a random-weight model of a real shape (offline demos and throughput benchmarks)."""
    from selectllm_local.models.random_weights import build_random_model

    path = build_random_model(cfg.out_dir, cfg.shape, seed=cfg.seed, dtype=cfg.dtype)
    emit(
        {"model": str(path), "shape": cfg.shape, "seed": cfg.seed, "dtype": cfg.dtype},
        json_out,
        lambda: (
            f"Wrote a random-weight {cfg.shape} model to {path} "
            "(not a trained model: for demos and benchmarks)."
        ),
    )
