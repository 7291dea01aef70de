#!/usr/bin/env bash
# Slowloris against hawser: N connections that send half a request head and stall, while wrk
# sends normal load. Prints, for the normal load without and with the attack: requests/s, p99
# latency and hawser's user and system CPU per request; then how many stalled connections
# hawser closed at its header timeout (and when), and hawser's memory per held connection.
#
#   bench/slowloris.sh                      # 2000 stalled connections, 10 s header timeout, ~1 min
#   STALLED=5000 HEADER_TIMEOUT=20 bench/slowloris.sh
#
# Goals (issue 10): p99 under attack <= 2x the baseline; every stalled connection closed at
# its timeout; RSS growth <= 10 KB per held connection.
#
# Bounded: loopback and the one container it starts; wrk runs a fixed time, the stalling
# client gives up HEADER_TIMEOUT + 15 s after it connected; everything is removed on exit.
set -euo pipefail

STALLED=${STALLED:-2000}
HEADER_TIMEOUT=${HEADER_TIMEOUT:-10}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
CONNECTIONS=${CONNECTIONS:-32}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
bench_names slowloris
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-slowloris.XXXXXX")
NET_CREATED=0
IMAGE_BUILT=0
HAWSER_PID=""
HOLDER_PID=""

cleanup() {
    set +e
    [[ -z "$HOLDER_PID" ]] || stop_pid "$HOLDER_PID" TERM 2
    [[ -z "$HAWSER_PID" ]] || stop_pid "$HAWSER_PID" INT 5
    bench_remove_docker
    rm -rf "$TMP"
}
bench_traps

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
bench_build_needs
bench_apt_install "${need[@]}"
bench_hawser_binary
bench_backend_image

# The stalling client needs a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) > STALLED + 64)) || die "ulimit -n is $(ulimit -n): too low for $STALLED connections"

docker run -d --label "${RUN_LABEL}=${RUN_ID}" --label "${PREFIX}.enable=true" --label "${PREFIX}.host=bench.test" \
    -e NAME=b1 "$IMAGE" >/dev/null
free_port PORT
free_port ADMIN
cat >"$TMP/hawser.yaml" <<EOF
listen: ["127.0.0.1:$PORT"]
admin: {listen: "127.0.0.1:$ADMIN"}
docker: {label_prefix: $PREFIX}
clients: {header_timeout: ${HEADER_TIMEOUT}s}
pingora: {threads: 1}
EOF
RUST_LOG=warn "$HAWSER" -c "$TMP/hawser.yaml" >"$TMP/hawser.log" 2>&1 </dev/null &
HAWSER_PID=$!
for _ in $(seq 200); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://127.0.0.1:$PORT/") == 200 ]] && break
    sleep 0.05
