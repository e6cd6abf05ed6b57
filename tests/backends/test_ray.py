"""Selection and embedding on Ray: a real local Ray cluster (2 CPUs) shared by the session.

The engines are real (the transformers backend on the tiny random-weight model, in Ray actors);
the scripted fake backend is used only where the subject is the driver's own bookkeeping under a
SIGKILL (it can be told to stop answering, so the kill lands mid-run whatever the machine's speed).
An actor is killed by the documented test hook ``SELECTLLM_RAY_DIE_AFTER`` (``os._exit`` in the
actor), so the restart and re-queue paths run for real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import EXAMPLE_POOL, HANG_GUARD, HAS_RAY, RAY_MISSING, n_lines, needs, small_pool

pytestmark = needs(HAS_RAY, RAY_MISSING)
CLI = [sys.executable, "-m", "selectllm_local", "select"]


@pytest.fixture(scope="module")
def ray_address() -> Any:
    """One local Ray cluster (2 CPUs: two 1-CPU actors) for every Ray test: they all live in this
    module, and it is shut down after them, so the rest of the suite runs without Ray's daemons."""
    import ray

    ctx = ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ctx.address_info["gcs_address"]
    ray.shutdown()


def response_keys(run: Path) -> Counter[tuple[int, int]]:
    rows = [json.loads(x) for x in (run / "responses.jsonl").read_text("utf-8").splitlines()]
    return Counter((r["round"], r["subset_id"]) for r in rows)


def select(
    pool: Path, run: Path, model: str, backend: str, engine: Any = None, **settings: Any
) -> Any:
    """``select_run`` on the tiny model; ``engine``: a loaded backend to reuse."""
    from selectllm_local.config import SelectConfig
    from selectllm_local.run.pipeline import select_run

    cfg = SelectConfig.of(
        pool=pool, budget=10, run_dir=run, model=model, backend=backend, n_clusters=6,
        **{"batch_size": 4, **settings},
    )  # fmt: skip
    return select_run(cfg, backend=engine, progress=False)


def held_out_pool(tmp_path: Path, rows: int, seed: int) -> Path:
    """A seeded sample of the example pool past its first 300 lines (the ones this module, the
    golden file and the README's example use): a pool no test was tuned on."""
    import random

    lines = EXAMPLE_POOL.read_text("utf-8").splitlines()
    keep = sorted(random.Random(seed).sample(range(300, len(lines)), rows))
    path = tmp_path / f"heldout{rows}_s{seed}.jsonl"
    path.write_text("\n".join(lines[i] for i in keep) + "\n", "utf-8")
    return path


