"""selectllm-local: SelectLLM instruction selection with local open-weight models.

Embed a pool of unlabeled instructions, cluster it into balanced clusters, show an LLM diverse
subsets of candidates and let it pick the ones most worth annotating; then prove the choice by
fine-tuning on the selection and evaluating against baselines at the same budget.

Heavy dependencies (torch, vllm, faiss, sentence-transformers, peft) are imported lazily inside the
functions that need them, so importing this package and running ``selectllm --help`` stay instant.
"""

__version__ = "0.1.0"
