#!/usr/bin/env bash
# The reproduction check (check.md): copy a finished run directory, delete part of its work, re-run.
#   bash experiments/results/smollm2_dolly_issue9/repro/repro.sh RUN_DIR COPY_DIR
# then: python experiments/results/smollm2_dolly_issue9/repro/compare.py RUN_DIR COPY_DIR
set -eu
R=$1; C=$2; HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$C"; mkdir -p "$C/cells"
cp -a "$R/data" "$R/plans" "$C/"
cp -a "$R/cells/select-logprobs" "$C/cells/"
rm -rf "$C/cells/select-logprobs/b200-s1"
rm "$C/cells/select-logprobs/b200-s0/selection.json" "$C/cells/select-logprobs/b200-s0/done.json"
P=$C/plans/b200-s0-select-logprobs
head -n 180 "$P/responses.jsonl" > "$P/responses.tmp" && mv "$P/responses.tmp" "$P/responses.jsonl"
rm "$P/selected.jsonl" "$P/summary.json"
rm -rf "$C/plans/b200-s0/baselines"
t0=$(date +%s)
VLLM_CPU_NUM_OF_RESERVED_CPU=0 selectllm experiment "$HERE/repro.toml" --run-dir "$C"
echo "wall $(( $(date +%s) - t0 )) s"
