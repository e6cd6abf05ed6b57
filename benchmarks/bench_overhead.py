"""Our code's CPU time per selection prompt with the forward passes taken out, and per run.

``select`` spends time outside the engine on every prompt: rendering the template, counting and
cutting candidates, fitting the prompt to the context, tokenizing it for the batch, padding,
gating the constrained decoding, decoding and parsing the answer. On a GPU that serial work was
about half of the selection stage (issue 10), and none of it needs the GPU, so it is measured
here on the CPU.

The backend is the real transformers backend (``HFBackend``) with a real trained tokenizer, whose
model is replaced by a stub that answers ``[1]``-style ids at once, walking the answer a token
per step through the backend's constraint gate as transformers does: everything but the forward
passes is the production path, and the whole of the "engine" window counts as ours. Workload:
Dolly rows, ``--subsets`` prompts of ``--candidates`` candidates cut to
``--max-candidate-tokens``, the benchmark's strided subset layout. Reported: medians over
``--repeats`` of select seconds / prompts, CPU ms (process time, all threads: the robust figure
on a shared machine) beside wall ms, each **cold** (no candidate units stored: the first
select on a pool, with a model used before, whose whole-token table, ``selection.wholetokens``,
is kept; the headline) and **warm** (the units a previous select on the pool stored: another
budget, mode or seed; ``selection.tokencache``), alternating, with the Rust BPE model's word
cache emptied before each select as in a new process; each repeat also runs the plan's first
quarter cold, which splits a cold select into a cost per prompt and one per select (``_split``),
and a **first** select (an empty store: the first ever with this tokenizer, which also builds its
table); then a cProfile breakdown (process-time clock) of one more cold select, and the per-run
fixed cost of the whole ``pipeline.select_run`` (``measure_fixed``, cold). ``--no-store`` turns
the store off (and with it the table);
``--no-pieces`` makes the candidates' ids come from the Rust tokenizer's batched calls alone, not
from ``selection.pieces`` (the code before it, for a before/after in one checkout).
Tokenizers: ``tiny`` (the tests' 1k-token BPE) and ``pool`` (a 32k BPE trained on the pool, about
a real LLM tokenizer's length per token), each loaded from its folder as a backend loads one.

    python benchmarks/bench_overhead.py --tokenizer pool --candidates 14 \
        --out benchmarks/results/overhead_issue19.json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POOL = ROOT / "examples" / "dolly_sample_1500.jsonl"
TARGET_CPU_MS = 3.0  # per prompt, K = 14, candidates of up to 256 tokens (issue 19)
TARGET_FIXED_S = 0.2  # per run, beyond engine start (issue 19)
# selection.tokencache.ENV, spelled out so that the bench also runs against code without it
STORE_ENV = "SELECTLLM_TOKEN_CACHE"
KEYS = [
    "benchmark", "label", "tokenizer", "vocab_size", "mode", "prompts", "candidates",
    "max_candidate_tokens", "repeats", "store", "ms_per_prompt_median", "ms_per_prompt_all",
    "cpu_ms_per_prompt_median", "cpu_ms_per_prompt_all", "small_prompts", "small_cpu_ms_median",
    "marginal_cpu_ms_per_prompt", "select_fixed_cpu_ms", "first_cpu_ms_per_prompt_median",
    "first_cpu_ms_per_prompt_all", "warm_ms_per_prompt_median",
    "warm_ms_per_prompt_all", "warm_cpu_ms_per_prompt_median", "warm_cpu_ms_per_prompt_all",
    "tokenize_once_cpu_ms_per_prompt_median", "tokenize_once_pieces_cpu_ms_per_prompt_median",
    "pieces", "load_average_before", "load_average_after",
    "tokenizers_parallelism", "prompt_tokens_per_prompt", "target_cpu_ms_per_prompt", "profile",
    "profile_top", "environment",
]  # fmt: skip


class _StubModel:
    """Stands in for the forward passes: answers the first ``k`` ids (or flat logits) at once.

    Its ``generate`` walks the answer one token per step as transformers does and asks the
    backend's ``prefix_allowed_tokens_fn`` (the HF constraint gate) at every step, so the gate's
    cost is measured, and it checks that the gate allows the scripted answer.
    """

    def __init__(self, answer_ids: list[int], vocab: int) -> None:
        self.answer_ids, self.vocab = answer_ids, vocab
        self._logits: dict[int, Any] = {}

    def generate(self, input_ids: Any, **kw: Any) -> Any:
        import torch

        gate = kw.get("prefix_allowed_tokens_fn")
        answer = self.answer_ids[: kw.get("max_new_tokens", len(self.answer_ids))]
        width = input_ids.shape[1]
        ans = torch.tensor(answer, dtype=input_ids.dtype).expand(input_ids.shape[0], -1)
        seq = torch.cat([input_ids, ans], dim=1)
        if gate is not None:
            for j, tok in enumerate(answer):
                for b in range(seq.shape[0]):
                    if tok not in gate(b, seq[b, : width + j]):
                        raise AssertionError(f"the constraint gate refused token {tok}")
        return seq

    def __call__(self, input_ids: Any, **_: Any) -> Any:
        import torch

        # One logits tensor per batch size, made once: allocating and zeroing it stands in for
        # the forward pass, which is not ours (it cost ~0.5 ms per prompt of torch threads at
        # a 27k vocabulary); what the backend does with the logits still counts.
        logits = self._logits.get(input_ids.shape[0])
        if logits is None:
            logits = self._logits[input_ids.shape[0]] = torch.zeros(
                input_ids.shape[0], 1, self.vocab
            )
        return type("Out", (), {"logits": logits})()


class _NoPieces:
    """``--no-pieces``: what ``candidateids`` sees in place of ``pieces.PieceEncoder``."""

    @classmethod
    def for_tokenizer(cls, fast: Any) -> None:
        return None


def _backend(model_dir: Path, tokenizer: Any) -> Any:
    from selectllm_local.backends.hf_backend import HFBackend
    from selectllm_local.config import EngineConfig

    backend = HFBackend(str(model_dir), EngineConfig(dtype="float32", device="cpu"))
    tokenizer.padding_side = "left"
    backend.tokenizer = tokenizer
    backend._has_template = True
    answer = tokenizer.encode("[1]", add_special_tokens=False) + [tokenizer.eos_token_id]
    backend.model = _StubModel(answer, len(tokenizer))
    return backend


def _tokenizer(kind: str, items: list[Any], tmp: Path) -> Any:
    from transformers import AutoTokenizer

    from selectllm_local.bench.model import train_pool_tokenizer
    from selectllm_local.data import pool as data
    from selectllm_local.models import random_weights as tinymodel

    if kind == "tiny":
        tinymodel.build_tokenizer(tmp / "tok-tiny")
    else:
        train_pool_tokenizer(tmp / "tok-pool", [data.embedding_text(it) for it in items])
    # loaded from its folder, as the backends load a model's tokenizer
    return AutoTokenizer.from_pretrained(tmp / f"tok-{kind}")


def _tokenize_once(
    tok: Any, items: list[Any], args: argparse.Namespace
) -> tuple[float, float | None]:
    """CPU ms per prompt of tokenizing every candidate's text once, alone (texts pre-cut as
    ``truncation`` does; median of ``--repeats``): by the Rust tokenizer in one batched call
    without offsets, and by ``selection.pieces`` from an empty table (None where it does not
    apply). What a cold run does beyond the smaller is our own work."""
    from selectllm_local.selection import prompts as prompting

    cap = args.max_candidate_tokens * 12
    texts = [prompting.candidate_text(it)[:cap] + "\n" for it in items]
    fast = tok.backend_tokenizer
    encode = getattr(fast, "encode_batch_fast", fast.encode_batch)
    try:
        from selectllm_local.selection.pieces import PieceEncoder
    except ImportError:  # code from before the pre-token encoder
        PieceEncoder = None  # noqa: N806
    rust, pieces = [], []
    for _ in range(args.repeats):
        _clear_bpe_cache(fast)
        c0 = time.process_time()
        encode(texts, add_special_tokens=False)
        rust.append((time.process_time() - c0) * 1000 / args.subsets)
        enc = PieceEncoder.for_tokenizer(fast) if PieceEncoder is not None else None
        if enc is not None:
            _clear_bpe_cache(fast)
            c0 = time.process_time()
            enc.encode(texts, lambda ts: [e.ids for e in encode(ts, add_special_tokens=False)])
            pieces.append((time.process_time() - c0) * 1000 / args.subsets)
    return _median(rust), (_median(pieces) if pieces else None)


def _pieces_state(args: argparse.Namespace) -> str:
    """Whether this run's candidates went through ``selection.pieces``, and if not, why."""
    try:
        from selectllm_local.selection.pieces import MAX_CORES, pays_here
    except ImportError:
        return "off (code from before it)"
    if not args.pieces:
        return "off (--no-pieces)"
    return "on" if pays_here() else f"off (more than {MAX_CORES} cores for the Rust tokenizer)"


