#!/usr/bin/env bash
# The seed's story on this machine, without a cluster, on the embedded default (a local-disk
# Profile): a MariaDB "StatefulSet" mysql-test/mysql-release with its root password in the
# Secret mysql-test/mysql-release, the mysql blueprint of deploy/examples/, and the commands a
# user types: kanctl create profile, create actionset --action backup, watch, get, restore
# --from (after dropping the table: the rows come back), snapshots, a second backup (what
# deduplication saved), and the delete action.
#
# What runs, all on loopback and as ordinary processes: MariaDB (installed from Debian once),
# the agent sidecar of the database's pod (`kanister-agent serve`, as the Helm chart's sidecar
# patch adds it), and the coordinator in local mode (`kanister-coordinator serve --local`),
# which kanctl talks to exactly as to one in a cluster. Everything it started is stopped at
# the end, whatever happened.
#   QUICKSTART_DIR  (default ./target/quickstart) holds the database, the cluster's YAML and state,
#                   and the backups.
#   QUICKSTART_ROWS (default 5000) rows in the table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${QUICKSTART_DIR:-$ROOT/target/quickstart}
ROWS=${QUICKSTART_ROWS:-5000}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Shows a command as the user would type it, then runs it.
run() { printf '\033[2m$\033[0m %s\n' "$*"; "$@"; }
free_port() { # first free port from $1
  local p=$1
  while (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do p=$((p + 1)); done
  echo "$p"
}
wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "quickstart: $what did not come up (logs in $DIR/logs)" >&2
  return 1
}

if ! command -v mariadbd >/dev/null || ! command -v mariadb >/dev/null; then
  step "install MariaDB from Debian (once)"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mariadb-server mariadb-client
fi

step "build kanctl, the coordinator and the agent"
cargo build -q -p kanister-agent -p kanister-coordinator
export PATH="$ROOT/target/debug:$PATH"

rm -rf "$DIR" && mkdir -p "$DIR"/{mysql,cluster,logs,run}
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

step "start MariaDB (the database of StatefulSet mysql-test/mysql-release) with $ROWS rows"
DB_PORT=$(free_port 3306)
ROOT_PW="quickstart-$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=normal \
  --skip-test-db >"$DIR/logs/mariadb-init.log" 2>&1
mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" --port="$DB_PORT" \
  --bind-address=127.0.0.1 --user=root --skip-name-resolve --pid-file="$DIR/run/mariadbd.pid" \
  >"$DIR/logs/mariadb.log" 2>&1 &
PIDS+=($!)
wait_for "MariaDB" mariadb-admin --no-defaults -S "$DIR/run/mysqld.sock" -uroot ping
sql() { mariadb --no-defaults -S "$DIR/run/mysqld.sock" -uroot -N "$@"; }
# The password goes to the server through stdin, never a command line.
sql <<SQL
CREATE OR REPLACE USER 'root'@'127.0.0.1' IDENTIFIED BY '$ROOT_PW';
GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE shop;
USE shop;
CREATE TABLE shop.orders (id INT PRIMARY KEY, customer VARCHAR(64), amount DECIMAL(10,2), note TEXT);
INSERT INTO shop.orders SELECT seq, CONCAT('customer-', seq % 97), seq * 1.25, REPEAT(MD5(seq), 1 + seq % 5)
  FROM seq_1_to_$ROWS;
SQL
fingerprint() { sql -e "SELECT COUNT(*) FROM shop.orders; CHECKSUM TABLE shop.orders EXTENDED" | tr '\n\t' '  '; }
BEFORE=$(fingerprint)
echo "shop.orders: $BEFORE"

step "start the database pod's agent sidecar (kanister-agent serve, as the chart's sidecar patch adds it)"
AGENT_PORT=$(free_port 7433)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/run/agent-token"
kanister-agent serve --listen "127.0.0.1:$AGENT_PORT" --metrics-listen off --token-file "$DIR/run/agent-token" \
  >"$DIR/logs/agent.log" 2>&1 &
PIDS+=($!)
wait_for "the agent" bash -c "exec 3<>/dev/tcp/127.0.0.1/$AGENT_PORT"

