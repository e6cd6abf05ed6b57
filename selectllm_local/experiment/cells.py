"""An experiment's cells and where each selects: names shared by the runner and the results.

A cell is one (method, budget, seed); its folder is ``cells/<method>/b<budget>-s<seed>``. Apart
from the runner so that reading results (``results``, ``paired``, ``selectllm compare``) needs
nothing that runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Cell:
    method: str
    budget: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method.replace(':', '-')}/b{self.budget}-s{self.seed}"


def plan_dir_of(root: Path, method: str, budget: int, seed: int) -> Path:
    """The run directory a cell selects in: one per (budget, seed), shared by ``select`` and the
    baselines; a ``select:<mode>`` variant gets its own copy of the same plan (same pool,
    embeddings and seed, so the same clusters and subsets) so that each mode's run stays whole."""
    name, _, variant = method.partition(":")
    suffix = f"-select-{variant}" if name == "select" and variant else ""
    return root / "plans" / f"b{budget}-s{seed}{suffix}"
