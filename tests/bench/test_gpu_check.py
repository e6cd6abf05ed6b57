"""benchmarks/gpu_check.py: the one-call GPU check, its plumbing run end to end on the CPU.

``--dry-run`` runs every part (k-means, select, evaluation against raw generate, the QLoRA rate,
the batch-invariant pair) on tiny shapes, each in its own time-boxed process, and writes one JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
PARTS = [
    "kmeans",
    "select",
    "evaluate",
    "qlora",
    "batch_invariant_off",
    "batch_invariant_on",
]


def run_check(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text("utf-8"))
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == doc["headline"]
    return doc


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_one_json(tmp_path: Path) -> None:
    doc = run_check(tmp_path, "--budget", "1500")
    assert doc["schema"] == "selectllm-gpu-check/1" and doc["dry_run"] is True
    assert doc["device"]["name"] == "cpu (dry run)" and doc["device"]["count"] == 0
    assert {"torch", "transformers", "vllm", "faiss-cpu", "bitsandbytes", "trl"} <= set(
        doc["packages"]
    )
    assert list(doc["parts"]) == PARTS
    bad = {k: v for k, v in doc["parts"].items() if v["status"] != "ok"}
    assert not bad, json.dumps(bad, indent=1)[-3000:]
    res = {k: v["result"] for k, v in doc["parts"].items()}

    km = res["kmeans"]
    assert km["device"] == "cpu" and km["balanced"] and km["points"] == 20_000
    sel = res["select"]
    assert sel["stages"]["subsets"] >= 1 and 0 <= sel["our_share_of_select"] < 1
    assert sel["goal_met"] == (sel["our_share_of_select"] <= 0.05)
    ev = res["evaluate"]
    assert set(ev["orders"]) == {"ours_first", "raw_first"}
    for order in ev["orders"].values():  # greedy on the same ids: the same answers' lengths
        assert order["ours_tokens"] == order["raw_tokens"] > 0
        assert order["ours_over_raw_seconds"] > 0
    ql = res["qlora"]
    assert ql["resolved"]["quantization"] == "none" and ql["tokens_per_s"] > 0
    off, on = res["batch_invariant_off"], res["batch_invariant_on"]
    assert (off["batch_invariant"], on["batch_invariant"]) == (False, True)
    assert (off["env"]["VLLM_BATCH_INVARIANT"], on["env"]["VLLM_BATCH_INVARIANT"]) == ("0", "1")
    head = doc["headline"]
    assert head["our_share_of_select"] == sel["our_share_of_select"]
    assert set(head["batch_invariant_rate_on_over_off"]) == set(on["rates"])
    assert head["statuses"] == dict.fromkeys(PARTS, "ok")


def test_a_failing_part_is_recorded_and_the_rest_runs(tmp_path: Path) -> None:
    doc = run_check(
        tmp_path, "--only", "kmeans", "evaluate", "--test-set", str(tmp_path / "missing")
    )
    assert list(doc["parts"]) == ["kmeans", "evaluate"]
    ev = doc["parts"]["evaluate"]
    assert ev["status"] == "error" and "does not exist" in ev["log"]
    assert doc["parts"]["kmeans"]["status"] == "ok"
    assert doc["headline"]["statuses"] == {"kmeans": "ok", "evaluate": "error"}


def test_a_part_past_its_box_is_killed(tmp_path: Path) -> None:
    doc = run_check(tmp_path, "--only", "select", "qlora", "--budget", "8")
    sel = doc["parts"]["select"]
    assert sel["status"] == "timeout" and sel["seconds"] < 60
    assert doc["parts"]["qlora"] == {"status": "skipped", "reason": "out of time", "seconds": 0}
