"""Print the keys of every cell of an experiment file with the code of the tree on PYTHONPATH.

    PYTHONPATH=<tree> python tests/golden/experiment_keys/make_keys.py CONFIG POOL_FILE

Works on the code of commit 0edf93f (where the config still loaded the pool) and on later code
(``experiment.inputs.load_inputs``). See README.md beside it.
"""

import json
import sys
from pathlib import Path

from selectllm_local.experiment.config import load_experiment_config

try:  # the keys' own module since issue 20
    from selectllm_local.experiment import keys
except ImportError:  # 0edf93f: in the runner
    from selectllm_local.experiment import runner as keys

cfg = load_experiment_config(Path(sys.argv[1]), require_models=False)
pool = Path(sys.argv[2])
try:
    from selectllm_local.experiment.inputs import load_inputs

    data = (load_inputs(cfg),)
except ImportError:
    data = ()
cells = {}
for m in cfg.methods:
    for b in cfg.budgets:
        for s in cfg.seeds_of(m):
            c = keys.Cell(m, b, s)
            cells[c.name] = {
                "cell": keys._cell_key(cfg, *data, c, pool),
                "selection": keys._selection_key(cfg, c, pool),
            }
print(json.dumps({"nll": keys._nll_key(cfg, *data), "cells": cells}, indent=1, sort_keys=True))
