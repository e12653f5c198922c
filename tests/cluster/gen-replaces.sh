#!/usr/bin/env bash
# Regenerates the requirements of go.mod (Kubernetes) and etcd/go.mod (etcd)
# from the pinned versions in versions.env.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver,
# ...) at v0.0.0 and replaces them with ./staging/src/k8s.io/X, a directory that
# exists only in its own repository. A module that depends on it must replace
# each of them with the published module of the matching version: k8s.io/kubernetes
# v1.N.P goes with k8s.io/X v0.N.P. This script reads the replace directives of
# the pinned k8s.io/kubernetes go.mod (fetched from the Go module proxy) and
# writes one `replace k8s.io/X => k8s.io/X v0.N.P` per staging module into
# go.mod, then pins both versions and runs go mod tidy in both modules.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=versions.env
. ./versions.env

staging_version="v0.${KUBERNETES_VERSION#v1.}"

kmod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" \
	| sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
[ -f "$kmod" ] || { echo "gen-replaces: no go.mod for k8s.io/kubernetes@${KUBERNETES_VERSION}" >&2; exit 1; }

# Every `k8s.io/X => ./staging/src/k8s.io/X`, in a replace block or alone.
mapfile -t staged < <(sed -n 's#^[[:space:]]*\(replace[[:space:]]\{1,\}\)\{0,1\}\(k8s\.io/[A-Za-z0-9._/-]*\)[[:space:]]\{1,\}=>[[:space:]]\{1,\}\./staging/.*#\2#p' "$kmod" | sort -u)
[ "${#staged[@]}" -gt 0 ] || { echo "gen-replaces: found no staging replace directive in $kmod" >&2; exit 1; }

# Drop every replace directive written before, then write the new list.
for old in $(go mod edit -json | awk '/"Old": \{/ {o=1; next} o && /"Path":/ {gsub(/[",]/, "", $2); print $2; o=0}'); do
	go mod edit -dropreplace="$old"
done
args=()
for m in "${staged[@]}"; do
	args+=("-replace=${m}=${m}@${staging_version}")
done
go mod edit "${args[@]}" -require="k8s.io/kubernetes@${KUBERNETES_VERSION}"
echo "gen-replaces: ${#staged[@]} staging modules of k8s.io/kubernetes ${KUBERNETES_VERSION} replaced with ${staging_version}"
go mod tidy

(cd etcd && go mod edit -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}" && go mod tidy)
echo "gen-replaces: etcd/go.mod requires go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