step "describe the cluster's objects in YAML (what kubectl apply would create), and the mysql blueprint"
cat >"$DIR/cluster/mysql.yaml" <<YAML
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: mysql-release, namespace: mysql-test}
spec: {replicas: 1, selector: {matchLabels: {app: mysql-release}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: mysql-release-0
  namespace: mysql-test
  labels: {app: mysql-release}
  annotations: {kanister.io/agent-port: "$AGENT_PORT"}
spec: {containers: [{name: mysql, image: "mariadb:11"}, {name: kanister-agent, image: "kanister-tools"}]}
status: {podIP: 127.0.0.1}
YAML
# The Secret, as `kubectl create secret generic` would make it; its file is readable by you only.
( umask 077; printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: mysql-release, namespace: mysql-test}\nstringData: {mysql-root-password: "%s"}\n' \
    "$ROOT_PW" >"$DIR/cluster/mysql-secret.yaml" )
cp deploy/examples/mysql-blueprint.yaml "$DIR/cluster/"
ls "$DIR/cluster"

step "start the coordinator without a cluster (kanister-coordinator serve --local)"
API_PORT=$(free_port 7434)
HTTP_PORT=$(free_port 8000)
kanister-coordinator serve --local "$DIR/cluster" --api-listen "127.0.0.1:$API_PORT" \
  --listen "127.0.0.1:$HTTP_PORT" --agent-token-file "$DIR/run/agent-token" >"$DIR/logs/coordinator.log" 2>&1 &
PIDS+=($!)
wait_for "the coordinator" bash -c "exec 3<>/dev/tcp/127.0.0.1/$API_PORT"
export KANCTL_COORDINATOR="http://127.0.0.1:$API_PORT" KANCTL_TOKEN_FILE="$DIR/cluster/.kanister/token"
echo "export KANCTL_COORDINATOR=$KANCTL_COORDINATOR KANCTL_TOKEN_FILE=$KANCTL_TOKEN_FILE"
OPTS=()
[ "$DB_PORT" = 3306 ] || OPTS=(--options "port=$DB_PORT")

step "a Profile: where the backups go (a local directory, the embedded default)"
run kanctl create profile local --path "$DIR/backups" --namespace mysql-test --name local-profile

created() { sed -n 's/^actionset \([^ ]*\) created$/\1/p'; }
step "back up"
OUT=$(run kanctl create actionset --action backup --namespace kanister --blueprint mysql-blueprint \
  --statefulset mysql-test/mysql-release --profile mysql-test/local-profile \
  --secrets mysql=mysql-test/mysql-release "${OPTS[@]}")
echo "$OUT"
BACKUP=$(echo "$OUT" | created)
run kanctl watch -n kanister "$BACKUP"
run kanctl get actionsets -n kanister

step "lose the data"
printf '\033[2m$\033[0m %s\n' "mariadb -e 'DROP TABLE shop.orders'"
sql -e "DROP TABLE shop.orders"

step "restore from the backup"
OUT=$(run kanctl create actionset --action restore --namespace kanister --from "$BACKUP" "${OPTS[@]}")
echo "$OUT"
RESTORE=$(echo "$OUT" | created)
run kanctl watch -n kanister "$RESTORE"
AFTER=$(fingerprint)
echo "shop.orders: $AFTER"
if [ "$AFTER" != "$BEFORE" ]; then
  echo "quickstart: the restored rows DIFFER from the backed-up ones" >&2
  exit 1
fi
echo "the rows came back: identical to the backup"

step "a second backup after a few changes: only what changed is stored"
sql -e "UPDATE shop.orders SET amount = amount + 1 WHERE id % 100 = 0"
OUT=$(run kanctl create actionset --action backup --namespace kanister --blueprint mysql-blueprint \
  --statefulset mysql-test/mysql-release --profile mysql-test/local-profile \
  --secrets mysql=mysql-test/mysql-release "${OPTS[@]}")
echo "$OUT"
SECOND=$(echo "$OUT" | created)
run kanctl watch -n kanister "$SECOND"
run kanctl snapshots --profile mysql-test/local-profile
du -sh "$DIR/backups"

step "delete the first backup"
OUT=$(run kanctl create actionset --action delete --namespace kanister --from "$BACKUP")
echo "$OUT"
DELETE=$(echo "$OUT" | created)
run kanctl watch -n kanister "$DELETE"
run kanctl get actionsets -n kanister
run kanctl snapshots --profile mysql-test/local-profile
for a in "$BACKUP" "$RESTORE" "$SECOND" "$DELETE"; do
  # Whole output first: grep -q stops reading at its match, and kanctl would see a broken pipe.
  state=$(kanctl get actionsets -n kanister "$a" -o json)
  grep -q '"state": *"complete"' <<<"$state" || {
    echo "quickstart: ActionSet $a did not complete" >&2
    kanctl describe actionset -n kanister "$a" >&2 || true
    exit 1
  }
done
step "done: every ActionSet complete, the restored rows identical"
