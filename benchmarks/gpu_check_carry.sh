#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check.py needs on a lent GPU node, here (needs the package index):
#   .whl/                    wheels the node lacks: faiss-cpu, trl and datasets with the three
#                            small packages datasets needs that the node lacks, and bitsandbytes cut
#                            to its CUDA 13.0 library
#   runs/gpu-check-stages/   the select stages planned here (the node has no embedder)
# Both are git-ignored; the `run` call carries them (benchmarks/README.md, "GPU check"). Run from
# the repository root. Prints the total that travels, which must stay under 64 MiB.
set -euo pipefail
dl() {  # one wheel for the node's CPython 3.12 on x86_64 Linux, without dependencies
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT= python -m pip download -q --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$1" "$2"
}
rm -rf .whl && mkdir -p .whl
for req in faiss-cpu==1.15.1 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
           xxhash==4.1.0; do
  dl .whl "$req"
done
# bitsandbytes: 43 MB as a wheel, 3.6 MB with only the CUDA 13.0 and CPU libraries kept.
tmp=$(mktemp -d)
dl "$tmp" bitsandbytes==0.50.2
python -m zipfile -e "$tmp"/bitsandbytes-*.whl "$tmp/x"
find "$tmp/x/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*_cuda130.so' ! -name '*_cpu.so' -delete
(cd "$tmp/x" && python -m zipfile -c "$OLDPWD/.whl/bitsandbytes-0.50.2-cuda130.zip" bitsandbytes bitsandbytes-*.dist-info)
rm -rf "$tmp"
python benchmarks/gpu_check.py --plan-only
du -cb .whl runs/gpu-check-stages $(git ls-files) | tail -1 | awk '{printf "travels: %.1f MiB (limit 64)\n", $1 / 1048576}'
