#!/usr/bin/env bash
# Proves the client installs alone: a fresh venv, `pip install ./clients/python`,
# imports of the stubs, and neither torch nor vllm present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3.11}" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "./clients/python[betterproto]"
"$work/venv/bin/python" - <<'PY'
import importlib.util
import sys

from ananke.v1 import inference_service_pb2, inference_service_pb2_grpc
from ananke_betterproto.ananke import v1 as bp

for heavy in ("torch", "vllm"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} must not be installed with the client"
    assert heavy not in sys.modules
assert inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"]
assert hasattr(inference_service_pb2_grpc, "InferenceServiceStub")
assert bp.GenerateRequest().to_dict() == {}
print("client installs alone: ok (no torch, no vllm)")
PY
