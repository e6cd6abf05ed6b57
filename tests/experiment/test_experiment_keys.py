"""Cell keys stay what they were: a resumed experiment must not redo its finished cells.

The keys of every cell of two experiment files were computed with the code of commit 0edf93f
(the long smollm2-dolly run's) and stored in ``tests/golden/experiment_keys/keys.json`` (how:
the README there). The current code must compute the same ones from the same files.
"""

from __future__ import annotations

import json

import pytest

from selectllm_local.experiment import keys
from selectllm_local.experiment.cells import Cell
from selectllm_local.experiment.config import load_experiment_config
from selectllm_local.experiment.inputs import load_inputs
from tests.helpers import REPO

GOLDEN = REPO / "tests" / "golden" / "experiment_keys"
FILES = {
    "keys.toml": GOLDEN / "keys.toml",
    "smollm2_dolly.toml": REPO / "experiments" / "smollm2_dolly.toml",
}
POOL = REPO / "examples" / "dolly_sample_1500.jsonl"  # the file hashed as the run's pool


@pytest.mark.parametrize("name", sorted(FILES))
def test_cell_selection_and_nll_keys_match_the_commit_of_the_long_run(name: str) -> None:
    golden = json.loads((GOLDEN / "keys.json").read_text())[name]
    cfg = load_experiment_config(FILES[name], require_models=False)
    data = load_inputs(cfg)
    cells = {}
    for method in cfg.methods:
        for budget in cfg.budgets:
            for seed in cfg.seeds_of(method):
                c = Cell(method, budget, seed)
                cells[c.name] = {
                    "cell": keys._cell_key(cfg, data, c, POOL),
                    "selection": keys._selection_key(cfg, c, POOL),
                }
    assert keys._nll_key(cfg, data) == golden["nll"]
    assert cells.keys() == golden["cells"].keys()
    changed = sorted(k for k in cells if cells[k] != golden["cells"][k])
    assert not changed, f"keys changed (a resumed run would redo these cells): {changed}"


def test_new_evaluation_engine_settings_are_keyed_and_old_ones_unchanged() -> None:
    """A setting that reaches the evaluation's engine only since it was nested changes the key
    when set; left at its default it adds nothing (so the frozen keys above hold)."""
    import dataclasses

    from selectllm_local.config import EngineConfig, EvaluateConfig

    base = EvaluateConfig(engine=EngineConfig(backend="transformers", batch_size=16))
    old_shape = {"backend": "transformers", "limit": None, "max_new_tokens": 256,
                 "batch_size": 16, "max_prompt_tokens": 1024, "seed": 0}  # fmt: skip
    assert keys.evaluate_key(base) == old_shape  # as 0edf93f's EvaluateConfig.to_dict() keyed it
    more = dataclasses.replace(base, engine=dataclasses.replace(base.engine, max_num_seqs=4))
    assert keys.evaluate_key(more) == {**old_shape, "engine": {"max_num_seqs": 4}}
