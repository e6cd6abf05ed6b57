#!/usr/bin/env bash
# Regenerate gpu_dry_run_report.json: what `pip install .[gpu]` would install today (needs the
# package index; installs nothing). Run from the repository root; then run tests/install/test_gpu_stack.py.
# The report is trimmed to name, version, requirements and wheel file name per package.
#
# Resolved for CPython 3.12 on Linux x86_64 (the GPU image's and the lent GPU nodes' Python):
# PYTHON names that interpreter (default: pyenv's 3.12.1). pip's --platform/--python-version
# flags cannot be used: they need --only-binary=:all:, and rouge-score ships only an sdist. The
# machine's own pip settings (local wheel folders, constraints) are switched off so that only the
# package index decides, as on a user's machine.
set -euo pipefail
PYTHON=${PYTHON:-"env PYENV_VERSION=3.12.1 python"}
tmp=$(mktemp -d)
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT= \
  $PYTHON -m pip install --dry-run --ignore-installed --quiet --report "$tmp/report.json" ".[gpu]"
python - "$tmp/report.json" tests/install/gpu_dry_run_report.json <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
keep = {
    "version": rep.get("version"),
    "pip_version": rep.get("pip_version"),
    "environment": rep.get("environment", {}),
    "install": [
        {
            "metadata": {k: it["metadata"].get(k) for k in ("name", "version", "requires_dist")},
            "url": it.get("download_info", {}).get("url", "").rsplit("/", 1)[-1],
            "requested_extras": it.get("requested_extras"),
        }
        for it in rep["install"]
    ],
}
json.dump(keep, open(sys.argv[2], "w"), indent=1)
print(f"{len(keep['install'])} packages -> {sys.argv[2]}")
PY
rm -rf "$tmp"