def _select(plan: Any, items: Any, backend: Any, cfg: Any, store: Path | str) -> Any:
    """One ``select`` with the candidate token store at ``store`` ("off": none), as a new
    process would run it: the Rust BPE model's own word cache emptied first (``_clear_cache``,
    tokenizers >= 0.20), else the words of earlier selects here would skip its merges."""
    from selectllm_local.selection import rounds as selection

    _clear_bpe_cache(backend.tokenizer)
    os.environ[STORE_ENV] = str(store)
    return selection.select(plan, items, backend, cfg=cfg, progress=False)


def _clear_bpe_cache(tokenizer: Any) -> None:
    model = getattr(getattr(tokenizer, "backend_tokenizer", tokenizer), "model", None)
    clear = getattr(model, "_clear_cache", None)
    if clear is not None:
        clear()


def _empty_units(root: Path) -> None:
    """Delete the candidate units under store ``root`` and keep what it holds per tokenizer
    (``wholetokens``): a pool never selected before, with a model used before."""
    for path in root.glob("*/b*"):
        path.unlink()


def _timed(fn: Any, prompts: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per prompt of ``fn()``; CPU is this process's time, all threads: what
    the work costs on an idle machine, robust to other jobs sharing the cores."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - t0) * 1000 / prompts, (time.process_time() - c0) * 1000 / prompts


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def _split(full_ms: float, small_ms: float, n: int, small_n: int) -> dict[str, Any]:
    """A cold select's CPU time as ``per_select + prompts * per_prompt``, from the medians of
    the full plan (``n`` prompts, ``full_ms`` in all) and its first ``small_n`` prompts: the cost
    per prompt (issue 19's <= 3 ms) and per select (the run's checks of its tokenizer paths, the
    store's fingerprint, the templates), which the figure per prompt of one select also holds."""
    if n == small_n:
        return {"small_prompts": small_n, "marginal_cpu_ms_per_prompt": None,
                "select_fixed_cpu_ms": None, "small_cpu_ms_median": round(small_ms, 3)}  # fmt: skip
    per_prompt = (full_ms - small_ms) / (n - small_n)
    return {
        "small_prompts": small_n,
        "small_cpu_ms_median": round(small_ms, 3),
        "marginal_cpu_ms_per_prompt": round(per_prompt, 3),
        "select_fixed_cpu_ms": round(small_ms - small_n * per_prompt, 3),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from selectllm_local.bench import run as bench
    from selectllm_local.config import SelectorConfig
    from selectllm_local.data import pool as data
    from selectllm_local.models import random_weights as tinymodel

    items, _ = data.load_pool(args.pool)
    need = args.subsets * args.candidates
    items = [dataclasses.replace(it, index=i) for i, it in enumerate(items[:need])]
    if len(items) < need:
        sys.exit(f"the pool has {len(items)} rows; {need} are needed")
    load0 = list(os.getloadavg())
    plan = bench.strided_plan(args.subsets, args.candidates, args.picks)
    cfg = SelectorConfig(mode=args.mode, max_candidate_tokens=args.max_candidate_tokens, retries=0)
    n = len(plan.subsets)
    env_before = os.environ.get(STORE_ENV)
    with tempfile.TemporaryDirectory(prefix="selectllm-overhead-") as tmp_s:
        tmp = Path(tmp_s)
        tok = _tokenizer(args.tokenizer, items, tmp)
        model_dir = tinymodel.build_random_model(tmp / "model", "tiny-qwen2")
        backend = _backend(model_dir, tok)
        warm_dir, cold_dir = tmp / "store-warm", tmp / "store-cold"
        # The first select is a warm-up (imports, allocations); it also fills the warm store.
        out = _select(plan, items, backend, cfg, warm_dir if args.store else "off")
        ptoks = out.counts["prompt_tokens"]
        if args.store:  # the cold store's tokenizer tables, as a model used before has them
            _select(plan, items, backend, cfg, cold_dir)
        cold: list[tuple[float, float]] = []
        warm: list[tuple[float, float]] = []
        first: list[float] = []  # CPU ms per prompt, a store with nothing in it at all
        # The same cold select on the plan's first quarter: with the full plan, it splits a
        # select's CPU time into a cost per prompt and a cost per select (issue 19's two
        # targets), as the line through the two medians.
        small_n = max(1, n // 4)
        small_plan = dataclasses.replace(
            plan, subsets=plan.subsets[:small_n], budget=small_n * args.picks
        )
        small: list[float] = []  # CPU ms per select
        # Each repeat is a fresh selection, as a new `select` would be. Cold: an empty store
        # (the first select on a pool; with --no-store, no store at all); warm: the store the
        # warm-up filled (another select on the same pool: other budget, mode or seed). The
        # stub engine's window is counted as ours: what is left of it once the forward passes
        # are gone is our work (padding, the constraint gate, decoding, parsing). Cold and warm
        # alternate (ABBA), so a change in the machine's load hits both alike.
        for r in range(args.repeats):
            where_cold = cold_dir if args.store else "off"
            runs = [("cold", where_cold), ("warm", warm_dir), ("small", where_cold)]
            runs += [("first", tmp / f"store-first-{r}")]
            for kind, where in runs if r % 2 == 0 else runs[::-1]:
                if kind in ("warm", "first") and not args.store:
                    continue
                if kind in ("cold", "small"):
                    _empty_units(cold_dir)
                if kind == "small":
                    _w, c = _timed(lambda w=where: _select(small_plan, items, backend, cfg, w), 1)
                    small.append(c)
                    continue
                one = _timed(lambda w=where: _select(plan, items, backend, cfg, w), n)
                if kind == "first":
                    first.append(one[1])
                    continue
                (cold if kind == "cold" else warm).append(one)
        floor, floor_pieces = _tokenize_once(tok, items, args)
        # a CPU-time profile of one more cold select
        _empty_units(cold_dir)
        prof = cProfile.Profile(time.process_time)
        prof.enable()
        _select(plan, items, backend, cfg, cold_dir if args.store else "off")
        prof.disable()
    if env_before is None:
        os.environ.pop(STORE_ENV, None)
    else:
        os.environ[STORE_ENV] = env_before
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    top = []
    for (file, line, fn), (_cc, nc, tt, ct, _) in sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda kv: -kv[1][3],
    )[:25]:
        where = f"{Path(file).name}:{line}:{fn}"
        top.append({"function": where, "calls": nc, "cum_cpu_ms_per_prompt": round(ct * 1000 / n, 3), "self_cpu_ms_per_prompt": round(tt * 1000 / n, 3)})  # fmt: skip
    res = {
        "benchmark": "overhead",
        "label": args.label,
        "tokenizer": args.tokenizer,
        "vocab_size": len(tok),
        "mode": args.mode,
        "prompts": n,
        "candidates": args.candidates,
        "max_candidate_tokens": args.max_candidate_tokens,
        "repeats": args.repeats,
        "store": "on" if args.store else "off",
        # the headline: cold (the first select on a pool, nothing stored yet)
        "ms_per_prompt_median": _median([w for w, _ in cold]),
        "ms_per_prompt_all": [round(w, 3) for w, _ in cold],
        "cpu_ms_per_prompt_median": _median([c for _, c in cold]),
        "cpu_ms_per_prompt_all": [round(c, 3) for _, c in cold],
        **_split(_median([c for _, c in cold]) * n, _median(small), n, small_n),
        "first_cpu_ms_per_prompt_median": _median(first) if first else None,
        "first_cpu_ms_per_prompt_all": [round(c, 3) for c in first],
        "warm_ms_per_prompt_median": _median([w for w, _ in warm]) if warm else None,
        "warm_ms_per_prompt_all": [round(w, 3) for w, _ in warm],
        "warm_cpu_ms_per_prompt_median": _median([c for _, c in warm]) if warm else None,
        "warm_cpu_ms_per_prompt_all": [round(c, 3) for _, c in warm],
        "tokenize_once_cpu_ms_per_prompt_median": floor,
        "tokenize_once_pieces_cpu_ms_per_prompt_median": floor_pieces,
        "pieces": _pieces_state(args),
        "load_average_before": load0,
        "load_average_after": list(os.getloadavg()),
        # as `selectllm` runs it: unset = the Rust tokenizer's batches use every core
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "unset"),
        "prompt_tokens_per_prompt": round(ptoks / n, 1),
        "target_cpu_ms_per_prompt": TARGET_CPU_MS,
        "profile": "cProfile with time.process_time, one cold select",
        "profile_top": top,
        "environment": bench.bench_environment(args.machine),
    }
    return res


def _fixed_run(cfg: Any, backend: Any, run_dir: Path, store: Path) -> tuple[float, float, int]:
    """One whole ``select_run`` on a planned run directory, afresh, with an empty candidate
    token store at ``store`` (a cold run: nothing of an earlier run reused): (wall s, CPU s,
    prompts)."""
    from selectllm_local.run.pipeline import select_run

    for name in ("responses.jsonl", "selected.jsonl", "summary.json"):
        (run_dir / name).unlink(missing_ok=True)
    os.environ[STORE_ENV] = str(store)
    t0, c0 = time.perf_counter(), time.process_time()
    out = select_run(cfg, backend=backend, progress=False, report=False)
    return (
        time.perf_counter() - t0,
        time.process_time() - c0,
        out.summary.counts.prompts_sent_this_run,
    )


def measure_fixed(args: argparse.Namespace) -> dict[str, Any]:
    """Per-run fixed cost of ``select`` beyond engine start, from two pool sizes.

    The whole ``pipeline.select_run`` (stage checks, template, hashing, the selection, file
    writes, summary) on planned run directories with the stubbed engine passed in (so no engine
    start), at ``--fixed-small`` and the whole pool (the quick start's size). The line through the
    two medians gives the per-run fixed cost (its intercept) and the per-prompt cost (its slope).
    """
    from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig
    from selectllm_local.data import pool as data
    from selectllm_local.models import random_weights as tinymodel
    from selectllm_local.run.pipeline import plan_run

    rows = args.pool.read_text("utf-8").splitlines()
    sizes = [(args.fixed_small, args.fixed_small_budget), (len(rows), args.fixed_budget)]
    out: dict[str, Any] = {"sizes": []}
    with tempfile.TemporaryDirectory(prefix="selectllm-fixed-") as tmp_s:
        tmp = Path(tmp_s)
        items, _ = data.load_pool(args.pool)
        tok = _tokenizer("pool", items, tmp)
        model_dir = tinymodel.build_random_model(tmp / "model", "tiny-qwen2")
        backend = _backend(model_dir, tok)
        for n, budget in sizes:
            pool = tmp / f"pool{n}.jsonl"
            pool.write_text("\n".join(rows[:n]) + "\n", "utf-8")
            plan = PlanConfig(pool=pool, budget=budget, run_dir=tmp / f"run{n}")
            engine = EngineConfig(backend="transformers", model=str(model_dir))
            cfg = SelectConfig(plan=plan, engine=engine)
            plan_run(plan, progress=False)  # embedding and k-means: not ours to time here
            runs = []
            for _r in range(args.repeats + 1):  # a pool never seen (the tokenizer's table kept)
                _empty_units(tmp / f"store-{n}")
                runs.append(_fixed_run(cfg, backend, plan.resolved_run_dir, tmp / f"store-{n}"))
            timed = runs[1:]
            out["sizes"].append({
                "pool": n, "budget": budget, "prompts": timed[0][2],
                "wall_s_median": round(statistics.median(r[0] for r in timed), 4),
                "cpu_s_median": round(statistics.median(r[1] for r in timed), 4),
                "wall_s_all": [round(r[0], 4) for r in timed],
                "cpu_s_all": [round(r[1], 4) for r in timed],
            })  # fmt: skip
    (a, b) = out["sizes"]
    for kind in ("wall", "cpu"):
        slope = (b[f"{kind}_s_median"] - a[f"{kind}_s_median"]) / (b["prompts"] - a["prompts"])
        out[f"{kind}_ms_per_prompt"] = round(slope * 1000, 3)
        out[f"{kind}_fixed_s"] = round(a[f"{kind}_s_median"] - slope * a["prompts"], 4)
    out["target_fixed_s"] = TARGET_FIXED_S
    out["load_average"] = list(os.getloadavg())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    ap.add_argument("--tokenizer", choices=["tiny", "pool"], action="append")
    ap.add_argument("--mode", choices=["generate", "logprobs"], action="append")
    ap.add_argument("--candidates", type=int, action="append", help="default: 11 and 14")
    ap.add_argument("--subsets", type=int, default=96)
    ap.add_argument("--picks", type=int, default=1)
    ap.add_argument("--max-candidate-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--label", default="")
    ap.add_argument("--machine", default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--fixed-small", type=int, default=280, help="rows of the small pool")
    ap.add_argument("--fixed-small-budget", type=int, default=20)
    ap.add_argument("--fixed-budget", type=int, default=137, help="budget on the whole pool")
    ap.add_argument("--no-fixed", action="store_true", help="skip the per-run fixed cost")
    ap.add_argument(
        "--no-pieces",
        dest="pieces",
        action="store_false",
        help="candidate ids from the Rust tokenizer alone, not selection.pieces",
    )
    ap.add_argument(
        "--no-store",
        dest="store",
        action="store_false",
        help="no candidate token store (every select tokenizes; no warm figure)",
    )
    args = ap.parse_args()
    if not args.pieces:
        from selectllm_local.selection import candidateids

        if hasattr(candidateids, "PieceEncoder"):  # else code from before it: nothing to turn off
            candidateids.PieceEncoder = _NoPieces  # type: ignore[misc,assignment]
    runs = []
    for tok in args.tokenizer or ["pool"]:
        for mode in args.mode or ["generate", "logprobs"]:
            for k in args.candidates or [11, 14]:
                one = argparse.Namespace(**{**vars(args), "tokenizer": tok, "mode": mode,
                                            "candidates": k})  # fmt: skip
                res = measure(one)
                runs.append({key: res[key] for key in KEYS})
                warm = (
                    f"warm (stored candidate tokens) {res['warm_cpu_ms_per_prompt_median']:.3f} "
                    f"ms CPU, {res['warm_ms_per_prompt_median']:.3f} ms wall"
                    if res["warm_cpu_ms_per_prompt_median"] is not None
                    else "no store"
                )
                print(f"{tok:5s} {mode:9s} K={k:2d}: cold (first select on the pool) "
                      f"{res['cpu_ms_per_prompt_median']:.3f} ms CPU, "
                      f"{res['ms_per_prompt_median']:.3f} ms wall per prompt; {warm} "
                      f"(target <= {TARGET_CPU_MS} ms CPU; tokenizing the candidates once alone: "
                      f"{res['tokenize_once_cpu_ms_per_prompt_median']:.3f} Rust batch, "
                      f"{res['tokenize_once_pieces_cpu_ms_per_prompt_median'] or float('nan'):.3f} "
                      "pre-tokens) "
                      f"({res['prompt_tokens_per_prompt']:.0f} prompt tokens; load "
                      f"{res['load_average_before'][0]:.1f})")  # fmt: skip
                cold, env = res["cpu_ms_per_prompt_median"], res["environment"]
                print(f"    cold, the whole select (its fixed checks included), median of "
                      f"{res['repeats']}: {cold:.3f} ms CPU per prompt "
                      f"{'<=' if cold <= TARGET_CPU_MS else '>'} the {TARGET_CPU_MS} ms target "
                      f"({env.get('cpu_model') or 'CPU not named'}, native bf16: "
                      f"{env.get('cpu_native_bf16')})")  # fmt: skip
                if res["first_cpu_ms_per_prompt_median"] is not None:
                    print(f"    the first select with this tokenizer (nothing stored, its "
                          f"whole-token table built): {res['first_cpu_ms_per_prompt_median']:.3f} "
                          "ms CPU per prompt")  # fmt: skip
                if res["marginal_cpu_ms_per_prompt"] is not None:
                    per = res["marginal_cpu_ms_per_prompt"]
                    print(f"    cold, split (medians at {res['small_prompts']} and {res['prompts']} "
                          f"prompts): {per:.3f} ms CPU per prompt + "
                          f"{res['select_fixed_cpu_ms']:.1f} ms CPU per select; per prompt "
                          f"{'<=' if per <= TARGET_CPU_MS else '>'} the {TARGET_CPU_MS} ms "
                          "target")  # fmt: skip
                for row in res["profile_top"][:8]:
                    print(f"    {row['cum_cpu_ms_per_prompt']:8.3f} {row['function']}")
    result: dict[str, Any] = {"runs": runs}
    if not args.no_fixed:
        fixed = measure_fixed(args)
        result["fixed"] = fixed
        for row in fixed["sizes"]:
            print(f"select_run, pool {row['pool']:5d}, {row['prompts']:4d} prompts: "
                  f"{row['wall_s_median']:.3f} s wall, {row['cpu_s_median']:.3f} s CPU")  # fmt: skip
        print(f"fixed cost per run: {fixed['wall_fixed_s']:.3f} s wall, "
              f"{fixed['cpu_fixed_s']:.3f} s CPU (target <= {TARGET_FIXED_S} s); per prompt "
              f"{fixed['wall_ms_per_prompt']:.2f} ms wall, {fixed['cpu_ms_per_prompt']:.2f} ms CPU")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
