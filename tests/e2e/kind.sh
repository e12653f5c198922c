#!/usr/bin/env bash
# The real-cluster story, end to end, on kind:
#   1. build the images (images/*/Dockerfile) and load them into a kind cluster;
#   2. install the chart (deploy/helm/kanister) with least-privilege RBAC for mysql-test;
#   3. run MinIO (S3) in the cluster and MariaDB as the StatefulSet mysql-test/mysql-release,
#      with the agent sidecar patched in from the chart's ConfigMap;
#   4. the kanctl story of DESIGN.md: Profile, Blueprint, backup ActionSet, drop the data,
#      restore --from the backup, check the rows, delete --from the backup.
#
# It needs docker, kind, kubectl and helm on PATH, and kanctl (built from this repository unless
# KANCTL names one). It cannot run on the development machines (no Docker engine, no cluster):
# it is kept for users and for CI elsewhere; coordinator/tests/deploy.rs shellchecks it.
#
# Usage: tests/e2e/kind.sh            # create (or reuse) the cluster, run the story
#        KEEP_CLUSTER=1 tests/e2e/kind.sh   # leave the cluster running afterwards
# Settings (environment): CLUSTER (kanister-e2e), TAG (e2e), KANCTL, KANCTL_FLAGS (extra flags
# for every kanctl call, e.g. how to reach the coordinator), MINIO_IMAGE, MC_IMAGE,
# MARIADB_IMAGE, TIMEOUT (seconds to wait for an ActionSet, 900).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=${CLUSTER:-kanister-e2e}
TAG=${TAG:-e2e}
TIMEOUT=${TIMEOUT:-900}
KANISTER_NS=kanister
APP_NS=mysql-test
MINIO_IMAGE=${MINIO_IMAGE:-minio/minio:RELEASE.2025-04-22T22-12-26Z}
MC_IMAGE=${MC_IMAGE:-minio/mc:RELEASE.2025-04-16T18-13-26Z}
MARIADB_IMAGE=${MARIADB_IMAGE:-mariadb:11.4.5}
read -r -a KANCTL_EXTRA <<<"${KANCTL_FLAGS:-}"

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'kind.sh: %s\n' "$*" >&2; exit 1; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH"
  done
}

# A random secret of hex characters (never printed).
random_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    log "failed: coordinator logs and ActionSets follow"
    kubectl -n "$KANISTER_NS" logs deploy/kanister-coordinator --tail=200 || true
    kubectl get actionsets -A -o yaml || true
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ] && [ "${CREATED_CLUSTER:-0}" = 1 ]; then
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$status"
}
trap cleanup EXIT

kanctl() { "$KANCTL" "${KANCTL_EXTRA[@]}" "$@"; }

# Waits until ActionSet $1 (in the kanister namespace) is complete; fails when it fails.
wait_actionset() {
  local name=$1 state="" waited=0
  while [ "$waited" -lt "$TIMEOUT" ]; do
    state=$(kubectl -n "$KANISTER_NS" get actionset "$name" -o jsonpath='{.status.state}' 2>/dev/null || true)
    case "$state" in
      complete) log "actionset $name complete"; return 0 ;;
      failed | cancelled) kubectl -n "$KANISTER_NS" get actionset "$name" -o yaml; die "actionset $name ended $state" ;;
    esac
    sleep 5
    waited=$((waited + 5))
  done
  die "actionset $name still '$state' after ${TIMEOUT}s"
}

# The name of the ActionSet that `kanctl create actionset` reports ("actionset NAME created").
actionset_name() { grep -Eo '(backup|restore|delete)-[a-z0-9-]+' | tail -n 1; }

mysql_query() {
  # The password is expanded inside the pod, never on this machine's command line.
  # shellcheck disable=SC2016
  kubectl -n "$APP_NS" exec mysql-release-0 -c mariadb -- \
    sh -c 'MYSQL_PWD="$MARIADB_ROOT_PASSWORD" mariadb -u root -N -e "$1"' sh "$1"
}

need docker kind kubectl helm

log "building images (tag $TAG)"
for image in agent tools coordinator; do
  docker build -f "$ROOT/images/$image/Dockerfile" -t "kanister-$image:$TAG" \
    --build-arg VERSION="$TAG" --build-arg REVISION="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$ROOT"
done

