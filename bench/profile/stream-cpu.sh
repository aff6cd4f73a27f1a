#!/usr/bin/env bash
# Gateway CPU per GiB streamed, and optionally where it goes.
#   bench/profile/stream-cpu.sh [BIN] [ROUNDS]      (BIN defaults to target/release/chunkgate)
#   PERF=1 bench/profile/stream-cpu.sh               also samples the gateway with perf and prints
#                                                    the top symbols (perf from Debian's linux-perf);
#                                                    PERF=sim samples the simulator instead.
#   PERF_LINES=N, PERF_REPORT_ARGS="-G --symbol-filter=SYM" widen the report or show callers.
# Starts the simulator (digest mode) and a gateway on loopback, streams ROUNDS (default 3) uploads of
# a 1 GiB random file with curl, and prints the gateway's and the simulator's CPU seconds per GiB
# (from /proc, user + system). Compare two builds by running it on each binary in turn.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${1:-$root/target/release/chunkgate}
rounds=${2:-3}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
head -c $((1 << 30)) /dev/urandom > "$work/doc.bin"
export CHUNKGATE_LOG__FILTER=warn
CHUNKGATE_SIM__LIMITS__MAX_PARTS=256 CHUNKGATE_SIM__LIMITS__MAX_TOTAL_SIZE=$((5 << 30)) \
CHUNKGATE_SIM__LIMITS__MAX_REQUEST_DATA=$((64 << 20)) CHUNKGATE_SIM__LIMITS__QUOTA_BYTES=$((1 << 40)) \
CHUNKGATE_SIM__LIMITS__QUOTA_UPLOADS=100000 CHUNKGATE_SIM__LIMITS__HOURLY_LIMIT=100000000 \
CHUNKGATE_SIM__LIMITS__BURST_LIMIT=100000000 \
  "$bin" sim --listen 127.0.0.1:0 --storage digest > "$work/sim.out" &
sim=$!
until grep -q http "$work/sim.out" 2>/dev/null; do sleep 0.1; done
CHUNKGATE_SERVER__LISTEN=127.0.0.1:0 CHUNKGATE_ADMIN__LISTEN=127.0.0.1:0 \
CHUNKGATE_UPSTREAM__BASE_URL=$(awk '{print $NF}' "$work/sim.out") CHUNKGATE_UPSTREAM__ALLOW_PLAIN_HTTP=true \
CHUNKGATE_UPLOAD__PART_SIZE=$((16 << 20)) CHUNKGATE_UPLOAD__MAX_PART_BYTES=$((64 << 20)) \
CHUNKGATE_UPLOAD__ASSUMED_MAX_PARTS=256 CHUNKGATE_UPLOAD__MAX_DOCUMENT_BYTES=$((5 << 30)) \
CHUNKGATE_RATE_LIMIT__ENABLED=false CHUNKGATE_QUOTA__BYTES_PER_MEMBER=$((1 << 40)) CHUNKGATE_QUOTA__UPLOADS_PER_MEMBER=100000 \
  "$bin" serve > "$work/gw.out" &
gw=$!
until grep -q http "$work/gw.out" 2>/dev/null; do sleep 0.1; done
url=$(head -1 "$work/gw.out" | awk '{print $NF}')/restapi/v2.1/accounts/1234567/chunked_uploads
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
if [ -n "${PERF:-}" ]; then
  perf record -g -e cpu-clock -F 1999 -o "$work/perf.data" -p "$([ "${PERF:-}" = sim ] && echo "$sim" || echo "$gw")" 2> /dev/null &
  perf_pid=$!
  sleep 0.3
fi
g0=$(ticks "$gw"); s0=$(ticks "$sim")
for _ in $(seq "$rounds"); do
  curl -sS -o /dev/null -w "%{http_code} %{speed_upload} B/s\n" -X POST -H "Authorization: Bearer bench" \
    -H "Content-Type: application/octet-stream" -T "$work/doc.bin" "$url"
done
g1=$(ticks "$gw"); s1=$(ticks "$sim")
awk -v g="$((g1 - g0))" -v s="$((s1 - s0))" -v hz="$hz" -v n="$rounds" \
  'BEGIN { printf "gateway CPU s per GiB: %.2f\nsimulator CPU s per GiB: %.2f\n", g / hz / n, s / hz / n }'
if [ -n "${PERF:-}" ]; then
  kill -INT "$perf_pid"; wait "$perf_pid" 2> /dev/null || true
  perf report -i "$work/perf.data" --stdio --no-children --sort dso,sym ${PERF_REPORT_ARGS:--g none} 2> /dev/null | grep '%' | head -${PERF_LINES:-20}
fi