done
[[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://127.0.0.1:$PORT/") == 200 ]] \
    || { cat "$TMP/hawser.log" >&2; die "hawser never routed the backend"; }
note "hawser pid $HAWSER_PID on 127.0.0.1:$PORT, one worker thread, header_timeout ${HEADER_TIMEOUT}s"

metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$HAWSER_PID/status"; }
cpu_ticks() { awk '{print $14, $15}' "/proc/$HAWSER_PID/stat"; }

# One wrk run: prints "req/s p99_ms user_us_per_req sys_us_per_req requests".
load() {
    local before after out reqs
    before=$(cpu_ticks)
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency -H 'Host: bench.test' "http://127.0.0.1:$PORT/" 2>&1)
    after=$(cpu_ticks)
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v b="$before" -v a="$after" -v r="$reqs" -v hz="$(getconf CLK_TCK)" '
        /Requests\/sec/ {rps = $2}
        $1 == "99%" {p = $2; if (p ~ /us$/) {sub(/us/, "", p); p /= 1000} else if (p ~ /ms$/) {sub(/ms/, "", p)} else if (p ~ /s$/) {sub(/s/, "", p); p *= 1000}}
        END {
            split(b, B, " "); split(a, A, " ")
            printf "%s %.2f %.1f %.1f %s\n", rps, p, (A[1] - B[1]) / hz * 1e6 / r, (A[2] - B[2]) / hz * 1e6 / r, r
        }' <<<"$out"
}

note "baseline: wrk -t1 -c$CONNECTIONS for ${SECONDS_PER_RUN}s"
load >/dev/null # warm-up: pools, allocator
read -r base_rps base_p99 base_user base_sys base_reqs < <(load)
rss_before=$(rss_kb)

# The attack: STALLED connections, each sends half a head once and then nothing. The holder
# reports when every one is open, then how long after its own connect each one was closed.
cat >"$TMP/holder.py" <<'EOF'
import selectors, socket, sys, time, json
n, port, give_up = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
opened = {}
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: slowloris\r\nX-Pending: ")
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    opened[s] = time.monotonic()
print("open", flush=True)
closed, answered = [], 0
deadline = time.monotonic() + give_up
while opened and time.monotonic() < deadline:
    for key, _ in sel.select(timeout=0.5):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if data:
            answered += 1
        sel.unregister(s)
        closed.append(time.monotonic() - opened.pop(s))
        s.close()
closed.sort()
q = lambda f: closed[min(len(closed) - 1, int(f * len(closed)))] if closed else float("nan")
print(json.dumps({"closed": len(closed), "still_open": len(opened), "answered": answered,
                  "min": q(0), "p50": q(0.5), "max": closed[-1] if closed else float("nan")}), flush=True)
EOF
note "attack: $STALLED connections with half a request head"
python3 "$TMP/holder.py" "$STALLED" "$PORT" "$((HEADER_TIMEOUT + 15))" >"$TMP/holder.out" 2>"$TMP/holder.err" &
HOLDER_PID=$!
attack_start=$EPOCHREALTIME
for _ in $(seq 600); do
    grep -q '^open' "$TMP/holder.out" 2>/dev/null && break
    kill -0 "$HOLDER_PID" 2>/dev/null || { cat "$TMP/holder.err" >&2; die "the stalling client failed"; }
    sleep 0.05
done
grep -q '^open' "$TMP/holder.out" || die "the stalling client did not open its connections"
held=$(metric hawser_client_connections)
rss_held=$(rss_kb)
note "$STALLED stalled connections open after $(secs_since "$attack_start") s; hawser holds $held client connections"
read -r att_rps att_p99 att_user att_sys att_reqs < <(load)
wait "$HOLDER_PID" || true
HOLDER_PID=""
result=$(tail -n 1 "$TMP/holder.out")
closed_metric=$(metric 'hawser_client_connections_closed_total{reason="header_timeout"}')

printf '\n| load | req/s | p99 ms | user µs/req | system µs/req | requests |\n|---|---|---|---|---|---|\n'
printf '| baseline | %s | %s | %s | %s | %s |\n' "$base_rps" "$base_p99" "$base_user" "$base_sys" "$base_reqs"
printf '| under attack (%s stalled) | %s | %s | %s | %s | %s |\n' "$STALLED" "$att_rps" "$att_p99" "$att_user" "$att_sys" "$att_reqs"
python3 - "$result" "$STALLED" "$HEADER_TIMEOUT" "$rss_before" "$rss_held" "$held" "$closed_metric" "$base_p99" "$att_p99" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
n, timeout = int(sys.argv[2]), float(sys.argv[3])
rss_before, rss_held, held = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6] or 0)
closed_metric, base, att = sys.argv[7], float(sys.argv[8]), float(sys.argv[9])
print()
print(f"p99 under attack / baseline: {att / base:.2f} (goal <= 2)")
print(f"stalled connections closed by hawser: {r['closed']} of {n} (hawser_client_connections_closed_total{{reason=\"header_timeout\"}} = {closed_metric}); "
      f"still open when the client gave up: {r['still_open']}; answered with bytes: {r['answered']}")
print(f"closed after (s, from each connect): min {r['min']:.2f}, median {r['p50']:.2f}, max {r['max']:.2f} (header_timeout {timeout:g} s)")
print(f"hawser RSS: {rss_before} KiB before, {rss_held} KiB holding {held} connections: {(rss_held - rss_before) / max(held, 1):.2f} KiB per held connection (goal <= 10 KB)")
EOF
