#!/usr/bin/env bash
# Builds the Pulumi CLI pinned by this folder's go.mod into a cache outside the checkout and prints
# the bin dir that holds it (with the dynamic-provider shim beside it). Reuses a cached build.
#
# Usage: bash .ci/pulumi/build.sh            -> prints e.g. ~/.cache/envkit/pulumi/v3.276.0/bin
# Env:   ENVKIT_PULUMI_CACHE (default ~/.cache/envkit/pulumi)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk 'NF >= 2 && $(NF-1) == "github.com/pulumi/pulumi/pkg/v3" { print $NF; exit }' "$here/go.mod")"
[[ -n "$version" ]] || { echo "build.sh: no pulumi/pkg/v3 requirement in $here/go.mod" >&2; exit 2; }
bin="${ENVKIT_PULUMI_CACHE:-$HOME/.cache/envkit/pulumi}/$version/bin"
shim="$bin/pulumi-resource-pulumi-python"

write_shim() {
  # The CLI's release archive ships this provider plugin: Pulumi runs it for dynamic resources,
  # and it serves them with the Python SDK of the interpreter that runs the program.
  local tmp="$shim.tmp.$$"
  cat >"$tmp" <<'SHIM'
#!/bin/sh
# pulumi-resource-pulumi-python: serves Pulumi dynamic resources written in Python.
# Pulumi passes the engine address as the first argument; the interpreter is the program's:
# PULUMI_PYTHON_CMD, else the project's virtualenv, else the active one, else python3.
if [ -n "${PULUMI_PYTHON_CMD:-}" ]; then
  exec "$PULUMI_PYTHON_CMD" -u -m pulumi.dynamic "$@"
elif [ -n "${PULUMI_RUNTIME_VIRTUALENV:-}" ] && [ -x "$PULUMI_RUNTIME_VIRTUALENV/bin/python" ]; then
  exec "$PULUMI_RUNTIME_VIRTUALENV/bin/python" -u -m pulumi.dynamic "$@"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  exec "$VIRTUAL_ENV/bin/python" -u -m pulumi.dynamic "$@"
else
  exec python3 -u -m pulumi.dynamic "$@"
fi
SHIM
  chmod +x "$tmp"
  mv -f "$tmp" "$shim"
}

if [[ ! -x "$bin/pulumi" ]]; then
  command -v go >/dev/null || { echo "build.sh: go is not on PATH" >&2; exit 2; }
  mkdir -p "$bin"
  started=$SECONDS
  echo "build.sh: building pulumi $version into $bin (a cold build takes minutes)" >&2
  # -mod=mod: go.sum is committed, but let go add what a newer toolchain wants instead of failing.
  # The version is stamped the way Pulumi's own release build does, so `pulumi version` says it.
  (cd "$here" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$version" \
    -o "$bin/pulumi.tmp.$$" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  mv -f "$bin/pulumi.tmp.$$" "$bin/pulumi"
  echo "build.sh: built in $((SECONDS - started))s" >&2
fi
write_shim  # cheap, and keeps a cached bin dir in step with this script
echo "$bin"
