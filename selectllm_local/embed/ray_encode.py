"""Embedding a large pool with Ray Data (``--embed-on-ray``): the same numbers, many workers.

``embedding.load_or_embed`` calls this for the rows its cache lacks, and writes the same cache
files (``embeddings.npy`` + ``embeddings.key.json``) either way. The rows are put in the order
``embedding.embed_texts`` uses (longest first) and cut into the same chunks of ``8 x batch size``,
so each worker's ``SentenceTransformer.encode`` sees the batches one process would: results agree
to float tolerance (different thread counts may change the last bits). Each worker (one per GPU
of the cluster, else one per CPU) loads the model once; the model must be at the same path on
every node (the packaged all-MiniLM-L6-v2 is, wherever the package is installed).

Clustering stays FAISS on the driver: 1M x 384 float32 is 1.5 GB and plans in ~30 s on two cores.
Beyond a few million rows, embed a random sample with this, train the k-means centroids on it and
assign the rest in chunks (``faiss.Kmeans.index.search``), or use FAISS on a GPU node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from selectllm_local.embed import encoder as embedding

log = logging.getLogger(__name__)


class _Embedder:
    """The map_batches worker: one sentence-transformers model, loaded once per worker."""

    def __init__(self, model: str, batch_size: int, device: str | None) -> None:
        from sentence_transformers import SentenceTransformer

        from selectllm_local import hardware
        from selectllm_local.progress import quiet_weight_bars

        with quiet_weight_bars(model):
            self.model = SentenceTransformer(model, device=hardware.default_device(device))
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        emb = self.model.encode(
            [str(t) for t in batch["text"]],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return {"row": batch["row"], "embedding": np.asarray(emb, dtype=np.float32)}


def embed_texts_ray(
    texts: Sequence[str],
    *,
    address: str,
    model: str = embedding.DEFAULT_EMBEDDER,
    batch_size: int = embedding.DEFAULT_BATCH_SIZE,
    device: str | None = None,
    progress: bool = True,
    offline: bool = False,
    workers: int | None = None,
) -> np.ndarray:
    """``embedding.embed_texts`` on a Ray cluster: float32 (len(texts), dim), rows L2-normalised."""
    from selectllm_local.backends.ray_cluster import connect, forwarded_env

    ray = connect(address)
    from ray import data as ray_data

    resolved = embedding.resolve_model(model, offline=offline)
    if not texts:
        return embedding.embed_texts([], model=model, device=device, offline=offline)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    step = batch_size * 8  # embed_texts' chunk: the same encode calls, so the same numbers
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    n = workers or (gpus if gpus > 0 else max(1, int(res.get("CPU", 1))))
    n = max(1, min(n, -(-len(texts) // step)))
    ray_data.DataContext.get_current().enable_progress_bars = progress
    rows = [{"row": int(i), "text": texts[i]} for i in order]
    ds = ray_data.from_items(rows, override_num_blocks=-(-len(rows) // step))
    out_ds = ds.map_batches(
        _Embedder,
        fn_constructor_kwargs={"model": resolved, "batch_size": batch_size, "device": device},
        batch_size=step,
        batch_format="numpy",
        concurrency=n,
        num_gpus=1 if gpus > 0 else 0,
        num_cpus=0 if gpus > 0 else 1,
        runtime_env={"env_vars": forwarded_env()},
    )
    out: np.ndarray | None = None
    for batch in out_ds.iter_batches(batch_size=None, batch_format="numpy"):
        emb = np.asarray(batch["embedding"], dtype=np.float32)
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        out[np.asarray(batch["row"], dtype=np.int64)] = emb
    assert out is not None
    log.info("embedded %d rows with Ray Data on %d workers", len(texts), n)
    return out
