#!/usr/bin/env bash
# Builds the C ABI (cargo feature `ffi`), compiles tests/c/test_ffi.c with gcc
# against it and runs it against the live server at ANANKE_ADDR.
#   ANANKE_ADDR=http://127.0.0.1:50051 clients/rust/run_c_test.sh
#   RUN_VALGRIND=1 ...  runs it under valgrind --leak-check=full.
# Honours CARGO_TARGET_DIR; builds with at most CARGO_BUILD_JOBS (default 2) jobs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ -z "${ANANKE_ADDR:-}" ]]; then
  echo "run_c_test.sh: set ANANKE_ADDR to a live server, e.g. http://127.0.0.1:50051" >&2
  exit 2
fi

cargo build --jobs "${CARGO_BUILD_JOBS:-2}" --features ffi --lib

target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir/c-test"
target_dir="$(cd "$target_dir" && pwd)"
lib_dir="$target_dir/debug"
binary="$target_dir/c-test/test_ffi"

gcc -std=c11 -Wall -Wextra -Werror -g -Iinclude tests/c/test_ffi.c \
  -L"$lib_dir" -lananke_client -Wl,-rpath,"$lib_dir" -o "$binary"

if [[ "${RUN_VALGRIND:-0}" == 1 ]]; then
  exec valgrind --leak-check=full --error-exitcode=1 "$binary"
fi
exec "$binary"
