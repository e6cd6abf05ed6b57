"""The pipeline's own contract: finished stages are reused, interrupted selections resume.

``plan_run`` and ``select_run`` run for real here (packaged embedder, FAISS k-means, the tiny model
on the session's vLLM engine); what is checked is the bookkeeping around the stages: which stage a
re-run recomputes, that a changed input recomputes exactly what depends on it, and that a selection
cut short (a torn last line in ``responses.jsonl``) resumes to the same result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig
from selectllm_local.errors import UserError
from selectllm_local.run.pipeline import plan_run, select_run
from selectllm_local.selection.prompttokens import PromptTokenEstimate
from tests.helpers import EXAMPLE_POOL


def _pool(tmp: Path, n: int) -> Path:
    path = tmp / f"pool{n}.jsonl"
    lines = EXAMPLE_POOL.read_text("utf-8").splitlines()[:n]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def test_plan_reuses_finished_stages(tmp_path: Path) -> None:
    pool, run = _pool(tmp_path, 80), tmp_path / "run"
    first = plan_run(PlanConfig(pool=pool, budget=8, n_clusters=5, run_dir=run), progress=False)
    assert not any(first.reused.values()) and not first.embeddings_cached
    again = plan_run(PlanConfig(pool=pool, budget=8, n_clusters=5, run_dir=run), progress=False)
    assert again.reused == {"pool": True, "clusters": True, "subsets": True}
    assert again.embeddings_cached and np.array_equal(again.embeddings, first.embeddings)
    assert [s.to_dict() for s in again.plan.subsets] == [s.to_dict() for s in first.plan.subsets]

    # a new budget on the same pool: embeddings and clusters are reused, the subsets are not
    other = plan_run(PlanConfig(pool=pool, budget=12, n_clusters=5, run_dir=run), progress=False)
    assert other.reused == {"pool": True, "clusters": True, "subsets": False}
    assert other.plan.budget == 12 and other.plan.labels == first.plan.labels

    # a changed pool file: everything downstream of it is recomputed
    with open(pool, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"instruction": "A brand new instruction.", "response": "ok"}) + "\n")
    changed = plan_run(PlanConfig(pool=pool, budget=8, n_clusters=5, run_dir=run), progress=False)
    assert changed.reused == {"pool": False, "clusters": False, "subsets": False}
    assert len(changed.items) == len(first.items) + 1
    est = changed.prompt_tokens_estimate  # the one estimator: the rendered prompts, counted
    calls = [s for s in changed.plan.subsets if s.k < len(s.candidates)]
    assert est.prompts == len(calls) and est.method.startswith("heuristic")
    assert est.max_per_prompt <= est.total
    assert est.mean_per_prompt * len(calls) == pytest.approx(est.total)
    summary = json.loads((run / "plan_summary.json").read_text("utf-8"))
    assert summary["budget"] == 8 and summary["clusters"]["k"] == 5
    assert summary["pool"]["kept"] == len(first.items) + 1
    assert summary["prompt_tokens_estimate"] == {  # the file keeps its keys, in this order
        "method": est.method, "prompts": est.prompts, "total": est.total,
        "mean_per_prompt": est.mean_per_prompt, "max_per_prompt": est.max_per_prompt,
    }  # fmt: skip
    assert list(summary["prompt_tokens_estimate"]) == [
        "method", "prompts", "total", "mean_per_prompt", "max_per_prompt"
    ]  # fmt: skip
    assert PromptTokenEstimate.from_dict(summary["prompt_tokens_estimate"]) == est
    assert summary["clusters"]["kmeans_device"] == first.kmeans_device == "cpu"  # faiss-cpu


def test_plan_records_the_kmeans_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAISS with a GPU (injected; a CPU flat index stands in for the GPU one) trains there,
    and plan_summary.json says so, also when the clusters are reused."""
    import faiss

    from selectllm_local.cluster import kmeans as clustering

    monkeypatch.setattr(clustering, "faiss_gpus", lambda: 1)
    monkeypatch.setattr(
        clustering, "_gpu_flat_index", lambda f, d, *, spherical, device: faiss.IndexFlatL2(d)
    )
    pool, run = _pool(tmp_path, 40), tmp_path / "run"
    first = plan_run(PlanConfig(pool=pool, budget=6, n_clusters=4, run_dir=run), progress=False)
    monkeypatch.setattr(clustering, "faiss_gpus", lambda: 0)
    again = plan_run(PlanConfig(pool=pool, budget=6, n_clusters=4, run_dir=run), progress=False)
    assert again.reused["clusters"] and first.kmeans_device == again.kmeans_device == "cuda:0"
    summary = json.loads((run / "plan_summary.json").read_text("utf-8"))
    assert summary["clusters"]["kmeans_device"] == "cuda:0"


