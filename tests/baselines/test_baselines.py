"""Baselines: exact budget, no duplicates, seeded, and each one does what its name says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from selectllm_local.baselines.diversity import LCS_MAX_TOKENS, max_rouge_l_to_sample, rouge_tokens
from selectllm_local.baselines.draws import kcenter_greedy
from selectllm_local.baselines.registry import BASELINES, REGISTRY, run_baseline
from selectllm_local.errors import UserError
from selectllm_local.records import Plan, PoolItem, Subset
from tests.helpers import EXAMPLE_POOL


def _item(i: int, instruction: str, inp: str = "") -> PoolItem:
    return PoolItem(index=i, uid=str(i), source_row=i + 1, instruction=instruction, input=inp)


@pytest.fixture(scope="module")
def pool() -> list[PoolItem]:
    from selectllm_local.data.pool import load_pool

    items, _ = load_pool(EXAMPLE_POOL)
    return items[:300]


def _plan(n: int, k_per_subset: int, size: int) -> Plan:
    labels = [i % size for i in range(n)]
    subs = [
        Subset(
            id=s,
            candidates=list(range(s * size, min(n, (s + 1) * size))),
            k=k_per_subset,
            clusters=[],
        )
        for s in range((n + size - 1) // size)
    ]
    return Plan(
        n_clusters=size, labels=labels, layout="diverse", budget=0, subsets=subs, rounds_expected=1
    )


@pytest.mark.parametrize("name", ["random", "length", "diversity", "kcenter", "cluster-random"])
def test_exact_budget_no_duplicates_seeded(name: str, pool: list[PoolItem]) -> None:
    emb = np.random.default_rng(0).normal(size=(len(pool), 16)).astype(np.float32)
    plan = _plan(len(pool), 1, 10)
    kw = {"embeddings": emb, "plan": plan}
    a = run_baseline(name, pool, 30, seed=1, **kw)
    assert len(a) == 30 and len(set(a)) == 30 and all(0 <= i < len(pool) for i in a)
    assert a == run_baseline(name, pool, 30, seed=1, **kw)


def test_random_depends_on_seed(pool: list[PoolItem]) -> None:
    assert run_baseline("random", pool, 30, seed=0) != run_baseline("random", pool, 30, seed=1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), data=st.data())
def test_budget_exact_for_any_budget(n: int, data: st.DataObject) -> None:
    items = [_item(i, "word " * (i % 7 + 1)) for i in range(n)]
    budget = data.draw(st.integers(1, n))
    emb = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
    plan = _plan(n, data.draw(st.integers(1, 3)), data.draw(st.integers(2, 8)))
    for name in ("random", "length", "kcenter", "cluster-random", "diversity"):
        picks = run_baseline(name, items, budget, seed=3, embeddings=emb, plan=plan)
        assert len(picks) == budget and len(set(picks)) == budget


def test_length_longest_and_shortest(pool: list[PoolItem]) -> None:
    size = [len(it.instruction) + len(it.input) for it in pool]
    longest = run_baseline("length", pool, 20, seed=0)
    shortest = run_baseline("length", pool, 20, seed=0, shortest=True)
    rest = [size[i] for i in range(len(pool)) if i not in set(longest)]
    assert min(size[i] for i in longest) >= max(rest)
    rest = [size[i] for i in range(len(pool)) if i not in set(shortest)]
    assert max(size[i] for i in shortest) <= min(rest)


def test_kcenter_covers_separated_blobs() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 8)) * 100
    emb = np.concatenate([c + rng.normal(size=(50, 8)) for c in centers]).astype(np.float32)
    picks = kcenter_greedy(emb, 6, seed=0)
    assert sorted({int(p) // 50 for p in picks}) == list(range(6))  # one per blob


def test_kcenter_matches_brute_force() -> None:
    x = np.random.default_rng(1).normal(size=(80, 5)).astype(np.float32)
    picks = kcenter_greedy(x, 12, seed=4)
    chosen = [int(picks[0])]
    for _ in range(11):
        d = ((x[:, None, :] - x[chosen][None, :, :]) ** 2).sum(-1).min(1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    assert picks.tolist() == chosen


def test_diversity_scores_equal_rouge_score(pool: list[PoolItem]) -> None:
    from rouge_score import rouge_scorer

    texts = [f"{it.instruction} {it.input}".strip() for it in pool[:80]]
    got = max_rouge_l_to_sample(texts, sample_size=25, seed=5)
    sample = np.sort(np.random.default_rng(5).permutation(80)[:25])
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    cut = [" ".join(rouge_tokens(t)[:LCS_MAX_TOKENS]) for t in texts]
    want = [
        max(scorer.score(cut[j], cut[i])["rougeL"].fmeasure for j in sample if j != i)
        for i in range(80)
    ]
    np.testing.assert_allclose(got, want, atol=1e-12)
    picks = run_baseline("diversity", pool[:80], 10, seed=5, sample_size=25)
    assert max(got[picks]) <= min(np.delete(got, picks))


def test_cluster_random_one_per_subset() -> None:
    items = [_item(i, f"x{i}") for i in range(40)]
    plan = _plan(40, 1, 8)  # 5 subsets of 8, k = 1
    picks = run_baseline("cluster-random", items, 5, seed=0, plan=plan)
    assert sorted(p // 8 for p in picks) == [0, 1, 2, 3, 4]
    # budget below the number of subsets: a uniform draw among one winner per subset
    picks = run_baseline("cluster-random", items, 3, seed=0, plan=plan)
    assert len({p // 8 for p in picks}) == 3


def test_perplexity_with_a_real_model(tiny_llama_dir: Path, pool: list[PoolItem]) -> None:
    from selectllm_local.baselines.perplexity import perplexities

    texts = [f"{it.instruction}\n{it.input}".strip() for it in pool[:24]]
    ppl = perplexities(texts, str(tiny_llama_dir), batch_size=8, progress=False)
    assert np.all(np.isfinite(ppl)) and np.all(ppl > 1)
    # batching by length must not change a text's perplexity
    single = perplexities(texts[:3], str(tiny_llama_dir), batch_size=1, progress=False)
    np.testing.assert_allclose(ppl[:3], single, rtol=1e-4)
    kw = {"seed": 0, "scorer": lambda t: ppl}
    high = run_baseline("instruction-perplexity", pool[:24], 5, band="high", **kw)
    low = run_baseline("instruction-perplexity", pool[:24], 5, band="low", **kw)
    assert min(ppl[high]) >= max(ppl[low])


def test_old_perplexity_name_is_a_deprecated_alias(
    pool: list[PoolItem], caplog: pytest.LogCaptureFixture
) -> None:
    ppl = np.arange(24, dtype=np.float64)
    with caplog.at_level("WARNING"):
        old = run_baseline("perplexity", pool[:24], 5, seed=0, scorer=lambda t: ppl)
    assert "deprecated" in caplog.text and "answer-perplexity" in caplog.text
    assert old == run_baseline("instruction-perplexity", pool[:24], 5, seed=0, scorer=lambda t: ppl)


def test_answer_perplexity_scores_the_models_own_greedy_answer(
    tiny_llama_dir: Path, pool: list[PoolItem]
) -> None:
    """The paper's baseline: perplexity of the base model's answer given the prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selectllm_local.baselines.perplexity import answer_perplexities, perplexities
    from selectllm_local.training.trainset import render_prompt

    items = pool[:6]
    ppl = answer_perplexities(
        items, str(tiny_llama_dir), batch_size=4, answer_tokens=8, progress=False
    )
    assert ppl.shape == (6,) and np.all(np.isfinite(ppl)) and np.all(ppl >= 1)
    # by hand for item 0: greedy answer, then exp(mean NLL) of its tokens + EOS given the prompt
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    short = next(
        i
        for i, it in enumerate(items)
        if len(tok(render_prompt(it.instruction, it.input))["input_ids"]) < 200
    )
    prompt = tok(render_prompt(items[short].instruction, items[short].input), return_tensors="pt")
    n_p = prompt["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(
            **prompt, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id
        )
        a_ids = gen[0, n_p:].tolist()
        a_ids = a_ids[: a_ids.index(tok.eos_token_id)] if tok.eos_token_id in a_ids else a_ids
        ids = torch.cat([prompt["input_ids"][0], torch.tensor(a_ids + [tok.eos_token_id])])[None]
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        nll = -logp[torch.arange(n_p - 1, ids.shape[1] - 1), ids[0, n_p:]]
    np.testing.assert_allclose(ppl[short], float(torch.exp(nll.mean())), rtol=1e-3)
    texts = [f"{it.instruction}\n{it.input}".strip() for it in items]
    assert not np.allclose(ppl, perplexities(texts, str(tiny_llama_dir), progress=False))


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("nope", {}, "Unknown baseline"),
        ("random", {"budget": 0}, "--budget"),
        ("random", {"budget": 301}, "--budget"),
        ("kcenter", {}, "embeddings"),
        ("cluster-random", {}, "plan"),
        ("perplexity", {}, "--scorer-model"),
        ("answer-perplexity", {}, "--scorer-model"),
        ("instruction-perplexity", {"band": "odd", "scorer": "x"}, "--band"),
    ],
)
def test_user_errors(name: str, kw: dict, match: str, pool: list[PoolItem]) -> None:
    budget = kw.pop("budget", 10)
    with pytest.raises(UserError, match=match):
        run_baseline(name, pool, budget, seed=0, **kw)


