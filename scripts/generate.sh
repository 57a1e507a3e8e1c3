#!/usr/bin/env bash
# Regenerates every committed stub from proto/ (buf.gen.yaml says how).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
gen=clients/python/src
# Remove only generated files: hand-written modules share the package.
find "$gen/ananke/v1" -name '*_pb2*.py*' -delete
rm -rf "$gen/ananke_betterproto"
buf generate
