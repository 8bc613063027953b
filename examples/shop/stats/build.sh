#!/bin/sh
# Builds stats.wasm: compiles every .c file here (and the generated
# bindings) with zig's clang for wasm32-wasi, then wraps the core module into
# a component with the WASI preview1 adapter. Needs `python3 -m ziglang`
# (pip install ziglang) and `wasm-tools` on PATH; no network.
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
$PYTHON -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -Os -flto -std=gnu17 -Wall \
    -o stats.core.wasm *.c bindings/service.c bindings/service_component_type.o
wasm-tools component new stats.core.wasm \
    --adapt wasi_snapshot_preview1=wasi_snapshot_preview1.proxy.wasm -o stats.wasm
rm -f stats.core.wasm
