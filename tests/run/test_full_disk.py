"""A full disk or an unwritable run directory: exit 2 naming the path, never a traceback, and the
completed work resumes to the same selection.

The disk is a real tmpfs, mounted in a private mount namespace (``unshare --mount``; with
``--user --map-root-user`` when not root) so that nothing outlives the test. Its size is
measured, not guessed: a run on a roomy disk first, then a tmpfs that holds that run's planning
files and half of its answers, so ``select`` fills it while it writes the LLM's answers. The
engine is the scripted fake backend (the subject is the run directory's I/O, not the model; the
real engines' resume is tested in test_select_cli.py); the embedder and FAISS are real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HANG_GUARD, missing, n_lines, small_pool

CLI = [sys.executable, "-m", "selectllm_local"]
PAGE = os.sysconf("SC_PAGE_SIZE")
# Written after the answers: not part of what the small disk must hold.
LATE_FILES = ("responses.jsonl", "selected.jsonl", "summary.json", "report.html")
NO_MOUNT = 97  # the namespace script's exit code when the mount failed
# Mount a tmpfs (options $1) on $2, run the command after "--", copy $2/run to $3 (the evidence,
# kept on the roomy disk once the namespace and its mount are gone).
SCRIPT = (
    'opts=$1 disk=$2 keep=$3; shift 4; mount -t tmpfs -o "$opts" tmpfs "$disk" || exit 97; '
    '"$@"; rc=$?; if [ -d "$disk/run" ]; then cp -a "$disk/run" "$keep"; fi; exit $rc'
)


def in_tmpfs(opts: str, disk: Path, keep: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with a tmpfs (mount options ``opts``) on ``disk``, in a private namespace."""
    if shutil.which("unshare") is None:
        missing("unshare (util-linux) is not installed: cannot mount a small disk")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    disk.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["unshare", *user, "--mount", "sh", "-c", SCRIPT, "sh", opts, str(disk), str(keep), "--",
         *cmd],
        capture_output=True, text=True, timeout=HANG_GUARD,
    )  # fmt: skip
    if r.returncode == NO_MOUNT or "unshare:" in r.stderr:
        missing(f"cannot mount a tmpfs in a private namespace: {r.stderr.strip()[-500:]}")
    return r


def pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE) * PAGE


def selected(run_dir: Path) -> list[int]:
    lines = (run_dir / "selected.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line)["selectllm"]["index"] for line in lines]


def select_args(pool: Path, run_dir: Path) -> list[str]:
    return [*CLI, "select", str(pool), "--model", "fake", "--backend", "fake", "--budget", "30",
            "--k", "6", "--run-dir", str(run_dir), "--json"]  # fmt: skip


def assert_exit_2_naming(r: subprocess.CompletedProcess[str], path: Path, *words: str) -> str:
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-4000:]
    assert r.returncode == 2, out[-4000:]
    message = " ".join(r.stderr.split())
    assert str(path) in message, message[-2000:]
    for word in words:
        assert word in message, (word, message[-2000:])
    return message


@pytest.mark.parametrize("rows", [300, 420])  # two pools: the outcome is not tuned to one
def test_select_on_a_full_disk_exits_2_then_resumes_elsewhere(tmp_path: Path, rows: int) -> None:
    pool = small_pool(tmp_path, rows)
    roomy = tmp_path / "room" / "run"  # as long as disk/run: the same file sizes
    r = subprocess.run(select_args(pool, roomy), capture_output=True, text=True, timeout=HANG_GUARD)
    assert r.returncode == 0, r.stderr[-3000:]
    answers = n_lines(roomy / "responses.jsonl")
    early = sum(pages(f) for f in roomy.iterdir() if f.is_file() and f.name not in LATE_FILES)
    size = early + pages(roomy / "responses.jsonl") // 2

    disk, kept = tmp_path / "disk", tmp_path / "kept"
    r = in_tmpfs(f"size={size}", disk, kept, *select_args(pool, disk / "run"))
    message = assert_exit_2_naming(r, disk / "run", "No space left", "resumes")
    assert "[cpu]" not in message  # not mistaken for a missing package
    done = n_lines(kept / "responses.jsonl")
    assert 0 < done < answers, (done, answers)  # it filled up while the answers were written
    assert not (kept / "selected.jsonl").exists()

    # moved to a roomy disk, the same command resumes and ends with the same selection
    r = subprocess.run(select_args(pool, kept), capture_output=True, text=True, timeout=HANG_GUARD)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = json.loads(r.stdout)["counts"]
    assert counts["resumed"] == done and counts["sent_this_run"] == answers - done
    assert selected(kept) == selected(roomy)


def test_read_only_run_directory_exits_2_naming_it(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 40)
    disk = tmp_path / "ro"
    for command in (
        select_args(pool, disk / "run"),
        [*CLI, "plan", str(pool), "--budget", "5", "--run-dir", str(disk / "run")],
        [*CLI, "split", str(pool), "--test", "5", "--out", str(disk / "run")],
    ):
        r = in_tmpfs("ro", disk, tmp_path / "kept", *command)
        assert_exit_2_naming(r, disk / "run", "cannot be written")


def test_a_file_where_the_run_directory_should_be_exits_2(tmp_path: Path) -> None:
    pool = small_pool(tmp_path, 40)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file, not a folder\n")
    for command in (
        select_args(pool, blocker / "run"),
        [*CLI, "plan", str(pool), "--budget", "5", "--run-dir", str(blocker / "run")],
        [*CLI, "random-model", "tiny-qwen2", str(blocker / "run")],
    ):
        r = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD)
        assert_exit_2_naming(r, blocker / "run", "cannot be written")


def test_other_writers_on_a_full_disk_exit_2_naming_it(tmp_path: Path) -> None:
    """The rule is the CLI's, not select's: the other writers fill a one-page disk the same way
    (their first file, the normalized pool, is larger than the disk)."""
    pool = small_pool(tmp_path, 300)
    disk = tmp_path / "small"
    for command in (
        [*CLI, "split", str(pool), "--test", "5", "--out", str(disk / "run")],
        [*CLI, "plan", str(pool), "--budget", "5", "--run-dir", str(disk / "run")],
        [*CLI, "baseline", "random", str(pool), "--budget", "5", "--run-dir", str(disk / "run")],
    ):
        r = in_tmpfs(f"size={PAGE}", disk, tmp_path / "kept", *command)
        assert_exit_2_naming(r, disk / "run", "No space left", "resumes")