def test_plan_rejects_budget_over_pool(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--budget 50 is larger than the pool"):
        plan_run(
            PlanConfig(pool=_pool(tmp_path, 20), budget=50, run_dir=tmp_path / "r"),
            progress=False,
        )


def test_select_resumes_after_a_torn_line_to_the_same_selection(
    tmp_path: Path, tiny_model_dir: Path, vllm_backend
) -> None:
    pool, run = _pool(tmp_path, 60), tmp_path / "run"

    def cfg() -> SelectConfig:
        return SelectConfig(
            plan=PlanConfig(pool=pool, budget=10, n_clusters=6, run_dir=run),
            engine=EngineConfig(backend="vllm", model=str(tiny_model_dir), max_model_len=4096),
        )

    whole = select_run(cfg(), backend=vllm_backend, progress=False)
    counts = whole.summary.counts.to_dict()
    assert len(whole.selected) == 10 == len(set(whole.selected))
    responses = run / "responses.jsonl"
    lines = responses.read_text("utf-8").splitlines(keepends=True)
    assert len(lines) == counts["subsets"] == counts["sent_this_run"] > 2

    # as if killed while writing the last subset's answer: the torn line is not trusted
    responses.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], "utf-8")
    (run / "selected.jsonl").unlink()
    resumed = select_run(cfg(), backend=vllm_backend, progress=False)
    rc = resumed.summary.counts.to_dict()
    assert rc["resumed"] == len(lines) - 1 and rc["sent_this_run"] == 1
    assert resumed.selected == whole.selected
    assert len(responses.read_text("utf-8").splitlines()) == len(lines)

    # nothing left to ask: a third run sends no prompt and writes the same selection
    third = select_run(cfg(), backend=vllm_backend, progress=False)
    assert third.summary.counts.sent_this_run == 0 and third.selected == whole.selected
    rows = [json.loads(x) for x in (run / "selected.jsonl").read_text("utf-8").splitlines()]
    assert [r["selectllm"]["index"] for r in rows] == whole.selected
    assert {"subset_id", "round", "cluster", "position", "uid"} <= set(rows[0]["selectllm"])


def test_select_with_a_changed_setting_starts_afresh(
    tmp_path: Path, tiny_model_dir: Path, vllm_backend
) -> None:
    from selectllm_local.config import SelectorConfig

    pool, run = _pool(tmp_path, 40), tmp_path / "run"
    plan = PlanConfig(pool=pool, budget=6, n_clusters=5, run_dir=run)
    engine = EngineConfig(backend="vllm", model=str(tiny_model_dir), max_model_len=4096)
    select_run(SelectConfig(plan=plan, engine=engine), backend=vllm_backend, progress=False)
    changed = SelectConfig(plan=plan, selector=SelectorConfig(retries=0), engine=engine)
    out = select_run(changed, backend=vllm_backend, progress=False)
    assert out.summary.counts.resumed == 0  # earlier answers were for another setting
    assert list(run.glob("responses.*.jsonl"))  # ... and are kept aside, not deleted
