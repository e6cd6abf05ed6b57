"""selectllm-local: SelectLLM instruction selection with local open-weight models.

Embed a pool of unlabeled instructions, cluster it into balanced clusters, show an LLM diverse
subsets of candidates and let it pick the ones most worth annotating; then prove the choice by
fine-tuning on the selection and evaluating against baselines at the same budget.

Heavy dependencies (torch, vllm, faiss, sentence-transformers, peft) are imported lazily inside the
functions that need them, so importing this package and running ``selectllm --help`` stay instant.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers; at run time ``__getattr__`` imports them on first use
    from selectllm_local.api import baseline, evaluate, finetune, plan, select
    from selectllm_local.errors import UserError

# The Python API (``selectllm_local/api.py``): imported on first use (PEP 562), so importing the
# package stays instant and works on a core install.
_API = ("plan", "select", "baseline", "finetune", "evaluate")
__all__ = ["UserError", "__version__", "baseline", "evaluate", "finetune", "plan", "select"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from selectllm_local import api

        return getattr(api, name)
    if name == "UserError":
        from selectllm_local.errors import UserError

        return UserError
    raise AttributeError(f"module 'selectllm_local' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, "UserError"])
