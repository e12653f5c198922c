#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the tests: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler, built from the Go
# module proxy by tests/cluster/build.sh (see tests/cluster/README.md).
# and one node, kanister-node: a virtual kubelet (tests/cluster/node) that runs
# each pod's containers as host processes.
#
# Usage: tests/cluster.sh start|stop|status|env|restart-apiserver
#   start   build what is missing, make certificates, start the four
#           processes, wait for /readyz, print `export KUBECONFIG=...`
#   stop    stop exactly the processes start recorded in <state>/pids
#   status  say what runs
#   env     print the export lines (KUBECONFIG, and PATH with the built kubectl first)
#   restart-apiserver  kill -9 the API server and start it again (tests of outages)
# State: ${KANISTER_CLUSTER_DIR:-/tmp/kanister-cluster} (certs, kubeconfigs,
# etcd data, logs/, pids). Binaries: ${KANISTER_CLUSTER_CACHE:-~/.cache/kanister-cluster}.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${KANISTER_CLUSTER_DIR:-/tmp/kanister-cluster}"
case "$state" in /*) ;; *) state="$PWD/$state" ;; esac
# kubectl: the one build.sh made, of the server's version, unless KUBECTL names another.
kubectl="${KUBECTL:-$(bash "$here/cluster/build.sh" --print-bin-dir)/kubectl}"
marker="$state/.kanister-cluster"
pids="$state/pids"
# Start order; stop goes the other way.
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kanister-node)
node_name=kanister-node

log() { echo "cluster.sh: $*" >&2; }
exports() {
	echo "export KUBECONFIG=$state/admin.kubeconfig"
	# The node's image file: `REPOSITORY ENTRYPOINT...` lines, the command of a container
	# of that image that has none (tests/cluster/README.md).
	echo "export KANISTER_CLUSTER_IMAGES=$state/images"
	echo "export PATH=\"$(dirname "$kubectl"):\$PATH\""
}
die() { echo "cluster.sh: ERROR: $*" >&2; exit 1; }

# recorded_pid NAME: the pid start recorded for NAME, if that process still
# runs the binary it started (a pid that was reused by another program is not ours).
recorded_pid() {
	local name="$1" n pid exe
	[ -f "$pids" ] || return 1
	while read -r n pid exe; do
		[ "$n" = "$name" ] || continue
		[ -d "/proc/$pid" ] || return 1
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] || return 1
		echo "$pid"
		return 0
	done <"$pids"
	return 1
}

running_any() {
	local c
	for c in "${components[@]}"; do
		recorded_pid "$c" >/dev/null && return 0
	done
	return 1
}

# free_ports N: N distinct TCP ports on which nothing listens now.
free_ports() {
	local n="$1" p used out=""
	used="$(ss -Htan 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)"
	for _ in $(seq 1 500); do
		p=$((20000 + RANDOM % 20000))
		grep -qx "$p" <<<"$used" && continue
		case " $out " in *" $p "*) continue ;; esac
		out="$out $p"
		n=$((n - 1))
		[ "$n" -gt 0 ] || { echo "$out"; return 0; }
	done
	die "no free port found"
}

# launch NAME BINARY ARGS...: runs it in a session of its own, detached from
# this shell, logs in logs/NAME.log, and records "NAME PID BINARY" in pids.
launch() {
	local name="$1" binary="$2" pidfile="$state/run/$1.pid"
	shift 2
	rm -f "$pidfile"
	# shellcheck disable=SC2016 # expanded by the inner bash
	setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$binary" "$@" \
		</dev/null >"$state/logs/$name.log" 2>&1 &
	for _ in $(seq 1 100); do
		[ -s "$pidfile" ] && break
		sleep 0.05
	done
	[ -s "$pidfile" ] || die "$name did not start; see $state/logs/$name.log"
	local pid exe
	pid="$(cat "$pidfile")"
	exe="$(readlink -f "$binary")"
	# Until bash has exec'd the binary, /proc/PID/exe is bash.
	for _ in $(seq 1 100); do
		[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ] && break
		sleep 0.05
	done
	echo "$name $pid $exe" >>"$pids"
}

# wait_for WHAT SECONDS COMMAND...: retries COMMAND until it succeeds, failing
# early when a recorded process has died.
wait_for() {
	local what="$1" secs="$2" c
	shift 2
	local deadline=$(($(date +%s) + secs))
	while ! "$@" >/dev/null 2>&1; do
		for c in "${components[@]}"; do
			if grep -q "^$c " "$pids" && ! recorded_pid "$c" >/dev/null; then
				fail_start "$c exited while waiting for $what"
			fi
		done
		[ "$(date +%s)" -lt "$deadline" ] || fail_start "$what not ready after ${secs}s"
		sleep 0.3
	done
}

node_ready() {
	[ "$("$kubectl" --kubeconfig "$state/admin.kubeconfig" get node "$node_name" \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

fail_start() {
	local c
	echo "cluster.sh: ERROR: $*" >&2
	for c in "${components[@]}"; do
		[ -f "$state/logs/$c.log" ] || continue
		echo "--- last lines of $state/logs/$c.log" >&2
		tail -n 15 "$state/logs/$c.log" >&2
	done
	do_stop
	exit 1
}

kubeconfig() {
	local file="$1" user="$2" port="$3"
	cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kanister-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $state/pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $state/pki/$user.crt
    client-key: $state/pki/$user.key
contexts:
- name: kanister-test
  context:
    cluster: kanister-test
    user: $user
current-context: kanister-test
EOF
}

# ca NAME CN: a self-signed CA.
ca() {
	openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$state/pki/$1.key" -out "$state/pki/$1.crt" -days 365 -subj "/CN=$2" \
		-addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
}

# cert NAME SUBJECT [SAN] [CA]: a key and a certificate signed by CA (ca).
cert() {
	local name="$1" subj="$2" san="${3:-}" ca="${4:-ca}" ext="$state/pki/$1.ext"
	local usage="clientAuth"
	[ -n "$san" ] && usage="serverAuth"
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		[ -n "$san" ] && echo "subjectAltName=$san"
	} >"$ext"
	openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
		-keyout "$state/pki/$name.key" -subj "$subj" -out "$state/pki/$name.csr" 2>/dev/null
	openssl x509 -req -in "$state/pki/$name.csr" -CA "$state/pki/$ca.crt" -CAkey "$state/pki/$ca.key" \
		-CAcreateserial -days 365 -extfile "$ext" -out "$state/pki/$name.crt" 2>/dev/null
	rm -f "$state/pki/$name.csr" "$ext"
}

make_pki() {
	local d="$state/pki"
	mkdir -p "$d"
	ca ca kanister-test-ca
	# The aggregation layer's CA: kube-apiserver publishes it in
	# kube-system/extension-apiserver-authentication, where the controller
	# manager and the scheduler look for it.
	ca front-proxy-ca kanister-test-front-proxy-ca
	cert front-proxy-client "/CN=front-proxy-client" "" front-proxy-ca
	cert apiserver "/CN=kube-apiserver" \
		"IP:127.0.0.1,DNS:localhost,IP:$service_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
	cert admin "/O=system:masters/CN=kanister-test-admin"
	cert kube-controller-manager "/CN=system:kube-controller-manager"
	cert kube-scheduler "/CN=system:kube-scheduler"
	# The node: its client cert (Node authorizer: system:node:<name> in
	# system:nodes), its serving cert for the kubelet port (the API server
	# checks it against the cluster CA), and the API server's client cert for
	# the kubelet port (logs, exec).
	cert "$node_name" "/O=system:nodes/CN=system:node:$node_name"
	cert "$node_name-serving" "/CN=$node_name" "IP:127.0.0.1,DNS:$node_name,DNS:localhost"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
	openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
	openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
	chmod 600 "$d"/*.key
}

do_start() {
	local t0 bin
	t0="$(date +%s.%N)"
	if running_any; then
		if "$kubectl" --kubeconfig "$state/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; then
			log "already running (state $state)"
			exports
			return 0
		fi
		die "some processes of an earlier start still run but the cluster is not ready; run '$0 stop' first"
	fi
	command -v openssl >/dev/null || die "openssl is needed"
	command -v curl >/dev/null || die "curl is needed"

	bin="$(bash "$here/cluster/build.sh" | tail -n 1)" || die "building the control plane failed (see above)"
	command -v "$kubectl" >/dev/null || die "no kubectl at $kubectl (unset KUBECTL to use the built one)"
	local b
	for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
		[ -x "$bin/$b" ] || die "build.sh did not leave $bin/$b"
	done

	# A fresh cluster every start. Only a directory that start made is wiped.
	if [ -e "$state" ]; then
		[ -f "$marker" ] || [ -z "$(ls -A "$state")" ] ||
			die "$state exists and was not made by cluster.sh; set KANISTER_CLUSTER_DIR elsewhere"
		rm -rf "$state"
	fi
	mkdir -p "$state/logs" "$state/run" "$state/etcd"
	chmod 700 "$state/etcd"
	touch "$marker" "$pids"

	local etcd_port peer_port api_port kcm_port sched_port kubelet_port ports node_bin
	node_bin="$(bash "$here/cluster/build.sh" --print-node-bin)"
	[ -x "$node_bin" ] || die "build.sh did not leave $node_bin"
	ports="$(free_ports 6)"
	read -r etcd_port peer_port api_port kcm_port sched_port kubelet_port <<<"$ports"
	# Virtual addresses only: nothing listens on them and no node routes them.
	service_range="10.0.0.0/24"
	service_ip="10.0.0.1"
	make_pki
	kubeconfig "$state/admin.kubeconfig" admin "$api_port"
	kubeconfig "$state/kube-controller-manager.kubeconfig" kube-controller-manager "$api_port"
	kubeconfig "$state/kube-scheduler.kubeconfig" kube-scheduler "$api_port"
	kubeconfig "$state/$node_name.kubeconfig" "$node_name" "$api_port"
	{
		echo "etcd=http://127.0.0.1:$etcd_port"
		echo "apiserver=https://127.0.0.1:$api_port"
		echo "controller_manager=https://127.0.0.1:$kcm_port"
		echo "scheduler=https://127.0.0.1:$sched_port"
		echo "kubelet=https://127.0.0.1:$kubelet_port"
	} >"$state/endpoints"

	launch etcd "$bin/etcd" \
		--name=kanister-test --data-dir="$state/etcd" \
		--listen-client-urls="http://127.0.0.1:$etcd_port" \
		--advertise-client-urls="http://127.0.0.1:$etcd_port" \
		--listen-peer-urls="http://127.0.0.1:$peer_port" \
		--initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
		--initial-cluster="kanister-test=http://127.0.0.1:$peer_port" \
		--unsafe-no-fsync=true --log-level=warn
	wait_for etcd 60 curl -fsS "http://127.0.0.1:$etcd_port/health"

	# The endpoint reconciler refuses a loopback address for the `kubernetes`
	# service's endpoints, so it is off: nothing runs in a pod yet.
	# shellcheck disable=SC2054 # commas inside flag values
	local api_argv=("$bin/kube-apiserver" \
		--etcd-servers="http://127.0.0.1:$etcd_port" \
		--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$api_port" \
		--cert-dir="$state/run/apiserver" \
		--tls-cert-file="$state/pki/apiserver.crt" --tls-private-key-file="$state/pki/apiserver.key" \
		--client-ca-file="$state/pki/ca.crt" \
		--authorization-mode=Node,RBAC \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$state/pki/sa.pub" \
		--service-account-signing-key-file="$state/pki/sa.key" \
		--service-cluster-ip-range="$service_range" \
		--requestheader-client-ca-file="$state/pki/front-proxy-ca.crt" \
		--requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User \
		--requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$state/pki/front-proxy-client.crt" \
		--proxy-client-key-file="$state/pki/front-proxy-client.key" \
		--kubelet-certificate-authority="$state/pki/ca.crt" \
		--kubelet-client-certificate="$state/pki/apiserver-kubelet-client.crt" \
		--kubelet-client-key="$state/pki/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP \
		--allow-privileged=true --profiling=false \
		--endpoint-reconciler-type=none)
	# Kept for restart-apiserver.
	printf '%s\0' "${api_argv[@]}" >"$state/run/kube-apiserver.argv"
	launch kube-apiserver "${api_argv[@]}"
	wait_for kube-apiserver 120 "$kubectl" --kubeconfig "$state/admin.kubeconfig" get --raw /readyz

	launch kube-controller-manager "$bin/kube-controller-manager" \
		--kubeconfig="$state/kube-controller-manager.kubeconfig" \
		--authentication-kubeconfig="$state/kube-controller-manager.kubeconfig" \
		--authorization-kubeconfig="$state/kube-controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$state/run/kcm" \
		--leader-elect=false --use-service-account-credentials=true \
		--service-account-private-key-file="$state/pki/sa.key" \
		--root-ca-file="$state/pki/ca.crt" \
		--cluster-signing-cert-file="$state/pki/ca.crt" --cluster-signing-key-file="$state/pki/ca.key" \
		--service-cluster-ip-range="$service_range" --profiling=false
	launch kube-scheduler "$bin/kube-scheduler" \
		--kubeconfig="$state/kube-scheduler.kubeconfig" \
		--authentication-kubeconfig="$state/kube-scheduler.kubeconfig" \
		--authorization-kubeconfig="$state/kube-scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --secure-port="$sched_port" --cert-dir="$state/run/scheduler" \
		--leader-elect=false --profiling=false
	wait_for kube-controller-manager 60 curl -fsSk "https://127.0.0.1:$kcm_port/healthz"
	wait_for kube-scheduler 60 curl -fsSk "https://127.0.0.1:$sched_port/healthz"
	wait_for "/readyz" 60 "$kubectl" --kubeconfig "$state/admin.kubeconfig" get --raw /readyz

	# virtual-kubelet's informers list and watch all secrets and configmaps,
	# which the Node authorizer does not allow (the kubelet gets them one by
	# one); RBAC grants exactly that to this node.
	"$kubectl" --kubeconfig "$state/admin.kubeconfig" apply -f - >/dev/null <<EOF || fail_start "cannot create the node's RBAC"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kanister-test:node-informers
rules:
- apiGroups: [""]
  resources: [secrets, configmaps, services]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kanister-test:node-informers
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: kanister-test:node-informers
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: system:node:$node_name
EOF
	mkdir -p "$state/node"
	launch kanister-node "$node_bin" \
		--name="$node_name" --kubeconfig="$state/$node_name.kubeconfig" \
		--root="$state/node" --port="$kubelet_port" --images="$state/images" \
		--tls-cert="$state/pki/$node_name-serving.crt" --tls-key="$state/pki/$node_name-serving.key" \
		--client-ca="$state/pki/ca.crt" \
		--api-host=127.0.0.1 --api-port="$api_port"
	wait_for "node $node_name Ready" 60 node_ready

	log "control plane ready in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s (state $state, logs $state/logs)"
	exports
}

# Stops the recorded processes one at a time, the last started first, so that
# kube-apiserver still has etcd while it shuts down.
do_stop() {
	local i c pid stopped=()
	[ -f "$pids" ] || { log "nothing recorded in $pids"; return 0; }
	for ((i = ${#components[@]} - 1; i >= 0; i--)); do
		c="${components[$i]}"
		pid="$(recorded_pid "$c")" || continue
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 150); do
			recorded_pid "$c" >/dev/null || break
			sleep 0.1
		done
		if recorded_pid "$c" >/dev/null; then
			log "$c ($pid) did not stop within 15s of TERM; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			for _ in $(seq 1 50); do
				recorded_pid "$c" >/dev/null || break
				sleep 0.1
			done
		fi
		stopped+=("$c")
	done
	running_any && die "some recorded processes still run: $(cat "$pids")"
	if [ "${#stopped[@]}" -eq 0 ]; then log "nothing was running"; else log "stopped ${stopped[*]}"; fi
	rm -f "$pids"
}

# Kills the API server (SIGKILL, as a crash would) and starts it again with the
# same arguments and state: for tests of clients that must survive the outage.
do_restart_apiserver() {
	local pid t0 argv
	pid="$(recorded_pid kube-apiserver)" || die "kube-apiserver is not running; run '$0 start'"
	[ -s "$state/run/kube-apiserver.argv" ] || die "no $state/run/kube-apiserver.argv: the cluster was started by an older cluster.sh; stop and start it"
	t0="$(date +%s.%N)"
	kill -KILL "$pid"
	for _ in $(seq 1 100); do
		[ -d "/proc/$pid" ] || break
		sleep 0.05
	done
	[ -d "/proc/$pid" ] && die "kube-apiserver ($pid) survived SIGKILL"
	mapfile -d '' argv <"$state/run/kube-apiserver.argv"
	grep -v '^kube-apiserver ' "$pids" >"$pids.tmp" || true
	mv "$pids.tmp" "$pids"
	launch kube-apiserver "${argv[@]}"
	# Not wait_for: a failure here leaves the rest running, for its logs.
	local deadline=$(($(date +%s) + 120)) c
	until "$kubectl" --kubeconfig "$state/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; do
		recorded_pid kube-apiserver >/dev/null || die "kube-apiserver exited after its restart; see $state/logs/kube-apiserver.log"
		[ "$(date +%s)" -lt "$deadline" ] || die "kube-apiserver not ready 120s after its restart"
		sleep 0.3
	done
	for c in "${components[@]}"; do
		recorded_pid "$c" >/dev/null || die "$c did not survive the API server's restart; see $state/logs/$c.log"
	done
	log "kube-apiserver restarted in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
}

do_status() {
	local c pid any=0
	if [ ! -f "$pids" ]; then
		echo "not running (no $pids)"
		return 3
	fi
	for c in "${components[@]}"; do
		if pid="$(recorded_pid "$c")"; then
			any=1
			echo "$c: running, pid $pid, rss $(($(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024)) MiB"
		else
			echo "$c: not running"
		fi
	done
	[ -f "$state/endpoints" ] && sed 's/^/endpoint /' "$state/endpoints"
	if [ "$any" = 1 ] && "$kubectl" --kubeconfig "$state/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1; then
		echo "apiserver /readyz: ok"
		exports
		return 0
	fi
	echo "apiserver /readyz: not ready"
	return 3
}

case "${1:-}" in
start) do_start ;;
stop) do_stop ;;
status) do_status ;;
restart-apiserver) do_restart_apiserver ;;
env)
	[ -f "$state/admin.kubeconfig" ] || die "no cluster state in $state; run '$0 start'"
	exports
	;;
*)
	echo "usage: $0 start|stop|status|env|restart-apiserver" >&2
	exit 2
	;;
esac
