#!/bin/sh
# Builds orders.wasm: Go → a WebAssembly module (GOOS=wasip1, a reactor), then a
# component exporting wasi:http/incoming-handler. Offline: no module downloads.
set -eu
export GOOS=wasip1 GOARCH=wasm GOPROXY=off GOFLAGS= GOTOOLCHAIN=local
# Go needs a build cache; without HOME it has none.
case "$(go env GOCACHE)" in ""|off) export GOCACHE="${TMPDIR:-/tmp}/tessera-go-build" ;; esac
# -checklinkname=0: the bindings' runtime reaches into the Go runtime's allocator.
go build -buildmode=c-shared -trimpath -ldflags="-s -w -checklinkname=0" -o core.wasm .
wasm-tools component embed wit --world tessera:service/service core.wasm -o embedded.wasm
wasm-tools component new embedded.wasm --adapt wasi_snapshot_preview1=wasi_snapshot_preview1.proxy.wasm -o orders.wasm
rm -f core.wasm embedded.wasm
