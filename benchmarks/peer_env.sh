#!/usr/bin/env bash
# Builds .venv-peer: torch-rechub 0.9.0, the peer library of benchmarks/train_bench.py, in a venv of
# its own (it must not change the versions in .venv). torch is pinned to the project's CPU build and
# installed first: an unpinned torch would pull a multi-GB CUDA build, and the constraints file keeps
# torch-rechub's own `torch>=1.10` from moving it.
#
#     bash benchmarks/peer_env.sh            # idempotent: does nothing once .venv-peer is complete
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${PEER_VENV:-.venv-peer}
STAMP="$VENV/.installed"
[ -f "$STAMP" ] && { echo "$VENV ready"; exit 0; }

"$PY" -m venv "$VENV"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==2.13.0" > "$CONSTRAINTS"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet torch==2.13.0
PIP_CONSTRAINT="$CONSTRAINTS" "$VENV/bin/pip" install --quiet torch-rechub==0.9.0 numpy pandas pyarrow
"$VENV/bin/python" - <<'PY'
import torch, torch_rechub, importlib.metadata as md
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"torch {torch.__version__}, torch-rechub {md.version('torch-rechub')}")
PY
touch "$STAMP"
