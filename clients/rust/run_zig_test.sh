#!/usr/bin/env bash
# Builds the C ABI (cargo feature `ffi`), compiles tests/zig/maze_ffi.zig with
# the Zig compiler from PyPI (`ziglang`, requirements/dev.txt) against
# include/ananke.h and the library, and runs it against the live server at
# ANANKE_ADDR.
#   ANANKE_ADDR=http://127.0.0.1:50051 clients/rust/run_zig_test.sh
# ZIG overrides the compiler command (default: python -m ziglang, with the
# checkout's .venv python when there is one). Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ -z "${ANANKE_ADDR:-}" ]]; then
  echo "run_zig_test.sh: set ANANKE_ADDR to a live server, e.g. http://127.0.0.1:50051" >&2
  exit 2
fi
if [[ -z "${ZIG:-}" ]]; then
  python=python3
  [[ -x ../../.venv/bin/python ]] && python=../../.venv/bin/python
  ZIG="$python -m ziglang"
fi

cargo build --jobs "${CARGO_BUILD_JOBS:-2}" --features ffi --lib

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir/zig-test"
target_dir="$(cd "$target_dir" && pwd)"
lib_dir="$target_dir/debug"
binary="$target_dir/zig-test/maze_ffi"
# Zig's caches go under the target folder, not the source tree.
export ZIG_LOCAL_CACHE_DIR="$target_dir/zig-test/cache"
export ZIG_GLOBAL_CACHE_DIR="$target_dir/zig-test/global-cache"

# The header, exactly as cbindgen wrote it, becomes the Zig module `c`.
printf '#include "ananke.h"\n#include <stdio.h>\n#include <string.h>\n' > "$target_dir/zig-test/c.h"
$ZIG translate-c "$target_dir/zig-test/c.h" -Iinclude -lc > "$target_dir/zig-test/c.zig"
$ZIG build-exe --dep c -Mroot=tests/zig/maze_ffi.zig -Mc="$target_dir/zig-test/c.zig" \
  -lc -L"$lib_dir" -lananke_client -rpath "$lib_dir" -femit-bin="$binary"
exec "$binary"
