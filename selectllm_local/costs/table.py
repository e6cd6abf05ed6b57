"""The dry run's table: what ``selectllm experiment CONFIG --dry-run`` prints of an estimate
(``costs.estimate.estimate_experiment``), one line per stage, this CPU beside one GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _fewer(method_seeds: dict[str, list[int]]) -> str:
    """ " (kcenter: 2 seeds, ...)" for the methods that run their own seeds."""
    if not method_seeds:
        return ""
    return " (" + ", ".join(f"{m}: {len(s)}" for m, s in method_seeds.items()) + " seeds)"


def format_estimate(est: dict[str, Any]) -> str:
    """A table for people: one row per stage, the two columns labelled."""
    gpu = est["gpu"]
    lines = [
        f"Experiment {est['experiment']}: {len(est['methods'])} methods x {len(est['budgets'])} "
        f"budgets x {len(est['seeds'])} seeds{_fewer(est.get('method_seeds') or {})} = "
        f"{est['cells']} cells; pool {est['pool_rows']:,} "
        f"rows, {est['test_rows']:,} test rows.",
    ]
    removed = est.get("test_rows_removed") or {}
    if removed.get("total"):
        from selectllm_local.data.splits import REASONS

        reasons = ", ".join(
            f"{v:,} {REASONS.get(k, k)}" for k, v in removed.items() if k != "total"
        )
        lines.append(
            f"Removed from the pool as test examples: {removed['total']:,} rows ({reasons})."
        )
    for role, m in est["models"].items():
        lines.append(
            f"{role}: {Path(m['model']).name}: {m['non_embedding_params'] / 1e9:.2f}B non-embedding "
            f"params ({m['size_from']}); tokens counted with "
            f"{'its tokenizer' if m['tokens_counted_with'] == m['model'] else 'the heuristic'}."
        )
    width = max(len(s["name"]) for s in est["stages"]) + 2
    head = f"{'stage':<{width}}{'runs':>5}  {'this CPU (1)':>13}  {'one ' + gpu['key'].upper() + ' (2) ':>13}  work"
    lines += ["", head, "-" * len(head)]
    for s in est["stages"]:
        lines.append(
            f"{s['name']:<{width}}{s['runs']:>5}  {_duration(s['cpu_seconds']):>13}  "
            f"{_duration(s['gpu_seconds']) + ('*' if s['gpu_measured'] else ' '):>13}  {s['detail']}"
        )
    lines.append(
        f"{'total':<{width}}{'':>5}  {_duration(est['total_cpu_seconds']):>13}  "
        f"{_duration(est['total_gpu_seconds']) + ' ':>13}"
    )
    rates = est["cpu"]["rates"]
    lines += [
        "",
        f"(1) this CPU: {est['cpu']['label']}"
        + (
            f" ({rates})."
            if rates
            else ": no rates file (pass --rates FILE from benchmarks/bench_costs.py)."
        ),  # fmt: skip
        f"(2) one {gpu['device']}: {gpu['label']}: {gpu['bf16_dense_tflops']:g} TFLOP/s bf16 "
        f"datasheet x {gpu['utilization']:.0%} for prefill and training, "
        f"{gpu['memory_bandwidth_gbs']:,.0f} GB/s for decode.",
        *_measured_note(gpu.get("measured")),
        f"Not counted: {est['not_counted']}.",
    ]
    return "\n".join(line.rstrip() for line in lines)


def _measured_note(m: dict[str, Any] | None) -> list[str]:
    """Footnote of the rows marked * (scaled from --gpu-rates instead of the datasheet)."""
    if not m:
        return []
    parts = []
    if "finetune_tokens_per_s" in m:
        parts.append(f"fine-tune {m['finetune_tokens_per_s']:,.0f} trained tokens/s")
    if "evaluate_answers_per_s" in m:
        parts.append(
            f"evaluation {m['evaluate_answers_per_s']:.2f} answers/s (transformers, batch "
            f"{m['evaluate_batch_size']:.0f}, {m['evaluate_max_new_tokens']:.0f} new tokens)"
        )
    if "selection_transformers_prompt_tokens_per_s" in m:
        parts.append(
            f"selection {m['selection_transformers_prompt_tokens_per_s']:,.0f} prompt tokens/s "
            "(transformers)"
        )
    return [
        f"*  {m['label']} ({m['rates']}; {m['non_embedding_params'] / 1e9:.2f}B params): "
        f"{'; '.join(parts)}; scaled by model size. Unmarked rows of (2) stay datasheet estimates."
    ]
