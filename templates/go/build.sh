#!/bin/sh
# Builds {{name}}.wasm: Go compiles the service to a WebAssembly module (GOOS=wasip1,
# built as a reactor: init functions run once, then exports are called), then wasm-tools
# wraps it into a component exporting wasi:http/incoming-handler. Needs `go` (1.24 or
# later) and `wasm-tools` on PATH; no network (no module downloads).
set -eu
cd "$(dirname "$0")"
export GOOS=wasip1 GOARCH=wasm GOPROXY=off GOFLAGS= GOTOOLCHAIN=local
# Go needs a build cache; without HOME it has none.
case "$(go env GOCACHE)" in ""|off) export GOCACHE="${TMPDIR:-/tmp}/tessera-go-build" ;; esac
# -checklinkname=0: the bindings' runtime (tessera/internal/wit/runtime) allocates with
# the Go runtime's sbrk before the runtime is initialized.
go build -buildmode=c-shared -trimpath -ldflags="-s -w -checklinkname=0" -o {{name}}.core.wasm .
wasm-tools component embed wit --world tessera:service/service {{name}}.core.wasm -o {{name}}.embed.wasm
# `tessera build` names the WASI preview1 -> 0.2 adapter matching the platform's
# Wasmtime in TESSERA_WASI_PROXY_ADAPTER; by hand, put the file here.
ADAPTER=${TESSERA_WASI_PROXY_ADAPTER:-wasi_snapshot_preview1.proxy.wasm}
wasm-tools component new {{name}}.embed.wasm --adapt wasi_snapshot_preview1="$ADAPTER" -o {{name}}.wasm
rm -f {{name}}.core.wasm {{name}}.embed.wasm
