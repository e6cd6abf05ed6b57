"""Write ``run/``: a plan + select run directory made by the code of commit b8dc753 (before the
run bookkeeping moved into ``RunStore.cached``), for ``tests/run/test_run_bookkeeping.py``'s check that an
old run directory is still finished. Run from a checkout of that commit:

    git worktree add /tmp/old b8dc753
    cd /tmp/old && PYTHONPATH=$PWD python /path/to/tests/data/old_format_run/regen.py

The ``experiment/`` files are copies of a real experiment run's markers (commit 0edf93f).
"""

import shutil
from pathlib import Path

from selectllm_local.backends.fake import FakeBackend
from selectllm_local.config import EngineConfig, PlanConfig, SelectConfig
from selectllm_local.run.pipeline import select_run

HERE = Path(__file__).parent
run = HERE / "run"
shutil.rmtree(run, ignore_errors=True)
plan = PlanConfig(pool=HERE / "pool.jsonl", budget=8, n_clusters=6, run_dir=run)
cfg = SelectConfig(plan=plan, engine=EngineConfig(backend="fake", model="fake"))
select_run(cfg, backend=FakeBackend(), progress=False)
