"""Backends on real engines: the tiny random-weight model under vLLM (CPU build) and transformers."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selectllm_local.backends import load_backend, resolve_backend_name, resolve_model
from selectllm_local.backends.batchsize import bucket_by_length
from selectllm_local.config import EngineConfig
from selectllm_local.errors import UserError
from selectllm_local.selection.grammar import id_constraint
from selectllm_local.selection.parse import parse_ids
from tests.helpers import EXAMPLE_POOL, HAS_VLLM, requires_vllm


def _prompts(backend, n: int = 6) -> list[str]:
    system = "You choose training data. " + "Judge clarity, depth, variety and value. " * 20
    out = []
    for i in range(n):
        user = f"Candidates: {' '.join(f'<{j}> task number {i * 7 + j}' for j in range(1, 6 + i))}"
        out.append(
            backend.render_chat(
                [{"role": "system", "content": system}, {"role": "user", "content": user}]
            )
        )
    return out


@pytest.fixture(scope="module", params=["vllm", "transformers"])
def backend(request: pytest.FixtureRequest):
    # the vllm_backend fixture itself skips (with the install hint) where vLLM is not installed
    return request.getfixturevalue("vllm_backend" if request.param == "vllm" else "hf_backend")


def test_missing_or_bad_model_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_backend("transformers", str(tmp_path / "nope"), EngineConfig())
    with pytest.raises(UserError, match="no config.json"):
        load_backend("transformers", str(tmp_path), EngineConfig())
    with pytest.raises(UserError, match="--backend 'tpu' is not known"):
        resolve_backend_name("tpu")


def test_hub_ids_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="offline mode is on"):
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct", offline=True)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"


def test_local_model_sets_offline_switches(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    resolve_model(str(tiny_model_dir))
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_auto_prefers_vllm_when_installed() -> None:
    assert resolve_backend_name("auto") == ("vllm" if HAS_VLLM else "transformers")


def test_one_auto_policy_for_adapters() -> None:
    """An adapter goes to vLLM only where there is a GPU; the same rule for every command."""
    from selectllm_local.hardware import cuda_available

    gpu_vllm = HAS_VLLM and cuda_available()
    assert resolve_backend_name("auto", lora=True) == ("vllm" if gpu_vllm else "transformers")
    assert resolve_backend_name("transformers", lora=True) == "transformers"


def test_fake_backend_is_selectable_by_name() -> None:
    from selectllm_local.backends import BACKEND_NAMES
    from selectllm_local.backends.fake import FakeBackend

    assert "fake" in BACKEND_NAMES
    fake = load_backend("fake", "no-such-model", EngineConfig(extra={"fake": {"block_after": 5}}))
    assert isinstance(fake, FakeBackend) and fake.block_after == 5
    gens = fake.generate(["Choose exactly 2 of these"], max_tokens=8)
    assert gens[0].text == "[1, 2]"


def test_known_startup_failure_is_explained() -> None:
    from selectllm_local.backends.startup import explain_startup_errors

    gloo = (
        "[enforce fail at gloo/transport/tcp/device.cc:212] ifa != nullptr. "
        "Unable to find interface for: [127.0.0.1]"
    )
    with pytest.raises(UserError, match="loopback") as info:
        with explain_startup_errors("vllm"):
            try:
                raise RuntimeError(gloo)
            except RuntimeError as exc:
                raise ValueError("engine core failed") from exc  # the cause is found in the chain
    assert "ip link set lo up" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(RuntimeError, match="something else"):  # unknown failures keep their type
        with explain_startup_errors("vllm"):
            raise RuntimeError("something else")


def _net_namespace_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@requires_vllm
@pytest.mark.skipif(
    not _net_namespace_available(),
    reason="needs `unshare -rn` (user and network namespaces) to start vLLM with loopback down",
)
def test_vllm_without_loopback_is_a_one_paragraph_error(tmp_path: Path, tiny_model_dir) -> None:
    """In a network namespace whose loopback is down vLLM's process group cannot start."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(EXAMPLE_POOL.read_text("utf-8").splitlines()[:30]) + "\n", "utf-8")
    cmd = ["unshare", "-rn", sys.executable, "-m", "selectllm_local", "select", str(pool),
           "--model", str(tiny_model_dir), "--budget", "5", "--k", "6", "--backend", "vllm",
           "--run-dir", str(tmp_path / "run")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "Unable to find interface for" in r.stderr and "ip link set lo up" in r.stderr


def test_chat_template_and_token_counts(backend) -> None:
    p = backend.render_chat([{"role": "user", "content": "hello"}])
    assert p.endswith("<|im_start|>assistant\n")
    assert backend.count_tokens(p) >= 4
    assert backend.max_context == 4096


def test_constrained_generation_is_always_valid(backend) -> None:
    prompts = _prompts(backend)
    ns = [5 + i for i in range(len(prompts))]
    constraints = [id_constraint(n, 2) for n in ns]
    seen: list[int] = []
    gens = backend.generate(
        prompts, max_tokens=12, constraints=constraints, on_output=lambda i, g: seen.append(i)
    )
    assert sorted(seen) == list(range(len(prompts)))
    for g, n, c, p in zip(gens, ns, constraints, prompts, strict=True):
        assert re.fullmatch(c.regex, g.text), g.text
        assert parse_ids(g.text, n, 2).ok
        assert g.prompt_tokens == backend.count_tokens(p)
        assert 1 <= g.output_tokens <= 12


def test_regex_gate_remembers_each_answer_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    from selectllm_local.backends import hf_decoding

    strings = ["[", "]", "1", "2", ",", " ", "a", "12"]
    gate = hf_decoding.RegexGate(id_constraint(3, 2).regex, list(range(8)), strings, eos=99)
    decoded: list[list[int]] = []

    def decode(ids: list[int]) -> str:
        decoded.append(list(ids))
        return "".join(strings[i] for i in ids)

    walks = [[], [0], [0, 2], [0, 2, 4], [0, 2, 4, 5], [0, 7], [0], [0, 2], []]
    for ids in walks:
        want = gate.allowed("".join(strings[i] for i in ids))
        assert gate.allowed_after(ids, decode) == want
    assert gate.allowed_after([0], decode) == [2, 3]  # "[" then an id of 1..3: not "a", "]", "12"
    assert decoded == [list(w) for w in dict.fromkeys(map(tuple, walks))]  # once per prefix
    monkeypatch.setattr(hf_decoding, "MEMO_MAX", 2)  # a full memo starts again, still right
    assert gate.allowed_after([0, 2, 1], decode) == gate.allowed("[1]") == [99]


def test_unconstrained_generation_counts_tokens(backend) -> None:
    gens = backend.generate(_prompts(backend, 2), max_tokens=5, temperature=0.8, seed=3)
    assert all(g.output_tokens <= 5 for g in gens)


def test_label_scores_agree_between_engines(vllm_backend, hf_backend) -> None:
    labels = [list("ABCDE"), list("ABC")]
    prompts = _prompts(hf_backend, 2)
    a = vllm_backend.score_labels(prompts, labels)
    b = hf_backend.score_labels(prompts, labels)
    for sa, sb, labs in zip(a, b, labels, strict=True):
        assert len(sa) == len(sb) == len(labs)
        assert all(x < 0 for x in sa)
        assert max(abs(x - y) for x, y in zip(sa, sb, strict=True)) < 0.05


def test_multi_token_labels_are_refused(backend) -> None:
    with pytest.raises(ValueError, match="not 1"):
        backend.score_labels(_prompts(backend, 1), [["A", "12"]])


def test_vllm_reuses_the_shared_prefix(vllm_backend) -> None:
    before = vllm_backend.stats["cached_prompt_tokens"]
    vllm_backend.generate(_prompts(vllm_backend, 4), max_tokens=2)
    assert vllm_backend.stats["cached_prompt_tokens"] - before >= 3 * 128


@requires_vllm
def test_closing_one_vllm_engine_leaves_another_working(vllm_backend, tiny_model_dir) -> None:
    # vLLM's shutdown of an in-process engine tears down the process-wide parallel groups; the
    # session's shared engine must still answer after a second engine is closed or collected.
    import gc
    import weakref

    import vllm.v1.engine.core as core_module
    from vllm.distributed import parallel_state

    from selectllm_local.backends import vllm_backend as module

    rows = [[1, 2, 3, 4, 5]]
    before = vllm_backend.token_logprobs(rows, [1])[0]
    live = set(getattr(module, "_in_process", ()))
    for how in ("close", "collect"):
        other = load_backend("vllm", str(tiny_model_dir), EngineConfig(max_model_len=1024))
        assert other.token_logprobs(rows, [1])[0] == pytest.approx(before, rel=1e-5)
        if how == "close":
            other.close()
        gone = weakref.ref(other)
        del other
        gc.collect()
        assert gone() is None, how  # the collection leg really collected it
        assert vllm_backend.token_logprobs(rows, [1])[0] == pytest.approx(before, rel=1e-5), how
        assert set(getattr(module, "_in_process", ())) == live, how
        # vLLM's own teardown is back in place for the last engine
        assert core_module.cleanup_dist_env_and_memory is parallel_state.cleanup_dist_env_and_memory


def test_transformers_padding_stays_small(hf_backend) -> None:
    system = "Rules. " * 50
    prompts = [
        hf_backend.render_chat(
            [
                {"role": "system", "content": system},
                {"role": "user", "content": "word " * (20 + (i * 37) % 90)},
            ]
        )
        for i in range(40)
    ]
    before = {k: hf_backend.stats[k] for k in ("padding_tokens", "prompt_tokens")}
    hf_backend.score_labels(prompts, [["A", "B"]] * len(prompts))
    pad = hf_backend.stats["padding_tokens"] - before["padding_tokens"]
    real = hf_backend.stats["prompt_tokens"] - before["prompt_tokens"]
    assert real > 0 and pad / real < 0.05


@given(lengths=st.lists(st.integers(1, 2000), max_size=80), max_batch=st.integers(1, 32))
def test_buckets_cover_every_prompt_once_with_little_padding(
    lengths: list[int], max_batch: int
) -> None:
    batches = bucket_by_length(lengths, max_batch, 0.04)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        ls = [lengths[i] for i in b]
        assert len(b) == 1 or max(ls) * len(ls) - sum(ls) <= 0.04 * sum(ls)


@given(lengths=st.lists(st.integers(1, 1024), max_size=80), max_batch=st.integers(1, 32))
def test_long_answers_keep_batches_full(lengths: list[int], max_batch: int) -> None:
    # 150 new tokens: a split repeats 150 decode steps, dearer than any padding of prompts up
    # to 1,024 tokens (found on an H200: evaluation ran 17 batches for 32 prompts, 4.6x slower).
    batches = bucket_by_length(lengths, max_batch, 0.04, new_tokens=150)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert len(batches) == -(-len(lengths) // max_batch)
    assert all(len(b) == max_batch for b in batches[:-1])


def test_one_new_token_keeps_the_padding_limit() -> None:
    lengths = [100] * 8 + [1000] * 8
    assert len(bucket_by_length(lengths, 16, 0.04, new_tokens=1)) == 2
    assert len(bucket_by_length(lengths, 16, 0.04, new_tokens=150)) == 1


def test_every_backend_name_has_a_loader() -> None:
    from selectllm_local.backends.registry import LOADERS
    from selectllm_local.config.base import BACKEND_NAMES

    assert BACKEND_NAMES[0] == "auto"
    assert list(LOADERS) == list(BACKEND_NAMES[1:])


@pytest.mark.parametrize("seed", [0, 1])
def test_transformers_padding_puts_each_row_at_the_right(hf_backend, seed: int) -> None:
    rng = random.Random(seed)
    vocab = len(hf_backend.tokenizer)
    rows = [[rng.randrange(vocab) for _ in range(rng.randrange(0, 40))] for _ in range(9)]
    rows.append([vocab - 1] * 41)  # the widest row, with the largest id
    ids, mask = hf_backend._pad(rows)
    pad = hf_backend.tokenizer.pad_token_id
    assert ids.shape == mask.shape == (len(rows), 41) and str(ids.dtype) == "torch.int64"
    for r, row in enumerate(rows):
        lead = 41 - len(row)
        assert ids[r].tolist() == [pad] * lead + row
        assert mask[r].tolist() == [0] * lead + [1] * len(row)


def test_token_strings_equal_decoding_each_id(hf_backend, smollm2_dir) -> None:
    """The constraint gate's token texts: the batched Rust decode where it applies equals
    ``decode([id])`` id by id (tiny tokenizer, real SmolLM2), and a tokenizer class with a
    ``decode`` of its own takes the per-id path."""
    from transformers import AutoTokenizer

    from selectllm_local.backends.hf_backend import token_strings

    for tok in (hf_backend.tokenizer, AutoTokenizer.from_pretrained(smollm2_dir)):
        assert tok.clean_up_tokenization_spaces is False
        assert token_strings(tok) == [tok.decode([i]) for i in range(len(tok))]
    calls: list[int] = []

    class Counting(type(tok)):  # type: ignore[misc]
        def decode(self, ids, *a, **kw):  # type: ignore[no-untyped-def]
            calls.append(1)
            return super().decode(ids, *a, **kw)

    tok.__class__ = Counting  # a class of its own decode: the per-id path
    try:
        assert token_strings(tok) == [tok.decode([i]) for i in range(len(tok))]
        assert len(calls) == 2 * len(tok)
    finally:
        tok.__class__ = Counting.__mro__[1]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_label_logprobs_on_cpu_equal_torchs_log_softmax(dtype: str) -> None:
    """The CPU scoring of labels (numpy, one row at a time) gives torch's log-softmax of each
    row at its label ids, for logits far apart and close together, in float32 and bfloat16."""
    import torch

    from selectllm_local.backends.hf_backend import _label_logprobs

    gen = torch.Generator().manual_seed(5)
    last = torch.cat(
        [torch.randn(3, 2000, generator=gen) * 12, torch.randn(2, 2000, generator=gen) * 0.01]
    ).to(getattr(torch, dtype))
    ids = [[5, 17, 1999], [0, 1], [42], [7, 8, 9, 10], [1500, 3]]
    want = torch.log_softmax(last.float(), dim=-1)
    got = _label_logprobs(last, ids)
    for r, row in enumerate(ids):
        assert got[r] == pytest.approx(want[r, row].tolist(), abs=1e-5), r


def test_label_ids_are_asked_of_the_tokenizer_once_per_label_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selectllm_local.backends.base import ChatTokenizer
    from selectllm_local.models import random_weights as tinymodel

    tok = tinymodel.build_tokenizer(tmp_path / "tok")
    face = ChatTokenizer(tok)
    real = tok.encode
    calls: list[str] = []
    monkeypatch.setattr(tok, "encode", lambda text, **kw: calls.append(text) or real(text, **kw))
    first = face.label_token_ids(list("ABC"))
    assert first == [real(x, add_special_tokens=False)[0] for x in "ABC"]
    first.append(99)  # the caller's list is its own
    assert face.label_token_ids(list("ABC")) == first[:3]
    assert face.label_token_ids(list("AB")) == first[:2]
    assert calls == list("ABC") + list("AB")
    with pytest.raises(ValueError, match="not 1"):  # digits are split: "12" is two tokens
        face.label_token_ids(["A", "12"])
