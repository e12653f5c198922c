#!/usr/bin/env bash
# Builds the test control plane from the Go module proxy: kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl of k8s.io/kubernetes and etcd of
# go.etcd.io/etcd/server/v3, at the versions pinned in versions.env, go.mod,
# etcd/go.mod and their go.sum files; and the test node, kanister-node, a
# virtual-kubelet provider (node/, its own module node/go.mod). Test tooling
# only, never shipped.
#
# The binaries go into a cache outside the clone:
#   ${KANISTER_CLUSTER_CACHE:-$HOME/.cache/kanister-cluster}/<key>/bin/
# where <key> names both versions and a hash of everything that decides the
# build (go.mod and go.sum files, Go version, link flags). A binary already in
# the cache is not built again, so a second run builds nothing.
#
# The node goes to ${cache}/node-vk-<version>_<hash of node/>/bin/kanister-node.
#
# Usage: build.sh [--print-bin-dir | --print-node-bin]
#   Progress and timings go to stderr; the bin directory is printed on stdout
#   as the last line. --print-bin-dir prints it without building anything;
#   --print-node-bin prints the node binary's path without building.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tests/cluster/versions.env
. "$here/versions.env"

log() { echo "build.sh: $*" >&2; }
die() { echo "build.sh: ERROR: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "no 'go' command on PATH; install Go 1.26 or newer"
goversion="$(cd "$here" && go env GOVERSION GOOS GOARCH CGO_ENABLED | paste -sd ' ')" \
	|| die "'go env' failed"

# The version stamp kube-apiserver reports (`kubectl version`) and the others
# log, as Kubernetes' hack/lib/version.sh sets it. The build date is the time
# the module proxy gives for the tag, so that the build is reproducible.
kube_minor="${KUBERNETES_VERSION#v1.}"
kube_minor="${kube_minor%%.*}"
kube_dl="$(cd "$here" && go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" 2>&1)" \
	|| die "cannot fetch k8s.io/kubernetes@${KUBERNETES_VERSION} from the Go module proxy:
$kube_dl"
kube_info="$(printf '%s\n' "$kube_dl" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",$/\1/p')"
build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$kube_info")"
[ -n "$build_date" ] || build_date="1970-01-01T00:00:00Z"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
	kube_ldflags+=" -X ${pkg}.gitMajor=1"
	kube_ldflags+=" -X ${pkg}.gitMinor=${kube_minor}"
	kube_ldflags+=" -X ${pkg}.gitTreeState=archive"
	kube_ldflags+=" -X ${pkg}.buildDate=${build_date}"
done
etcd_ldflags="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"

hash="$( (cd "$here" && cat go.mod go.sum etcd/go.mod etcd/go.sum; \
	echo "$goversion"; echo "$kube_ldflags"; echo "$etcd_ldflags"; echo trimpath) \
	| sha256sum | cut -c1-16)"
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_${hash}"
cache="${KANISTER_CLUSTER_CACHE:-$HOME/.cache/kanister-cluster}"
case "$cache" in /*) ;; *) cache="$PWD/$cache" ;; esac
case "$cache/" in "$(cd "$here/../.." && pwd)/"*) die "the cache $cache must be outside the clone" ;; esac
bin="$cache/$key/bin"

# The node (node/, its own module) has its own key: a change to its source
# rebuilds it alone, not the control plane.
node_hash="$( (cd "$here/node" && cat go.mod go.sum ./*.go; echo "$goversion"; echo trimpath) \
	| sha256sum | cut -c1-16)"
node_key="node-vk-${VIRTUAL_KUBELET_VERSION}_${node_hash}"
node_bin="$cache/$node_key/bin"

if [ "${1:-}" = "--print-bin-dir" ]; then
	echo "$bin"
	exit 0
fi
if [ "${1:-}" = "--print-node-bin" ]; then
	echo "$node_bin/kanister-node"
	exit 0
fi

mkdir -p "$bin" "$cache/$key/logs"
# One build at a time per key; a second caller waits, then finds the binaries.
exec 9>"$cache/$key/lock"
flock 9

# build NAME MODULE_DIR PACKAGE LDFLAGS
build() {
	local name="$1" dir="$2" pkg="$3" ldflags="$4"
	if [ -x "$bin/$name" ]; then
		log "$name: cached ($bin/$name)"
		return 0
	fi
	local blog="$cache/$key/logs/$name.build.log" start end
	log "$name: building $pkg (log: $blog) ..."
	start="$(date +%s)"
	if ! (cd "$here/$dir" && nice -n 10 go build -trimpath -ldflags "$ldflags" \
		-o "$bin/.$name.tmp" "$pkg") >"$blog" 2>&1; then
		rm -f "$bin/.$name.tmp"
		echo "build.sh: ERROR: building $name ($pkg) failed; the end of $blog:" >&2
		tail -n 30 "$blog" >&2
		exit 1
	fi
	mv -f "$bin/.$name.tmp" "$bin/$name"
	end="$(date +%s)"
	log "$name: built in $((end - start))s"
}

total_start="$(date +%s)"
log "key $key ($goversion)"
build etcd etcd go.etcd.io/etcd/server/v3 "$etcd_ldflags"
build kube-apiserver . k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kube-controller-manager . k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
build kube-scheduler . k8s.io/kubernetes/cmd/kube-scheduler "$kube_ldflags"
# kubectl of the same version: the tests and cluster.sh use it, so no client of
# another version (and no version-skew warning) is involved.
build kubectl . k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
# The node binary goes to its own key directory.
key_bin="$bin"
bin="$node_bin"
mkdir -p "$bin" "$cache/$node_key/logs"
exec 8>"$cache/$node_key/lock"
flock 8
node_logs="$cache/$node_key/logs"
build_node() {
	if [ -x "$bin/kanister-node" ]; then
		log "kanister-node: cached ($bin/kanister-node)"
		return 0
	fi
	local blog="$node_logs/kanister-node.build.log" start
	log "kanister-node: building ./node (log: $blog) ..."
	start="$(date +%s)"
	if ! (cd "$here/node" && nice -n 10 go build -trimpath -ldflags "-s -w" \
		-o "$bin/.kanister-node.tmp" .) >"$blog" 2>&1; then
		rm -f "$bin/.kanister-node.tmp"
		echo "build.sh: ERROR: building kanister-node failed; the end of $blog:" >&2
		tail -n 30 "$blog" >&2
		exit 1
	fi
	mv -f "$bin/.kanister-node.tmp" "$bin/kanister-node"
	log "kanister-node: built in $(($(date +%s) - start))s"
}
build_node
bin="$key_bin"
log "all binaries in $bin and $node_bin ($(( $(date +%s) - total_start ))s)"
echo "$bin"
