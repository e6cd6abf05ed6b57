"""The docs match the code: the default K as computed (issue 8), and every local link resolves (issue 20)."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from selectllm_local.cli import app
from selectllm_local.run.pipeline import default_k
from tests.helpers import REPO


def _flat(text: str) -> str:
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_default_k_is_the_documented_rule() -> None:
    assert default_k(15000, 3000, max_k=32) == 15  # paper's round(15000/1000) = 15 > ceil(5) = 5
    assert default_k(1500, 137, max_k=32) == 11  # ceil(1500/137): not the paper's 2
    assert default_k(1_000_000, 1000, max_k=32) == 32  # capped
    assert default_k(52000, 3000, max_k=32) == 32  # --k 51 is needed for the paper's Alpaca layout


def test_k_help_readme_and_config_doc_describe_the_current_rule() -> None:
    res = CliRunner().invoke(app, ["select", "--help"], env={"COLUMNS": "200"})
    help_text = _flat(res.output)
    assert "ceil(pool/budget), at most --max-k" in help_text and "--k 51" in help_text, help_text
    assert "Cap on the default K (default 32" in help_text  # [..] would be eaten as markup
    readme = _flat((REPO / "README.md").read_text())
    assert "ceil(pool/budget), capped at 32 (`--max-k`)" in readme
    assert "`--k 51` its Alpaca layout" in readme
    doc = _flat((REPO / "selectllm_local" / "config" / "sections.py").read_text())
    assert "ceil(pool/budget)" in doc and "--k 51: its Alpaca layout" in doc
    assert "default round(pool/1000), at least 2, at most max_k" not in doc  # the old rule


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text("utf-8"), re.M)}


def _user_docs() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_local_link_in_the_readme_and_docs_resolves() -> None:
    broken = []
    for doc in _user_docs():
        for target in LINK.findall(doc.read_text("utf-8")):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            if not dest.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_a_usage_page_and_docs_name_no_private_paths() -> None:
    assert len((REPO / "README.md").read_text("utf-8").splitlines()) <= 260
    for doc in _user_docs():
        assert "../shared" not in doc.read_text("utf-8"), doc
