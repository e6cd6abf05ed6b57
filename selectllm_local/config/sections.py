"""The selection sections: ``[plan]`` (stages 1-5), ``[selector]`` (how picks are asked for) and
``[engine]`` (which LLM runs, and how).

Each is exactly what its stage takes: ``pipeline.plan_run`` a :class:`PlanConfig`,
``selection.select`` a :class:`SelectorConfig`, ``backends.load_backend`` an :class:`EngineConfig`,
so no settings are copied from one object into another on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectllm_local.config.base import REQUIRED, Section, as_path, setting
from selectllm_local.config.vocab import BackendName, Dtype, Layout, Mode

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_MAX_K = 32


@dataclass
class PlanConfig(Section):
    """Stages 1-5: load the pool, embed, cluster, balance, lay out subsets, allocate picks."""

    SECTION = "plan"

    pool: Path = setting(argument=True)
    """Pool file: JSONL, JSON list, CSV, Parquet, or a datasets folder saved with save_to_disk."""
    budget: int = setting(REQUIRED, "--budget", "-n")
    """How many instructions to select in the end (1 .. pool size)."""
    run_dir: Path | None = setting(None, "--run-dir", "--out")
    """Run directory [default: runs/<pool file stem>]. Re-running on it resumes and reuses caches."""
    layout: Layout = "diverse"
    """Subset layout: diverse (one candidate per cluster, the paper), cluster (within one cluster), random."""
    n_clusters: int | None = setting(None, "--k")
    """K = candidates per diverse prompt (= clusters). Default (``pipeline.default_k``): the larger
    of round(pool/1000) (the paper's rule, at least 2) and ceil(pool/budget), at most --max-k; the
    latter keeps the subsets at most the budget (one round). --k 14: the paper's Dolly layout;
    --k 51: its Alpaca layout."""
    max_k: int = DEFAULT_MAX_K
    """Cap on the default K (default 32; an explicit --k is not capped), so a prompt stays short
    (the paper's rule gives 1,000 for a 1M pool)."""
    seed: int = 0
    """Seed for k-means, layouts, pick allocation and sampled retries."""
    kmeans_iters: int = 20
    """FAISS k-means iterations."""
    embedder: str = DEFAULT_EMBEDDER
    """Sentence embedding model: the packaged all-MiniLM-L6-v2, a local path, or a hub id."""
    embed_batch_size: int = 64
    """Sentences per embedding batch (64 was fastest on a 2-core CPU)."""
    device: str | None = None
    """Device (cpu, cuda) for embedding and the transformers backend [default: cuda when available]."""
    instruction_field: str | None = None
    """Source field holding the instruction [default: auto-detected schema]."""
    input_field: str | None = None
    """Source field holding the input/context (optional)."""
    output_field: str | None = None
    """Source field holding the response (optional; never shown to the selector)."""
    category_field: str | None = None
    """Source field holding a category label (optional; used in reports)."""
    skip_bad_rows: bool = False
    """Skip malformed rows (reported with their line numbers) instead of stopping."""
    tokenizer: str | None = None
    """Tokenizer (local path) for the prompt-token estimate [default: a chars/4 heuristic]."""
    offline: bool = setting(False, "--offline/--online")
    """Refuse any hub id (embedder, tokenizer, model): only local paths and packaged models."""
    ray: str | None = None
    """Ray cluster: local (start one on this machine), auto (the cluster this node joined with
    `ray start`), or the head's address (host:6379, ray://host:10001). select serves the
    prompts on Ray actors; with --embed-on-ray the pool is embedded with Ray Data [default: no Ray]."""
    embed_on_ray: bool = False
    """Embed the pool with Ray Data on the --ray cluster (pays off from ~100k rows; same cache)."""

    def __post_init__(self) -> None:
        self.pool = Path(self.pool)
        self.run_dir = as_path(self.run_dir)
        self._at_least("budget", 1)
        self._check_vocabularies()
        if self.n_clusters is not None:
            self._at_least("n_clusters", 2)
        self._at_least("max_k", 2)
        self._at_least("kmeans_iters", 1)
        self._at_least("embed_batch_size", 1)
        if self.embed_on_ray and not self.ray:
            raise self._bad(
                "embed_on_ray", "needs a cluster: give --ray (local, auto or an address)."
            )

    @property
    def resolved_run_dir(self) -> Path:
        return self.run_dir if self.run_dir is not None else Path("runs") / self.pool.stem


@dataclass
class SelectorConfig(Section):
    """Stage 6: how the LLM is asked for its picks (all of it goes into the run's config hash)."""

    SECTION = "selector"

    mode: Mode = "generate"
    """generate (the model writes ids) or logprobs (read label log-probabilities: a full ranking)."""
    reasons: bool = False
    """Also ask for a one-sentence reason per pick (prompts/select_reasons.j2; generate mode)."""
    prompt: Path | None = None
    """Jinja2 prompt template replacing prompts/select_ids.j2 (variables: prompts/README.md)."""
    criteria: Path | None = None
    """Criteria file replacing prompts/criteria/default.md (what 'worth annotating' means)."""
    max_candidate_tokens: int = 256
    """Candidates longer than this many tokens are cut (and marked) in the prompt."""
    min_candidate_tokens: int = 32
    """Floor when candidates are cut further to fit the model's context."""
    temperature: float = 0.0
    """Sampling temperature of the first attempt (0 = greedy, reproducible)."""
    retries: int = 1
    """Extra attempts for a subset whose answer is invalid, before the recorded fallback."""
    retry_temperature: float = 0.7
    """Temperature of retries (seeded)."""
    constrained: bool = True
    """Constrain decoding to the answer grammar (vLLM structured outputs; light gate in transformers)."""
    max_tokens: int | None = None
    """Answer length limit [default: enough for k ids (or k reasons)]."""
    permutations: int = 1
    """Logprob mode: score this many cyclic shifts of each subset and average (position bias);
    0 = every shift (each candidate once at each position: the full correction, K prompts each)."""
    seed: int = 0
    """Seed of sampled retries and of the fallback picks (the --seed of the run)."""

    def __post_init__(self) -> None:
        self.prompt = as_path(self.prompt)
        self.criteria = as_path(self.criteria)
        self._check_vocabularies()
        if self.mode == "logprobs" and self.reasons:
            raise self._bad(
                "reasons", "needs generated text; it cannot be used with --mode logprobs."
            )
        self._at_least("retries", 0)
        self._at_least("min_candidate_tokens", 1)
        self._at_least("max_candidate_tokens", self.min_candidate_tokens)
        self._at_least("permutations", 0)
        self._at_least("temperature", 0)
        self._at_least("retry_temperature", 0)
        if self.max_tokens is not None:
            self._at_least("max_tokens", 1)


@dataclass
class EngineConfig(Section):
    """The LLM engine: which backend runs which model, and its knobs (what ``load_backend`` takes)."""

    SECTION = "engine"

    backend: BackendName = "auto"
    """LLM backend: auto (vLLM when installed, else transformers), vllm, transformers."""
    model: str | None = setting(None, "--model", "-m")
    """Model: a local folder (never touches the network), a .gguf file, a known name (selectllm
    models), or a hub id (not with --offline)."""
    dtype: Dtype = "auto"
    """Model dtype: auto, bfloat16, float16, float32."""
    max_model_len: int | None = None
    """Context length to run the model with [default: the model's own]."""
    seed: int = 0
    """Engine seed (the --seed of the run)."""
    tensor_parallel_size: int = 1
    """vLLM: GPUs per model."""
    batch_invariant: bool = False
    """vLLM on a GPU: batch-invariant kernels (VLLM_BATCH_INVARIANT=1), so a prompt's logits do
    not depend on its batch; NVIDIA compute capability >= 8.0, AMD Instinct, Intel XPU. Elsewhere
    (CPU, transformers) it exits 2: nothing there could honour it."""
    gpu_memory_utilization: float = 0.85
    """vLLM: share of GPU memory the engine may take."""
    enable_prefix_caching: bool = setting(True, "--prefix-caching/--no-prefix-caching")
    """vLLM: reuse the computed shared prompt prefix (system message, criteria)."""
    max_num_seqs: int | None = None
    """vLLM: most sequences in flight at once [default: vLLM's]."""
    enforce_eager: bool | None = None
    """vLLM: run without torch.compile and CUDA graphs (starts faster, steps slower) [default: on
    for CPU, where compiling costs more than it saves at the quick start's size (benchmarks/
    README.md); off on CUDA]."""
    batch_size: int | None = None
    """transformers: most prompts per batch (batches group prompts of similar length) [default:
    16 on CPU, sized from free GPU memory and prompt length on CUDA]."""
    device: str | None = None
    """Device (cpu, cuda) for the transformers backend [default: cuda when available]."""
    lora_path: str | None = None
    """LoRA adapter folder applied to the model (evaluation of fine-tuned models)."""
    ray: str | None = None
    """Ray cluster serving the prompts: local, auto or the head's address (see the plan's --ray)."""
    ray_actors: int | None = None
    """Ray: actors serving prompts, each with its own engine [default: one per GPU of the
    cluster (--ray-gpus-per-actor each), else one per --ray-cpus-per-actor CPUs]."""
    ray_gpus_per_actor: float | None = None
    """Ray: GPUs per actor [default: --tensor-parallel-size on a GPU cluster, else 0]."""
    ray_cpus_per_actor: float = 1.0
    """Ray: CPUs per actor (on a CPU cluster, also the actor's torch threads)."""
    ray_max_restarts: int = 2
    """Ray: restarts of a dead actor (its shards are re-queued); also how often one shard may fail."""
    ray_shard_size: int | None = None
    """Ray: prompts per shard [default: about a quarter of an actor's share of a call, at most 256]."""
    extra: dict[str, Any] = setting(default_factory=dict, cli=False)
    """Backend-specific keyword arguments passed through unchanged (code and config files only)."""

    def __post_init__(self) -> None:
        self._check_vocabularies()
        if self.batch_size is not None:
            self._at_least("batch_size", 1)
        self._at_least("tensor_parallel_size", 1)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise self._bad(
                "gpu_memory_utilization", f"must be in (0, 1] (got {self.gpu_memory_utilization})."
            )
        if self.max_model_len is not None:
            self._at_least("max_model_len", 16)
        if self.max_num_seqs is not None:
            self._at_least("max_num_seqs", 1)
        if self.ray_actors is not None:
            self._at_least("ray_actors", 1)
        if self.ray_gpus_per_actor is not None:
            self._at_least("ray_gpus_per_actor", 0)
        if self.ray_cpus_per_actor <= 0:
            raise self._bad("ray_cpus_per_actor", f"must be > 0 (got {self.ray_cpus_per_actor}).")
        self._at_least("ray_max_restarts", 0)
        if self.ray_shard_size is not None:
            self._at_least("ray_shard_size", 1)
