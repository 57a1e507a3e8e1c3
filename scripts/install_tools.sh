#!/usr/bin/env bash
# Installs the operator tools the tests drive, grpcurl and grpc_health_probe,
# from the Go module proxy into $ANANKE_HOME/bin (default ~/.cache/ananke/bin).
set -euo pipefail

home="${ANANKE_HOME:-$HOME/.cache/ananke}"
bin="$home/bin"
grpcurl_version=v1.9.4
probe_version=v0.4.42
mkdir -p "$bin"
log() { printf '[tools] %s\n' "$*" >&2; }

if [ ! -x "$bin/grpcurl" ]; then
  log "building grpcurl $grpcurl_version"
  GOBIN="$bin" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$grpcurl_version" >&2
fi

if [ ! -x "$bin/grpc_health_probe" ]; then
  # The proxy serves this module's zips but refuses its version list, which
  # `go install pkg@version` asks for; so fetch the zip and build it as the
  # main module. The zip is not in the checksum database, hence GONOSUMDB.
  log "building grpc_health_probe $probe_version"
  module=github.com/grpc-ecosystem/grpc-health-probe
  dir="$(GONOSUMDB="$module" go mod download -json "$module@$probe_version" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  work="$(mktemp -d)"
  cp -r "$dir/." "$work/"
  chmod -R u+w "$work"
  (cd "$work" && go build -buildvcs=false -o "$bin/grpc_health_probe" .) >&2
  rm -rf "$work"
fi
echo "$bin"