if [ -z "${KANCTL:-}" ]; then
  log "building kanctl"
  (cd "$ROOT" && cargo build --release -p kanister-coordinator --bin kanctl)
  KANCTL=$ROOT/target/release/kanctl
fi

if ! grep -qx "$CLUSTER" <<<"$(kind get clusters)"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
  CREATED_CLUSTER=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
for image in agent tools coordinator; do
  kind load docker-image --name "$CLUSTER" "kanister-$image:$TAG"
done

log "S3 (MinIO) in namespace minio"
S3_KEY=e2e-$(random_secret | cut -c1-12)
S3_SECRET=$(random_secret)
kubectl create namespace minio --dry-run=client -o yaml | kubectl apply -f -
kubectl -n minio create secret generic minio-root \
  --from-literal=user="$S3_KEY" --from-literal=password="$S3_SECRET" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<EOF
apiVersion: apps/v1
kind: Deployment
metadata: {name: minio, namespace: minio}
spec:
  replicas: 1
  selector: {matchLabels: {app: minio}}
  template:
    metadata: {labels: {app: minio}}
    spec:
      containers:
      - name: minio
        image: $MINIO_IMAGE
        args: [server, /data]
        env:
        - {name: MINIO_ROOT_USER, valueFrom: {secretKeyRef: {name: minio-root, key: user}}}
        - {name: MINIO_ROOT_PASSWORD, valueFrom: {secretKeyRef: {name: minio-root, key: password}}}
        ports: [{containerPort: 9000}]
        readinessProbe: {httpGet: {path: /minio/health/ready, port: 9000}}
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: minio, namespace: minio}
spec:
  selector: {app: minio}
  ports: [{port: 9000, targetPort: 9000}]
EOF
kubectl -n minio rollout status deploy/minio --timeout=180s
kubectl -n minio delete job make-bucket --ignore-not-found
kubectl apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: make-bucket, namespace: minio}
spec:
  backoffLimit: 6
  template:
    spec:
      restartPolicy: OnFailure
      containers:
      - name: mc
        image: $MC_IMAGE
        command: [sh, -c, 'mc alias set s3 http://minio.minio:9000 "\$U" "\$P" && mc mb --ignore-existing s3/backups']
        env:
        - {name: U, valueFrom: {secretKeyRef: {name: minio-root, key: user}}}
        - {name: P, valueFrom: {secretKeyRef: {name: minio-root, key: password}}}
EOF
kubectl -n minio wait --for=condition=complete job/make-bucket --timeout=180s

log "the agent token, shared by the coordinator ($KANISTER_NS) and the sidecars ($APP_NS)"
AGENT_TOKEN=$(random_secret)
for ns in "$KANISTER_NS" "$APP_NS"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
  # From stdin: the token stays off every command line.
  printf '%s' "$AGENT_TOKEN" | kubectl -n "$ns" create secret generic kanister-agent-token \
    --from-file=token=/dev/stdin --dry-run=client -o yaml | kubectl apply -f -
done

log "the token kanctl sends to the coordinator's API"
API_TOKEN_FILE=$(mktemp)
random_secret >"$API_TOKEN_FILE"
kubectl -n "$KANISTER_NS" create secret generic kanister-coordinator-token --from-file=token="$API_TOKEN_FILE" \
  --dry-run=client -o yaml | kubectl apply -f -
export KANCTL_TOKEN_FILE=$API_TOKEN_FILE

log "installing the chart"
helm upgrade --install kanister "$ROOT/deploy/helm/kanister" \
  --namespace "$KANISTER_NS" --create-namespace \
  --set "targetNamespaces={$APP_NS}" \
  --set service.grpc.enabled=true \
  --set coordinator.image.repository=kanister-coordinator --set "coordinator.image.tag=$TAG" \
  --set coordinator.image.pullPolicy=Never \
  --set agent.image.repository=kanister-tools --set "agent.image.tag=$TAG" \
  --set agent.image.pullPolicy=Never \
  --wait --timeout 5m

log "MariaDB as the StatefulSet $APP_NS/mysql-release"
kubectl -n "$APP_NS" create secret generic mysql-release \
  --from-literal=mysql-root-password="$(random_secret)" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<EOF
apiVersion: v1
kind: Service
metadata: {name: mysql-release, namespace: $APP_NS, labels: {app.kubernetes.io/instance: mysql-release}}
spec:
  clusterIP: None
  selector: {app.kubernetes.io/instance: mysql-release}
  ports: [{name: mysql, port: 3306}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: mysql-release, namespace: $APP_NS, labels: {app.kubernetes.io/instance: mysql-release}}
