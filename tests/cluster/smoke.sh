#!/usr/bin/env bash
# Smoke checks of the test cluster's node against a started cluster
# (bash tests/cluster.sh start): (1) the node is Ready; (2) a pod runs and
# `kubectl logs` shows its output; (3) `kubectl exec` returns output and exit
# codes; (4) a Deployment and a StatefulSet scaled 0->2->0, and a Job; (5) a Secret volume, a
# secretKeyRef env var and, beside them, configMapKeyRef, fieldRef, an init
# container and a PVC directory that outlives its pod; (6) the server's
# version, the project's CRDs and their schema. Exits non-zero on the
# first failure, saying which. Works in a namespace of its own, deleted at
# the end. Test tooling only; not wired into CI yet.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${KANISTER_CLUSTER_DIR:-/tmp/kanister-cluster}"
export KUBECONFIG="${KUBECONFIG:-$state/admin.kubeconfig}"
node="${NODE_NAME:-kanister-node}"
ns="smoke-$$"
k() { kubectl -n "$ns" "$@" 2> >(grep -v 'version difference\|WARNING: version' >&2); }
fail() { echo "smoke.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "smoke.sh: ok: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
cleanup() {
	kubectl delete ns "$ns" --wait=false >/dev/null 2>&1 || true
	kubectl delete pv "$ns" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

kubectl get --raw /readyz >/dev/null 2>&1 || fail "no ready API server at $KUBECONFIG; run: bash tests/cluster.sh start"

# (1) node Ready
ready="$(k get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' || true)"
[ "$ready" = True ] || fail "(1) node $node is not Ready (Ready=$ready)"
ok "(1) node $node Ready"

k create namespace "$ns" >/dev/null || fail "cannot create namespace $ns"
for _ in $(seq 1 50); do k get serviceaccount default >/dev/null 2>&1 && break; sleep 0.2; done

# (2) a pod runs and logs
t0="$(now)"
k apply -f - >/dev/null <<EOF || fail "(2) cannot create pod hello"
apiVersion: v1
kind: Pod
metadata: {name: hello}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command: [sh, -c, "echo hello; sleep 30"]
EOF
k wait --for=condition=Ready pod/hello --timeout=60s >/dev/null || fail "(2) pod hello not Ready: $(k get pod hello -o jsonpath='{.status}')"
ok "(2) pod hello Ready in $(since "$t0")s, IP $(k get pod hello -o jsonpath='{.status.podIP}')"
logs=""
for _ in $(seq 1 20); do logs="$(k logs hello || true)"; [ "$logs" = hello ] && break; sleep 0.25; done
[ "$logs" = hello ] || fail "(2) kubectl logs hello gave '$logs', wanted 'hello'"
ok "(2) kubectl logs shows hello"

# (3) exec: output and exit codes
out="$(k exec hello -- sh -c 'echo $((6*7))')" || fail "(3) kubectl exec failed"
[ "$out" = 42 ] || fail "(3) kubectl exec printed '$out', wanted 42"
rc=0
k exec hello -- sh -c 'exit 3' 2>/dev/null || rc=$?
[ "$rc" = 3 ] || fail "(3) kubectl exec ... exit 3 exited $rc, wanted 3"
out="$(echo in | k exec -i hello -- cat)" || fail "(3) kubectl exec -i failed"
[ "$out" = in ] || fail "(3) kubectl exec -i cat echoed '$out', wanted 'in'"
ok "(3) exec prints 42, exits 3, passes stdin"

# (4) Deployment 0 -> 2 -> 0, and a Job
k apply -f - >/dev/null <<EOF || fail "(4) cannot create the Deployment and Job"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 0
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - {name: web, image: none, command: [sh, -c, "while true; do sleep 1; done"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: job}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: job, image: none, command: [sh, -c, "echo job done"]}
EOF
t0="$(now)"
k scale deploy web --replicas=2 >/dev/null
k rollout status deploy web --timeout=60s >/dev/null || fail "(4) Deployment web did not reach 2 ready replicas"
running="$(k get pods -l app=web --field-selector=status.phase=Running -o name | wc -l)"
[ "$running" = 2 ] || fail "(4) $running web pods Running, wanted 2"
ok "(4) Deployment scaled to 2: 2 pods Running in $(since "$t0")s"
t0="$(now)"
k scale deploy web --replicas=0 >/dev/null
for _ in $(seq 1 120); do [ -z "$(k get pods -l app=web -o name)" ] && break; sleep 0.25; done
[ -z "$(k get pods -l app=web -o name)" ] || fail "(4) web pods left after scaling to 0: $(k get pods -l app=web -o name)"
ok "(4) Deployment scaled to 0: pods gone in $(since "$t0")s"
# A StatefulSet the same way: pods db-0 and db-1, then none.
k apply -f - >/dev/null <<EOF || fail "(4) cannot create the StatefulSet"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 0
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - {name: db, image: none, command: [sh, -c, "while true; do sleep 1; done"]}
EOF
t0="$(now)"
k scale statefulset db --replicas=2 >/dev/null
k rollout status statefulset db --timeout=60s >/dev/null || fail "(4) StatefulSet db did not reach 2 ready replicas"
[ "$(k get pods -l app=db -o name | sort | tr '\n' ' ')" = "pod/db-0 pod/db-1 " ] ||
	fail "(4) StatefulSet pods are '$(k get pods -l app=db -o name | tr '\n' ' ')'"
ok "(4) StatefulSet scaled to 2: db-0 and db-1 in $(since "$t0")s"
k scale statefulset db --replicas=0 >/dev/null
for _ in $(seq 1 160); do [ -z "$(k get pods -l app=db -o name)" ] && break; sleep 0.25; done
[ -z "$(k get pods -l app=db -o name)" ] || fail "(4) db pods left after scaling to 0"
ok "(4) StatefulSet scaled to 0"
k wait --for=condition=complete job/job --timeout=60s >/dev/null || fail "(4) Job job did not complete: $(k get job job -o jsonpath='{.status}')"
[ "$(k logs job/job)" = "job done" ] || fail "(4) Job log is '$(k logs job/job)'"
ok "(4) Job completed"

# (5) Secret volume and secretKeyRef (and configMapKeyRef, fieldRef, init container, PVC)
k create secret generic creds --from-literal=password=s3cret >/dev/null
k create configmap cfg --from-literal=mode=fast >/dev/null
# No provisioner: a PV for the claim to bind to (the controller manager binds
# it). The node ignores the PV's source and gives the claim its own directory.
k apply -f - >/dev/null <<EOF || fail "(5) cannot create the PV and PVC"
apiVersion: v1
kind: PersistentVolume
metadata: {name: $ns}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  hostPath: {path: /nonexistent/$ns}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: store}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: ""
  volumeName: $ns
  resources: {requests: {storage: 1Gi}}
EOF
pvc_pod() {
	cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  initContainers:
  - name: init
    image: none
    command: [sh, -c, 'echo init > data/from-init']
    volumeMounts: [{name: data, mountPath: /data}]
  containers:
  - name: main
    image: none
    command: [sh, -c]
    args: ['echo "vol=\$(cat etc/creds/password) mnt=\$(cat \$MOUNT_CREDS/password) env=\$PASS mode=\$MODE ns=\$NS ip=\$IP/\$POD_IP init=\$(cat data/from-init) pvc=\$(cat pvc/count 2>/dev/null)"; echo x >> pvc/count']
    env:
    - {name: PASS, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MODE, valueFrom: {configMapKeyRef: {name: cfg, key: mode}}}
    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    volumeMounts:
    - {name: creds, mountPath: /etc/creds}
    - {name: data, mountPath: /data}
    - {name: pvc, mountPath: /pvc}
  volumes:
  - {name: creds, secret: {secretName: creds}}
  - {name: data, emptyDir: {}}
  - {name: pvc, persistentVolumeClaim: {claimName: store}}
EOF
}
pvc_pod sec1 | k apply -f - >/dev/null || fail "(5) cannot create pod sec1"
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/sec1 --timeout=60s >/dev/null ||
	fail "(5) pod sec1 did not succeed: $(k get pod sec1 -o jsonpath='{.status}')"
ip="$(k get pod sec1 -o jsonpath='{.status.podIP}')"
want="vol=s3cret mnt=s3cret env=s3cret mode=fast ns=$ns ip=$ip/$ip init=init pvc="
got="$(k logs sec1 -c main)"
[ "$got" = "$want" ] || fail "(5) pod sec1 printed '$got', wanted '$want'"
ok "(5) Secret volume and secretKeyRef seen: $got"
pvc_pod sec2 | k apply -f - >/dev/null || fail "(5) cannot create pod sec2"
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/sec2 --timeout=60s >/dev/null || fail "(5) pod sec2 did not succeed"
case "$(k logs sec2 -c main)" in *"pvc=x") ok "(5) the PVC directory outlived pod sec1" ;; *) fail "(5) pod sec2 did not see sec1's PVC file: $(k logs sec2 -c main)" ;; esac

