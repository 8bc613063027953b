#!/bin/sh
# Builds stats.wasm: compiles every .c file here (and the generated
# bindings) with zig's clang for wasm32-wasi, then wraps the core module into
# a component with the WASI preview1 adapter. Needs `python3 -m ziglang`
# (pip install ziglang) and `wasm-tools` on PATH; no network. PYTHON picks
# another interpreter.
set -e
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# zig keeps its compiled libc in a cache under $HOME; without HOME it needs one.
if [ -z "${HOME:-}${XDG_CACHE_HOME:-}${ZIG_GLOBAL_CACHE_DIR:-}" ]; then
    export ZIG_GLOBAL_CACHE_DIR="${TMPDIR:-/tmp}/tessera-zig-cache"
fi
$PYTHON -m ziglang cc --target=wasm32-wasi -mexec-model=reactor -Os -flto -std=gnu17 -Wall ${CFLAGS:-} \
    -o stats.core.wasm *.c bindings/service.c bindings/service_component_type.o
# `tessera build` names the WASI preview1 -> 0.2 adapter matching the platform's
# Wasmtime in TESSERA_WASI_PROXY_ADAPTER; by hand, put the file here.
ADAPTER=${TESSERA_WASI_PROXY_ADAPTER:-wasi_snapshot_preview1.proxy.wasm}
wasm-tools component new stats.core.wasm \
    --adapt wasi_snapshot_preview1="$ADAPTER" -o stats.wasm
rm -f stats.core.wasm
