#!/bin/sh
# Regenerates the Go bindings in this directory from a service's WIT.
#
#   sh tessera/internal/wit/generate.sh [WIT_DIR] [GO_PKG_DIR]
#
# Run from the service directory. WIT_DIR defaults to ./wit. The generated code imports
# the runtime support of github.com/bytecodealliance/go-pkg (module
# go.bytecodealliance.org/pkg); this copy keeps it in-tree as tessera/internal/wit/runtime
# and tessera/internal/wit/types so a build needs no module download. GO_PKG_DIR, if given,
# is a go-pkg checkout (or the src/pkg directory of the wit-bindgen-go crate) whose
# wit/runtime and wit/types replace the copies here.
#
# Needs wit-bindgen (with the go feature, 0.63.0) and gofmt on PATH.
set -eu
wit=${1:-wit}
pkg=${2:-}
here=$(dirname "$0")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wit-bindgen go -w tessera:service/service --pkg-name tessera/internal/wit --out-dir "$tmp" "$wit" >/dev/null 2>&1
rm -rf "$here/imports" "$here/exports/wit_exports"
mkdir -p "$here/exports"
cp -r "$tmp/imports" "$here/imports"
cp -r "$tmp/exports/wit_exports" "$here/exports/wit_exports"
if [ -n "$pkg" ]; then
  # Only what synchronous bindings use: no futures, streams or async runtime.
  rm -rf "$here/runtime" "$here/types"
  mkdir -p "$here/runtime" "$here/types"
  cp "$pkg/wit/runtime/runtime.go" "$pkg/wit/runtime/empty.s" "$here/runtime/"
  cp "$pkg/wit/types/option.go" "$pkg/wit/types/result.go" "$pkg/wit/types/tuple.go" "$pkg/wit/types/unit.go" "$here/types/"
  cp "$pkg/LICENSE" "$here/LICENSE-go-pkg"
fi
find "$here/imports" "$here/exports" -name '*.go' -exec sed -i \
  -e 's#"go.bytecodealliance.org/pkg/wit/runtime"#"tessera/internal/wit/runtime"#' \
  -e 's#"go.bytecodealliance.org/pkg/wit/types"#"tessera/internal/wit/types"#' {} +
gofmt -w "$here/imports" "$here/exports"
