"""Each measurement starts from an empty candidate-token store, so no timing depends on history.

``select`` keeps the candidates it tokenized in a store under the user's cache
(``selection.tokencache``, ``$SELECTLLM_TOKEN_CACHE``) and reads them back on the next run over
the same rows. A benchmark timed against that store would report cold seconds on its first run
on a machine and warm ones afterwards (render and "ours" seconds most), with nothing in the JSON
to tell them apart. So every measured setting, and the ``--stages`` select, runs with its own
empty store in a temporary folder, removed after; the user's store is neither read nor written,
and the JSON's environment block says ``token_store: "fresh"``. The timed repeats of one setting
use different pool rows, so each of them tokenizes its candidates as a first run does.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TOKEN_STORE = "fresh"
"""What the environment block records (``environment.token_store``)."""


@contextmanager
def fresh_token_store() -> Iterator[Path]:
    """``$SELECTLLM_TOKEN_CACHE`` set to a new empty folder inside, restored (or unset) after."""
    from selectllm_local.selection.tokencache import ENV

    before = os.environ.get(ENV)
    with tempfile.TemporaryDirectory(prefix="selectllm-bench-tokens-") as tmp:
        os.environ[ENV] = tmp
        try:
            yield Path(tmp)
        finally:
            if before is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = before