def picks(run: Path) -> list[int]:
    lines = (run / "selected.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["selectllm"]["index"] for line in lines]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The reference: the same selections in one process (transformers backend, greedy), in
    generate mode (``run``) and logprob mode (``lp``)."""
    base = tmp_path_factory.mktemp("ray-ref")
    pool = small_pool(base, 60)
    select(pool, base / "run", str(tiny_model_dir), "transformers")
    select(pool, base / "lp", str(tiny_model_dir), "transformers", mode="logprobs")
    return base


def test_select_on_ray_matches_one_process(
    ray_address: str, one_process: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Generate mode (``generate`` on the actors) and logprob mode (``score_labels``) on one
    pair of actors give the one-process selections."""
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    pool, model = one_process / "pool60.jsonl", str(tiny_model_dir)
    options = EngineConfig(batch_size=4, ray=ray_address, ray_actors=2, ray_shard_size=2)
    engine = load_backend("transformers", model, options)
    try:
        out = select(pool, tmp_path / "run", model, "transformers", engine)
        ray = out.summary.ray
        lp = select(pool, tmp_path / "lp", model, "transformers", engine, mode="logprobs")
    finally:
        engine.close()
    ref = (one_process / "run" / "selected.jsonl").read_bytes()
    assert (tmp_path / "run" / "selected.jsonl").read_bytes() == ref
    assert ray is not None and lp.summary.ray is not None
    assert ray.actors == 2 and ray.shards == 5  # 10 subsets, 2 prompts per shard
    assert ray.shards_requeued == 0 and ray.actor_restarts == 0
    assert set(response_keys(tmp_path / "run").values()) == {1}
    assert out.summary.counts.subsets == 10 and out.summary.backend == "transformers"
    assert picks(tmp_path / "lp") == picks(one_process / "lp")
    assert lp.summary.ray.shards > ray.shards  # the label-scoring prompts went too


def test_actor_killed_midway_is_restarted_and_its_shards_requeued(
    ray_address: str,
    one_process: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Actor 0 exits abruptly when its second shard arrives: the run still finishes, every subset
    answered exactly once, the same selection, and the summary counts the restart."""
    monkeypatch.setenv("SELECTLLM_RAY_DIE_AFTER", "2")
    out = select(
        one_process / "pool60.jsonl", tmp_path / "run", str(tiny_model_dir), "transformers",
        ray=ray_address, ray_actors=2, ray_shard_size=2,
    )  # fmt: skip
    ref = (one_process / "run" / "selected.jsonl").read_bytes()
    assert (tmp_path / "run" / "selected.jsonl").read_bytes() == ref
    ray = out.summary.ray
    assert ray is not None and ray.actor_restarts == 1 and ray.shards_requeued >= 1
    assert ray.prompts_unanswered == 0
    keys = response_keys(tmp_path / "run")
    assert len(keys) == 10 and set(keys.values()) == {1}
    assert out.summary.counts.fallback == 0


def test_driver_sigkill_then_resume_sends_only_unfinished(ray_address: str, tmp_path: Path) -> None:
    """SIGKILL of the driver mid-run, then the same command: only the unfinished subsets go to
    the actors, and the selection equals an uninterrupted one-process run."""
    pool = small_pool(tmp_path, 120)
    args = [*CLI, str(pool), "--model", "fake", "--budget", "20", "--backend", "fake", "--k", "6",
            "--ray", ray_address, "--ray-actors", "2", "--ray-shard-size", "2"]  # fmt: skip
    run = tmp_path / "run"
    # Each actor answers one shard (2 prompts), then blocks inside its second: 4 rows, no more.
    env = {**os.environ, "SELECTLLM_FAKE_BLOCK_AFTER": "3"}
    proc = subprocess.Popen(
        [*args, "--run-dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + HANG_GUARD  # a hang guard only: the outcome does not depend on it
    while n_lines(run / "responses.jsonl") < 4:
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD)
    assert n_lines(run / "responses.jsonl") == 4 and not (run / "selected.jsonl").exists()

    again = subprocess.run(
        [*args, "--run-dir", str(run), "--json"], capture_output=True, text=True, timeout=HANG_GUARD
    )
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    counts = summary["counts"]
    assert counts["resumed"] == 4 and counts["sent_this_run"] == counts["subsets"] - 4 == 16
    assert summary["ray"]["shards"] == 8  # the 16 unfinished prompts, 2 per shard
    assert len(response_keys(run)) == 20 and set(response_keys(run).values()) == {1}

    from selectllm_local.config import SelectConfig
    from selectllm_local.run.pipeline import select_run

    cfg = SelectConfig.of(pool=pool, budget=20, run_dir=tmp_path / "ref", model="fake",
                          backend="fake", n_clusters=6)  # fmt: skip
    select_run(cfg, progress=False)
    assert (run / "selected.jsonl").read_bytes() == (
        tmp_path / "ref" / "selected.jsonl"
    ).read_bytes()


def test_unreachable_address_exits_2_without_traceback(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 30)
    res = subprocess.run(
        [*CLI, str(pool), "--model", "fake", "--backend", "fake", "--budget", "5",
         "--ray", "127.0.0.1:9", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    err = " ".join(res.stderr.split())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--ray 127.0.0.1:9: nothing answers" in err and "ray start --head" in err
    assert "Traceback" not in res.stderr


def test_ray_not_installed_exits_2_naming_the_extra(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 30)
    code = (
        "import sys; sys.modules['ray'] = None; sys.argv[0] = 'selectllm'; "
        "from selectllm_local.cli import main; main()"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "select", str(pool), "--model", "fake", "--backend", "fake",
         "--budget", "5", "--ray", "local", "--run-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    err = " ".join(res.stderr.split())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--ray needs the ray package" in err and "pip install -e '.[cpu,ray,dev]'" in err
    assert "Traceback" not in res.stderr


def test_embed_on_ray_writes_the_same_cache(ray_address: str, tmp_path: Path) -> None:
    from selectllm_local.embed import cache as embed_cache
    from selectllm_local.run.store import RunStore, read_json

    rows = [json.loads(x) for x in EXAMPLE_POOL.read_text("utf-8").splitlines()[:96]]
    texts = [r["instruction"] + "\n" + r.get("context", "") for r in rows]
    local, _ = embed_cache.load_or_embed(
        RunStore(tmp_path / "a"), texts, progress=False, batch_size=8
    )
    on_ray, cached = embed_cache.load_or_embed(
        RunStore(tmp_path / "b"), texts, progress=False, ray_address=ray_address, batch_size=8
    )  # chunks of 64 rows (embed_texts' 8 x batch size): 2 chunks, 2 workers
    assert not cached and on_ray.shape == local.shape == (96, 384)
    np.testing.assert_allclose(on_ray, local, atol=1e-5)
    key_a = read_json(tmp_path / "a" / "embeddings.key.json")
    key_b = read_json(tmp_path / "b" / "embeddings.key.json")
    assert key_a == key_b  # same model id, same row hashes: either run reuses the other's cache
    np.testing.assert_allclose(np.load(tmp_path / "b" / "embeddings.npy"), local, atol=1e-5)


def test_ray_settings_from_a_config_file(tmp_path: Path) -> None:
    from selectllm_local.config import PlanConfig, SelectConfig
    from selectllm_local.config.loader import build, file_values
    from selectllm_local.errors import UserError

    path = tmp_path / "c.toml"
    path.write_text('ray = "auto"\n[engine]\nray_actors = 3\nray_max_restarts = 0\n', "utf-8")
    values = file_values(path, SelectConfig, command="select")
    cfg = build(SelectConfig, {**values, "pool": "p.jsonl", "budget": 5})
    assert cfg.plan.ray == cfg.engine.ray == "auto"  # one key sets both, as the flag does
    assert cfg.engine.ray_actors == 3 and cfg.engine.ray_max_restarts == 0
    with pytest.raises(UserError, match="--embed-on-ray"):
        PlanConfig(pool=Path("p.jsonl"), budget=5, embed_on_ray=True)


@pytest.mark.parametrize("pool_name", ["first60", "heldout120"])
def test_logprob_picks_equal_across_batch_size_and_ray(
    pool_name: str, ray_address: str, one_process: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Logprob mode: one process at batch 4, one process at batch 16 and two Ray actors (shards
    of 3) choose the same rows in the same order, on the module's 60-row pool and on a seeded
    held-out pool of 120 rows (two rounds: 20 subsets for a budget of 10)."""
    model = str(tiny_model_dir)
    if pool_name == "first60":  # batch 4 in one process: the module's reference run
        pool, b4 = one_process / "pool60.jsonl", one_process / "lp"
    else:
        pool, b4 = held_out_pool(tmp_path, 120, seed=19), tmp_path / "b4"
        select(pool, b4, model, "transformers", mode="logprobs")
    runs = {
        "batch16": select(
            pool, tmp_path / "b16", model, "transformers", mode="logprobs", batch_size=16
        ),
        "ray": select(
            pool, tmp_path / "ray", model, "transformers", mode="logprobs",
            ray=ray_address, ray_actors=2, ray_shard_size=3,
        ),
    }  # fmt: skip
    chosen = {name: picks(tmp_path / d) for name, d in zip(runs, ("b16", "ray"), strict=True)}
    assert picks(b4) == chosen["batch16"] == chosen["ray"]
    assert len(chosen["ray"]) == 10 and runs["ray"].summary.ray.actors == 2
    for out in runs.values():  # every asked subset's margin is recorded and summarised
        ties = out.summary.counts.ties
        assert ties is not None and ties.scored == out.summary.counts.asked > 0
    if pool_name == "heldout120":
        assert runs["ray"].summary.rounds == 2