spec:
  serviceName: mysql-release
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/instance: mysql-release}}
  template:
    metadata: {labels: {app.kubernetes.io/instance: mysql-release}}
    spec:
      containers:
      - name: mariadb
        image: $MARIADB_IMAGE
        env:
        - {name: MARIADB_ROOT_PASSWORD, valueFrom: {secretKeyRef: {name: mysql-release, key: mysql-root-password}}}
        ports: [{containerPort: 3306, name: mysql}]
        readinessProbe:
          exec: {command: [sh, -c, 'MYSQL_PWD="\$MARIADB_ROOT_PASSWORD" mariadb -u root -e "select 1"']}
          periodSeconds: 5
        volumeMounts: [{name: data, mountPath: /var/lib/mysql}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF

log "adding the agent sidecar from the chart's ConfigMap"
PATCH=$(mktemp)
kubectl -n "$KANISTER_NS" get configmap kanister-agent-sidecar -o jsonpath='{.data.patch\.yaml}' >"$PATCH"
kubectl -n "$APP_NS" patch statefulset mysql-release --patch-file "$PATCH"
rm -f "$PATCH"
kubectl -n "$APP_NS" rollout status statefulset/mysql-release --timeout=300s

log "loading rows"
mysql_query "CREATE DATABASE IF NOT EXISTS shop; CREATE TABLE IF NOT EXISTS shop.items (id INT PRIMARY KEY, name TEXT);
  REPLACE INTO shop.items VALUES (1,'apple'),(2,'pear'),(3,'plum');"
before=$(mysql_query "SELECT COUNT(*), GROUP_CONCAT(name ORDER BY id) FROM shop.items")

log "Profile (S3 credentials in a Secret) and Blueprint"
kubectl -n "$APP_NS" create secret generic s3-credentials \
  --from-literal=aws_access_key_id="$S3_KEY" --from-literal=aws_secret_access_key="$S3_SECRET" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<EOF
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {name: s3-profile, namespace: $APP_NS}
location: {type: s3Compliant, bucket: backups, endpoint: 'http://minio.minio:9000', prefix: kanister, region: us-east-1}
credential:
  type: keyPair
  keyPair:
    idField: aws_access_key_id
    secretField: aws_secret_access_key
    secret: {apiVersion: v1, kind: secret, name: s3-credentials, namespace: $APP_NS}
skipSSLVerify: false
EOF
kanctl validate profile s3-profile --namespace "$APP_NS"
kubectl apply -f "$ROOT/tests/e2e/mysql-blueprint.yaml"
kanctl validate blueprint mysql-blueprint --namespace "$KANISTER_NS"

log "backup"
backup=$(kanctl create actionset --action backup --namespace "$KANISTER_NS" --blueprint mysql-blueprint \
  --statefulset "$APP_NS/mysql-release" --profile "$APP_NS/s3-profile" \
  --secrets "mysql=$APP_NS/mysql-release" --options "toolsImage=kanister-tools:$TAG" | actionset_name)
[ -n "$backup" ] || die "kanctl printed no ActionSet name"
wait_actionset "$backup"
kubectl -n "$KANISTER_NS" get actionset
artifact=$(kubectl -n "$KANISTER_NS" get actionset "$backup" \
  -o jsonpath='{.status.actions[0].artifacts.mysqlCloudDump.keyValue.s3path}')
[ -n "$artifact" ] || die "the backup has no mysqlCloudDump artifact"

log "dropping the data"
mysql_query "DROP DATABASE shop;"

log "restore --from $backup"
restore=$(kanctl create actionset --action restore --namespace "$KANISTER_NS" --from "$backup" | actionset_name)
[ -n "$restore" ] || die "kanctl printed no ActionSet name"
wait_actionset "$restore"
after=$(mysql_query "SELECT COUNT(*), GROUP_CONCAT(name ORDER BY id) FROM shop.items")
[ "$before" = "$after" ] || die "restored rows differ: before '$before', after '$after'"
log "rows restored: $after"

log "delete --from $backup"
delete=$(kanctl create actionset --action delete --namespace "$KANISTER_NS" --from "$backup" | actionset_name)
[ -n "$delete" ] || die "kanctl printed no ActionSet name"
wait_actionset "$delete"

log "e2e passed"