@pytest.mark.parametrize("name", ["random", "kcenter", "cluster-random"])
def test_cli_writes_selected_like_select(name: str, tmp_path: Path) -> None:
    from selectllm_local.cli import app

    pool = tmp_path / "pool.jsonl"  # 200 rows: embedding the whole sample would dominate CI time
    pool.write_text("".join(EXAMPLE_POOL.read_text().splitlines(keepends=True)[:200]))
    res = CliRunner().invoke(
        app,
        [
            "baseline",
            name,
            str(pool),
            "--budget",
            "37",
            "--run-dir",
            str(tmp_path / "r"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{") :])
    rows = [json.loads(x) for x in Path(summary["files"]["selected"]).read_text().splitlines()]
    assert len(rows) == 37 and len({r["selectllm"]["index"] for r in rows}) == 37
    assert {"instruction", "context", "response"} <= set(rows[0])  # the original record
    assert rows[0]["selectllm"]["method"] == name


def test_cli_budget_too_large_exit_2(tmp_path: Path) -> None:
    from selectllm_local.cli import app

    res = CliRunner().invoke(
        app,
        ["baseline", "random", str(EXAMPLE_POOL), "--budget", "99999", "--run-dir", str(tmp_path)],
    )
    assert res.exit_code == 2 and "budget" in res.output


def test_one_registry_of_names() -> None:
    """The Literal, the registry and the experiment's methods name the same baselines."""
    from selectllm_local.baselines.registry import DEPRECATED

    assert tuple(REGISTRY) == BASELINES
    assert all(new in BASELINES for new in DEPRECATED.values())
    assert set(BASELINES) == {
        "random",
        "length",
        "answer-perplexity",
        "instruction-perplexity",
        "kcenter",
        "diversity",
        "cluster-random",
        "ifd",
        "cluster-ifd",
    }


def test_experiment_methods_follow_the_registry() -> None:
    """The experiment accepts every variant a registry entry declares (also under a deprecated
    name), refuses any other, and runs the [engine] model for exactly the engine-scored ones."""
    from selectllm_local.baselines.registry import DEPRECATED
    from selectllm_local.errors import UserError
    from selectllm_local.experiment.config import ENGINE_METHODS, _methods

    for name, entry in [
        *REGISTRY.items(),
        *((old, REGISTRY[new]) for old, new in DEPRECATED.items()),
    ]:
        for variant in entry.variants:
            assert _methods([f"{name}:{variant}"]) == [f"{name}:{variant}"]
        with pytest.raises(UserError, match="unknown variant"):
            _methods([f"{name}:no-such-variant"])
    assert _methods(["length:shortest", "answer-perplexity:low"])
    assert (
        {m for m in ENGINE_METHODS if m != "select"}
        == {n for n, b in REGISTRY.items() if b.scorer == "engine"}
        == {"ifd", "cluster-ifd"}
    )
    assert {n for n, b in REGISTRY.items() if b.scorer == "base"} == {
        "answer-perplexity",
        "instruction-perplexity",
    }
