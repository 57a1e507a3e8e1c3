#!/usr/bin/env bash
# The GPU check in one command: runs the service's own logits-facing code
# (ananke_server.gpu_check: token bitmask application, dead-end EOS forcing, the
# AND of matchers' masks, the product grammar masking a batch) on CUDA tensors
# and compares every result bit for bit with the CPU path and llguidance's
# reference kernel. Takes well under a minute; capped at 8.
#
# On a machine with network (here):   scripts/gpu_check.sh --prepare
#   puts llguidance and numpy wheels (Python 3.10-3.12; GPU_CHECK_PYTHONS changes that)
#   and the default model's tokenizer.json under .gpu_check/ (git-ignored, ~54 MB) to
#   carry to the GPU machine (the device tool: carry [".gpu_check"]).
# On the GPU machine (torch with CUDA, no vLLM, no network):   scripts/gpu_check.sh
#   installs the carried wheels only if llguidance/numpy are missing (--no-index),
#   then runs the check. Extra arguments go to the module (--device cuda:1,
#   --json report.json, --tokenizer path). Exit 0: every comparison bit-identical.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="${ANANKE_GPU_CHECK_DIR:-$ROOT/.gpu_check}"
PYTHON="${PYTHON:-python3}"
LLGUIDANCE_PIN="llguidance==1.7.6"  # the version the service pins (vLLM 0.32's)

if [[ "${1:-}" == "--prepare" ]]; then
  PIP="${PIP:-$ROOT/.venv/bin/pip}"
  [[ -x "$PIP" ]] || PIP="$PYTHON -m pip"
  mkdir -p "$CARRY/wheels"
  # Linux x86-64 wheels, glibc 2.31 or newer (llguidance's); llguidance is abi3 (one
  # wheel serves every Python), numpy has one wheel per Python version.
  platforms=()
  for tag in manylinux2014 manylinux_2_28 manylinux_2_31; do
    platforms+=(--platform "${tag}_x86_64")
  done
  $PIP download --quiet --no-deps --only-binary=:all: "${platforms[@]}" --python-version 3.11 \
    -d "$CARRY/wheels" "$LLGUIDANCE_PIN"
  for version in ${GPU_CHECK_PYTHONS:-3.10 3.11 3.12}; do
    $PIP download --quiet --no-deps --only-binary=:all: "${platforms[@]}" \
      --python-version "$version" -d "$CARRY/wheels" numpy
  done
  tokenizer="${ANANKE_HOME:-$HOME/.cache/ananke}/models/SmolLM2-135M-Instruct/tokenizer.json"
  if [[ -f "$tokenizer" ]]; then cp "$tokenizer" "$CARRY/tokenizer.json"; fi
  du -sh "$CARRY"
  exit 0
fi

if ! "$PYTHON" -c "import llguidance, numpy" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet --no-index --find-links "$CARRY/wheels" llguidance numpy
fi
args=("$@")
if [[ -f "$CARRY/tokenizer.json" && " $* " != *" --tokenizer "* ]]; then
  args+=(--tokenizer "$CARRY/tokenizer.json")
fi
if [[ " $* " != *" --device "* ]]; then
  args+=(--device cuda)
fi
# Only the service's own sources: no install, no protobuf or grpc needed.
export PYTHONPATH="$ROOT/service${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PYTHON" -m ananke_server.gpu_check "${args[@]}"
