"""The same picks whatever the batching: the near-tie rule, per-request sampling seeds, and
``--batch-invariant`` where nothing can honour it.

The tie rule and the seeds are pure logic and are tested on constructed scores; the sampling
seeds also on the real engines (the tiny random-weight model on transformers and vLLM), where a
prompt sampled alone must give the same answer as inside a batch. The selection-level checks (one
process, another batch size and Ray on two pools) live in ``test_ray.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selectllm_local.backends.base import TokenizedPrompt, request_seed
from selectllm_local.backends.fake import FakeBackend
from selectllm_local.config import SelectorConfig
from selectllm_local.records import Plan, PoolItem, Subset
from selectllm_local.selection.picks import TIE_TOLERANCE, tie_key, top_k_tied
from selectllm_local.selection.rounds import select
from tests.helpers import requires_vllm, small_pool

TOL = TIE_TOLERANCE


# -- the near-tie rule on constructed scores -----------------------------------------------------


def test_clear_margin_is_the_plain_top_k() -> None:
    top = top_k_tied([-1.0, -0.2, -3.0, -0.5], 2, keys=[4, 3, 2, 1])
    assert top.chosen == [1, 3] and not top.tie_rule
    assert top.margin == pytest.approx(0.5)


def test_near_tie_at_the_cut_goes_to_the_lowest_key_not_the_higher_score() -> None:
    # 0 is sure (far above the cut); 1 and 2 are within the tolerance of each other: a tie
    scores = [-0.1, -1.0, -1.0 - TOL / 2, -5.0]
    top = top_k_tied(scores, 2, keys=[9, 8, 7, 6])
    assert top.chosen == [0, 2] and top.tie_rule
    assert top.margin == pytest.approx(TOL / 2)
    # the same scores the other way round (noise swapped them): the same choice
    swapped = [-0.1, -1.0 - TOL / 2, -1.0, -5.0]
    assert top_k_tied(swapped, 2, keys=[9, 8, 7, 6]).chosen == [0, 2]


def test_a_plain_sort_flips_where_the_rule_does_not() -> None:
    """Why the rule exists: noise of 1e-6 between two equal scores decides a plain sort."""
    a, b = [-0.7, -0.7 + 1e-6, -2.0], [-0.7 + 1e-6, -0.7, -2.0]
    plain = [max(range(3), key=s.__getitem__) for s in (a, b)]
    assert plain[0] != plain[1]
    keys = [5, 1, 3]
    assert top_k_tied(a, 1, keys).chosen == top_k_tied(b, 1, keys).chosen == [1]


# Scores on a grid of 0.3 x the tolerance: no two scores are within 0.1 x tol of the tolerance
# apart, so noise below 0.04 x tol per score cannot cross a boundary of the rule.
grid_scores = st.lists(st.integers(-40, 0), min_size=2, max_size=14)


@settings(max_examples=300, deadline=None)
@given(grid_scores, st.data())
def test_noise_below_the_tolerance_never_changes_the_choice(steps: list[int], data) -> None:
    n = len(steps)
    k = data.draw(st.integers(1, n - 1))
    keys = data.draw(st.permutations(list(range(n))))
    noise = data.draw(st.lists(st.floats(-0.04, 0.04), min_size=n, max_size=n))
    scores = [-1.0 + 0.3 * TOL * s for s in steps]
    noisy = [x + TOL * e for x, e in zip(scores, noise, strict=True)]
    top, again = top_k_tied(scores, k, keys), top_k_tied(noisy, k, keys)
    assert again.chosen == top.chosen and again.tie_rule == top.tie_rule
    assert len(top.chosen) == k == len(set(top.chosen))
    chosen, left = (
        [scores[j] for j in top.chosen],
        [scores[j] for j in range(n) if j not in top.chosen],
    )
    assert min(chosen) >= max(left) - 2 * TOL  # a tie never costs more than 2 x tolerance
    if not top.tie_rule:  # decided by the scores: exactly the plain top k
        assert min(chosen) > max(left) + TOL


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-20, 0), min_size=2, max_size=14), st.data())
def test_the_display_order_does_not_matter(scores: list[float], data) -> None:
    """Permutations (cyclic shifts) and plans show candidates in other orders: same candidates."""
    n = len(scores)
    k = data.draw(st.integers(1, n))
    keys = data.draw(st.permutations(list(range(n))))
    order = data.draw(st.permutations(list(range(n))))
    base = top_k_tied(scores, k, keys)
    moved = top_k_tied([scores[j] for j in order], k, [keys[j] for j in order])
    assert sorted(order[j] for j in moved.chosen) == base.chosen
    assert moved.chosen == sorted(moved.chosen)


def test_tie_keys_are_seeded_hashes_of_the_content_id() -> None:
    assert tie_key(0, "abc") == tie_key(0, "abc")
    uids = [f"u{i}" for i in range(50)]
    order0 = sorted(uids, key=lambda u: tie_key(0, u))
    order1 = sorted(uids, key=lambda u: tie_key(1, u))
    assert order0 != order1 and order0 != uids  # a seed changes it; no file-order bias


def _items(n: int) -> list[PoolItem]:
    return [PoolItem(i, f"uid-{i}", i + 1, f"Task {i}: describe item {i}.") for i in range(n)]


def test_selection_records_margins_and_counts_tie_decisions() -> None:
    """A scorer that cannot tell candidates apart (every label equal): every subset is decided
    by the tie rule, recorded per subset and counted in the summary; picks follow the keys."""
    items = _items(24)
    subs = [Subset(j, list(range(6 * j, 6 * j + 6)), 2, [0] * 6) for j in range(4)]
    plan = Plan(6, [i % 6 for i in range(24)], "diverse", 8, subs, 1)
    flat = FakeBackend(scorer=lambda p, labs: [-1.0] * len(labs))
    out = select(plan, items, flat, cfg=SelectorConfig(mode="logprobs", seed=3), progress=False)
    ties = out.counts["ties"]
    assert ties["decided_by_tie_rule"] == ties["scored"] == 4 and ties["tolerance"] == TOL
    for s in subs:
        res = out.results[(1, s.id)]
        assert res.tie_rule and res.margin == 0.0
        want = sorted(s.candidates, key=lambda i: tie_key(3, items[i].uid))[:2]
        assert sorted(res.picks) == sorted(want)
    steep = FakeBackend(scorer=lambda p, labs: [-1.0 * i for i in range(len(labs))])
    out = select(plan, items, steep, cfg=SelectorConfig(mode="logprobs"), progress=False)
    assert out.counts["ties"]["decided_by_tie_rule"] == 0
    assert all(r.margin == pytest.approx(1.0) for r in out.results.values())
    assert (
        "ties"
        not in select(plan, items, FakeBackend(), cfg=SelectorConfig(), progress=False).counts
    )


# -- per-request sampling seeds --------------------------------------------------------------------


def test_request_seed_depends_on_the_prompt_and_the_call_seed_only() -> None:
    p = "Choose exactly 1 of these candidates"
    assert request_seed(7, p) == request_seed(7, TokenizedPrompt(p, [1, 2, 3]))
    assert request_seed(7, p) != request_seed(8, p) != request_seed(7, p + " ")
    assert 0 <= request_seed(2**40, p) < 2**63


@pytest.fixture(scope="module")
def hf_float32(tiny_model_dir: Path):
    """The tiny model in float32, batches of up to 8 (sampling, not float noise, is the subject)."""
    from selectllm_local.backends import load_backend
    from selectllm_local.config import EngineConfig

    backend = load_backend(
        "transformers", str(tiny_model_dir), EngineConfig(batch_size=8, dtype="float32")
    )
    yield backend
    backend.close()


def _sampling_prompts(backend) -> list[str]:
    texts = ["Name a colour.", "Write one long sentence about rivers and the sea near a town.",
             "Count to three.", "What is a cat? Answer in a few words, please, and be kind."]  # fmt: skip
    return [backend.render_chat([{"role": "user", "content": t}]) for t in texts]


def _same_sample_alone_and_batched(backend) -> None:
    prompts = _sampling_prompts(backend)
    kw = dict(max_tokens=12, temperature=1.0, seed=11)
    batched = [g.text for g in backend.generate(prompts, **kw)]
    alone = [backend.generate([p], **kw)[0].text for p in prompts]
    reordered = [g.text for g in backend.generate(prompts[::-1], **kw)][::-1]
    assert batched == alone == reordered
    # it is sampling: other seeds give other answers, and greedy is one fixed answer
    seeds = {
        tuple(g.text for g in backend.generate(prompts, **{**kw, "seed": s})) for s in range(4)
    }
    assert len(seeds) > 1


def test_transformers_sample_does_not_depend_on_the_batch(hf_float32) -> None:
    _same_sample_alone_and_batched(hf_float32)


@requires_vllm
def test_vllm_sample_does_not_depend_on_the_batch(vllm_backend) -> None:
    _same_sample_alone_and_batched(vllm_backend)


# -- --batch-invariant -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_batch_invariant_without_kernels_exits_2(
    backend: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """On this CPU machine nothing honours the flag: a one-paragraph error, exit 2, no engine."""
    from selectllm_local.hardware import cuda_available

    if cuda_available() and backend == "vllm":  # a GPU: the flag holds there from sm_80 on
        import torch

        from selectllm_local.backends.invariance import unsupported

        major, _minor = torch.cuda.get_device_capability(0)
        assert (unsupported("vllm") is None) == (major >= 8), unsupported("vllm")
        return
    pool = small_pool(tmp_path, 30)
    cmd = [sys.executable, "-m", "selectllm_local", "select", str(pool), "--budget", "5",
           "--model", str(tiny_model_dir), "--backend", backend, "--batch-invariant",
           "--run-dir", str(tmp_path / "run")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    err = " ".join(res.stderr.split())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "--batch-invariant" in err
    assert ("has none" if backend == "transformers" else "This machine has no GPU") in err


@pytest.mark.parametrize(
    ("capability", "hip_arch", "holds"),
    [((9, 0), None, True), ((8, 0), None, True), ((7, 5), None, False),
     ((9, 4), "gfx942:sramecc+:xnack-", True), ((9, 0), "gfx1100", False)],
)  # fmt: skip
def test_batch_invariant_gpu_rule(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], hip_arch: str | None, holds: bool
) -> None:
    """The GPU side of ``--batch-invariant`` (pure logic: the device queries are stubbed)."""
    import types

    import torch

    from selectllm_local.backends.invariance import unsupported

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _i=0: "Some GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _i=0: capability)
    monkeypatch.setattr(torch.version, "hip", "6.4" if hip_arch else None)
    props = types.SimpleNamespace(gcnArchName=hip_arch or "")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _i=0: props)
    if getattr(torch, "xpu", None) is not None:
        monkeypatch.setattr(torch.xpu, "is_available", lambda: False)
    why = unsupported("vllm")
    assert (why is None) == holds, why
    if not holds:
        assert "--batch-invariant" in why and ("7.5" in why or "gfx1100" in why)