# (6) the server reports the built version; our CRDs apply and their schema is enforced
root="$(cd "$here/../.." && pwd)"
version="$(kubectl version -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"\(v[^"]*\)".*/\1/p' | tail -1)"
want_version="$(sed -n 's/^KUBERNETES_VERSION=//p' "$here/versions.env")"
[ "$version" = "$want_version" ] || fail "(6) the server reports '$version', built $want_version"
kubectl apply -f "$root/deploy/crds/" >/dev/null || fail "(6) the CRDs in deploy/crds do not apply"
kubectl wait --for=condition=Established crd/actionsets.cr.kanister.io --timeout=30s >/dev/null ||
	fail "(6) the ActionSet CRD is not established"
bad="apiVersion: cr.kanister.io/v1alpha1
kind: ActionSet
metadata: {name: bad, namespace: $ns}
spec: {actions: not-a-list}"
if out="$(k apply -f - <<<"$bad" 2>&1)"; then
	fail "(6) the server accepted an ActionSet whose spec.actions is a string"
fi
case "$out" in *"spec.actions"*) ;; *) fail "(6) the rejection does not name spec.actions: $out" ;; esac
ok "(6) server $version; CRDs applied; an ActionSet violating the schema is rejected"

k delete pod hello --wait=false >/dev/null
echo "smoke.sh: all checks passed"
