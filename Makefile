# Two commands set everything up on a fresh machine:
#   make serve   install what is needed, prepare the default model, serve on localhost:50051
#   make test    install what is needed, check the contract and run every test
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ANANKE_HOME ?= $(HOME)/.cache/ananke
export ANANKE_HOME
PY := .venv/bin/python
TOOLS_BIN := $(ANANKE_HOME)/bin
# Environment for every engine process: vLLM must not probe the network.
export VLLM_HOST_IP ?= 127.0.0.1
export VLLM_NO_USAGE_STATS ?= 1
export DO_NOT_TRACK ?= 1
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: help env tools model serve test check-proto generate check-generated lint typecheck \
        unit-test integration-test client-install-test bench capacity gpu-check clean

help:  ## Show the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

env:  ## Create or refresh the Python environments (shared cache + this checkout's .venv).
	@scripts/setup_env.sh

tools:  ## Install grpcurl and grpc_health_probe (Go module proxy).
	@scripts/install_tools.sh >/dev/null

model: env  ## Prepare the default model (SmolLM2-135M-Instruct) in the cache.
	$(PY) -m ananke_server.model_prep

serve: env model  ## Serve on localhost:50051 with the default model.
	.venv/bin/ananke-server $(SERVE_ARGS)

generate: env  ## Regenerate the Python stubs from proto/.
	PATH="$(CURDIR)/.venv/bin:$$PATH" scripts/generate.sh

check-proto: env  ## buf lint and buf format.
	.venv/bin/buf lint
	.venv/bin/buf format --diff --exit-code

check-generated: generate  ## Fail when the committed stubs differ from proto/.
	@if [ -n "$$(git status --porcelain -- clients/python/src)" ]; then \
	  git status --porcelain -- clients/python/src; git --no-pager diff --stat -- clients/python/src; \
	  echo "generated stubs are stale: run 'make generate' and commit"; exit 1; fi

PY_SOURCES = $(wildcard service clients/python/src clients/python/examples tests bench scripts modal_deploy)

lint: env  ## ruff.
	.venv/bin/ruff check $(PY_SOURCES)
	.venv/bin/ruff format --check $(PY_SOURCES)

typecheck: env  ## mypy --strict on the service and the client.
	.venv/bin/mypy service/ananke_server clients/python/src/ananke

client-install-test: env  ## pip install ./clients/python alone in a fresh venv; import without torch or vLLM.
	scripts/check_client_install.sh

unit-test: env  ## Fast tests (no engine).
	$(PY) -m pytest -m "not engine" -q

test: env tools model check-proto check-generated lint typecheck client-install-test  ## Every check and test, real engine included.
	PATH="$(TOOLS_BIN):$$PATH" $(PY) -m pytest -q -rs

bench: env model  ## Benchmarks on this machine (prints figures; BENCH_ARGS=--quick for a short run).
	$(PY) bench/run.py $(BENCH_ARGS)

capacity:  ## Print the capacity model of the Modal profiles (a model, not a measurement).
	python3 bench/capacity.py $(CAPACITY_ARGS)

gpu-check:  ## Compare the service's logits code on CUDA with CPU, bit for bit (needs a GPU; see README).
	scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:  ## Remove build outputs in the checkout (not the shared cache).
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
