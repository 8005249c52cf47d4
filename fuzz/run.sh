#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for MINUTES each, one after another, and
# records each run in fuzz/runs.tsv: UTC start, target, seconds, executions, corpus inputs,
# crash files. Usage: fuzz/run.sh [MINUTES] [TARGET...]   (default 10 minutes, all targets)
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Corpora live in fuzz/corpus/<target> (not committed), seeded
# from fuzz/core/examples/seeds.rs when empty; crashes land in
# fuzz/<project>/artifacts/<target>/ and make the script exit 1 after every target ran.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
MINUTES="${1:-10}"
shift || true
export CARGO_TARGET_DIR="${BASALT_FUZZ_TARGET_DIR:-$HOME/.cache/basalt/fuzz-target}"

declare -A PROJECT=(
  [segment_reader]=core [ndjson]=core [csv]=core [parquet]=core [json_row]=core
  [metastore_state]=core [table_spec]=core [upsert_snapshot]=core [pg_params]=pg
)
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(segment_reader ndjson csv parquet json_row metastore_state table_spec upsert_snapshot pg_params)
fi

mkdir -p corpus
if [ ! -d corpus/segment_reader ]; then
  echo "writing seed corpora"
  cargo +nightly run --quiet --manifest-path core/Cargo.toml --example seeds -- corpus || exit 1
fi

[ -f runs.tsv ] || printf 'start_utc\ttarget\tseconds\texecutions\tcorpus\tcrashes\n' >runs.tsv
failed=0
for t in "${TARGETS[@]}"; do
  p="${PROJECT[$t]:-}"
  if [ -z "$p" ]; then
    echo "unknown target $t" >&2
    exit 2
  fi
  mkdir -p "corpus/$t"
  start=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  log="$CARGO_TARGET_DIR/fuzz-$t.log"
  mkdir -p "$CARGO_TARGET_DIR"
  echo "fuzzing $t for $MINUTES min (log: $log)"
  cargo +nightly fuzz run --fuzz-dir "$p" -O "$t" "corpus/$t" -- \
    -max_total_time=$((MINUTES * 60)) -rss_limit_mb=3072 -timeout=30 -print_final_stats=1 \
    >"$log" 2>&1
  rc=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  secs=$(grep -o 'stat::total_time_in_seconds *\(\w*\): *[0-9]*\|Done [0-9]* runs in [0-9]* second' "$log" \
    | grep -o '[0-9]* second\|[0-9]*$' | grep -o '[0-9]*' | tail -1)
  crashes=$(find "$p/artifacts/$t" -type f 2>/dev/null | wc -l)
  inputs=$(find "corpus/$t" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$start" "$t" "${secs:-?}" "${execs:-?}" "$inputs" "$crashes" >>runs.tsv
  if [ $rc -ne 0 ]; then
    echo "$t: fuzzer exited $rc; see $log and $p/artifacts/$t" >&2
    failed=1
  fi
done
column -t -s $'\t' runs.tsv | tail -n $((${#TARGETS[@]} + 1))
exit $failed
