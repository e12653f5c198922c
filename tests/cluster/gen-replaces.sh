#!/usr/bin/env bash
# Regenerates go.mod of this module from k8s.io/kubernetes's own go.mod.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver,
# ...) at v0.0.0 and replaces them with ./staging/src/k8s.io/X, which exists
# only in its own repository. A module that depends on it must replace each of
# them with the published module at the matching version: k8s.io/kubernetes
# v1.N.P goes with k8s.io/X v0.N.P. This script reads the replace directives
# of the pinned k8s.io/kubernetes go.mod (from the Go module proxy) and writes
# one `replace k8s.io/X => k8s.io/X v0.N.P` per staging module, then pins
# kubernetes and etcd and runs go mod tidy.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=versions.env
. ./versions.env

staging_version="v0.${KUBERNETES_VERSION#v1.}"

kmod_json="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}")"
kmod="$(printf '%s\n' "$kmod_json" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[ -f "$kmod" ] || { echo "gen-replaces: no go.mod for k8s.io/kubernetes@${KUBERNETES_VERSION}" >&2; exit 1; }

# Every `k8s.io/X => ./staging/src/k8s.io/X` line, inside a replace block or
# as a single replace directive.
mapfile -t staged < <(sed -n 's#^[[:space:]]*\(replace[[:space:]]\+\)\?\(k8s\.io/[A-Za-z0-9._/-]*\)[[:space:]]\+=>[[:space:]]\+\./staging/.*#\2#p' "$kmod" | sort -u)
[ "${#staged[@]}" -gt 0 ] || { echo "gen-replaces: found no staging replace directive in $kmod" >&2; exit 1; }

# Drop the replace directives we wrote before, then write the new list.
for old in $(go mod edit -json | sed -n 's/^[[:space:]]*"Path": "\(k8s\.io\/[^"]*\)"$/\1/p' | sort -u); do
	go mod edit -dropreplace="$old" 2>/dev/null || true
done
args=()
for m in "${staged[@]}"; do
	args+=("-replace=${m}=${m}@${staging_version}")
done
go mod edit "${args[@]}"
go mod edit -require="k8s.io/kubernetes@${KUBERNETES_VERSION}" -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
echo "gen-replaces: ${#staged[@]} staging modules of k8s.io/kubernetes ${KUBERNETES_VERSION} replaced with ${staging_version}"
go mod tidy
