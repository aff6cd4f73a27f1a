#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, two at a time, and prints each run's end.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets the stable toolchain take the
# sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
run() {
  cargo fuzz run -O "$1" -- -max_total_time="$secs" -rss_limit_mb=2048 > "target/fuzz-$1.log" 2>&1 \
    && echo "$1: no crash in ${secs}s: $(grep -E '^#[0-9]+.*(DONE|pulse)' "target/fuzz-$1.log" | tail -1)" \
    || { echo "$1: FAILED, see fuzz/target/fuzz-$1.log and fuzz/artifacts/$1/"; return 1; }
}
status=0
run config_parse & a=$!; run route_screen & b=$!
wait $a || status=1; wait $b || status=1
run upstream_answer & a=$!; run chunker & b=$!
wait $a || status=1; wait $b || status=1
exit $status
