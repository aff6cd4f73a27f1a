#!/usr/bin/env bash
# Instructions the gateway spends per proxied GET, counted by callgrind (user space only, so the
# count repeats from run to run whatever else the machine does).
#   bench/profile/passthrough-instructions.sh [BIN]  (BIN defaults to target/release/chunkgate)
#   TOP=1 ...                                        also lists the functions that cost the most
# Needs valgrind and wrk (Debian). Warms the gateway up, zeroes the counters, runs wrk for 6 s
# (1 thread, 4 connections), and divides.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/chunkgate}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
export CHUNKGATE_LOG__FILTER=warn
CHUNKGATE_SIM__LIMITS__HOURLY_LIMIT=100000000 CHUNKGATE_SIM__LIMITS__BURST_LIMIT=100000000 \
  "$root/target/release/chunkgate" sim --listen 127.0.0.1:0 --storage digest > "$work/sim.out" &
until grep -q http "$work/sim.out" 2>/dev/null; do sleep 0.1; done
sim=$(awk '{print $NF}' "$work/sim.out")
CHUNKGATE_SERVER__LISTEN=127.0.0.1:0 CHUNKGATE_ADMIN__LISTEN=127.0.0.1:0 CHUNKGATE_UPSTREAM__BASE_URL=$sim \
CHUNKGATE_UPSTREAM__ALLOW_PLAIN_HTTP=true CHUNKGATE_RATE_LIMIT__ENABLED=false \
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.out.%p" "$bin" serve > "$work/gw.out" 2> /dev/null &
gw=$!
until grep -q http "$work/gw.out" 2>/dev/null; do sleep 0.2; done
id=$(curl -sS -X POST -H "Authorization: Bearer b" -H "Content-Type: application/json" -d '{"data":"aGVsbG8="}' \
  "$sim/restapi/v2.1/accounts/1234567/chunked_uploads" | python3 -c "import sys, json; print(json.load(sys.stdin)['chunkedUploadId'])")
target=$(head -1 "$work/gw.out" | awk '{print $NF}')/restapi/v2.1/accounts/1234567/chunked_uploads/$id
wrk -t1 -c4 -d2s -H "Authorization: Bearer bench" "$target" > /dev/null
callgrind_control -z "$gw" > /dev/null
requests=$(wrk -t1 -c4 -d6s -H "Authorization: Bearer bench" "$target" | awk '/requests in/ {print $1}')
callgrind_control -d "$gw" > /dev/null
sleep 1
dump=$(ls -S "$work"/cg.out."$gw".* | head -1)
total=$(callgrind_annotate "$dump" 2> /dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "requests $requests, instructions $total, per request $((total / requests))"
if [ -n "${TOP:-}" ]; then
  callgrind_annotate --auto=no --threshold=100 "$dump" 2> /dev/null | grep -v 'clone.S\|start_thread\|tokio-1' | sed -n 20,45p | cut -c1-160
fi
