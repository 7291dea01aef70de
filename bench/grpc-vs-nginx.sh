#!/usr/bin/env bash
# hawser against nginx for unary gRPC calls over cleartext HTTP/2 (h2c): the same gRPC backend
# containers behind both, one worker each, measured in the same run with the runs interleaved
# so that drift on the machine hits both alike.
#
#   bench/grpc-vs-nginx.sh                                 # 3 rounds x 2 proxies x 10 s, ~1.5 min
#   DURATION=2 ROUNDS=1 WARMUP=1 bench/grpc-vs-nginx.sh    # quick look, ~25 s after the builds
#   CONNECTIONS=1 STREAMS=100 bench/grpc-vs-nginx.sh       # one client connection, 100 calls on it
#
# Goal, printed beside the figures: hawser >= 1.0x nginx's calls per second.
#
# What it does:
#   1. Builds the gRPC test backend (tests/support/grpc-backend: HTTP/2 with prior knowledge on
#      port 80; /hawser.test.Echo/Unary echoes its message, every answer carries x-backend:
#      NAME) into a FROM-scratch image and starts BACKENDS containers of it on a private Docker
#      network (one runtime thread each, its default), labelled for hawser with a run-unique
#      prefix: service `grpc`, host bench.test, scheme=h2c (hawser speaks HTTP/2 with prior
#      knowledge to them), healthcheck.type=grpc (the standard grpc.health.v1.Health/Check,
#      which the backend answers).
#   2. Starts, on free loopback ports:
#        hawser  pingora.threads=WORKERS, access_log off, its cleartext listener (h2c is on by
#                default), the containers found by Docker discovery;
#        nginx   worker_processes WORKERS, `listen ... http2` (h2c with prior knowledge),
#                `grpc_pass grpc://grpc` to an upstream of the container IPs with keepalive
#                (CONNECTIONS x STREAMS idle connections, at least 64: nginx sends one call per
#                upstream connection at a time, so fewer would reconnect under load) and
#                keepalive_requests 1000000 towards clients and upstream, the forwarding headers
#                hawser sets (X-Forwarded-For/-Proto/-Host), no access log.
#   3. Checks before measuring anything, for each proxy:
#        - a gRPC call by curl --http2-prior-knowledge reaches every backend (x-backend) with
#          HTTP 200 (this is also the wait until the proxy is ready);
#        - a real gRPC client (grpcio, the virtualenv's python) gets its MESSAGE_BYTES message
#          echoed with status OK (so the trailers came through), and its calls are answered by
#          every backend (the echoed names and the x-backend headers agree).
#   4. Warm-up (WARMUP s per proxy, h2load -D), which also measures each proxy's rate; then
#      ROUNDS rounds; each round runs the load against each proxy, their order alternating from
#      round to round:
#        h2load -t1 -c CONNECTIONS -m STREAMS -n CALLS -d frame.bin
#               -H 'content-type: application/grpc' -H 'te: trailers'
#               http://bench.test:PORT/hawser.test.Echo/Unary   (h2c, prior knowledge)
#      frame.bin is one gRPC message: the 5-byte prefix (uncompressed, length) and MESSAGE_BYTES
#      bytes. CALLS is the proxy's last rate (warm-up, then its previous run) x DURATION, so a
#      run lasts about DURATION s. A fixed count rather than -D, because with -D h2load drops
#      the calls still open when the time is up without counting them: a call that never ends
#      (a proxy that loses it) would go unnoticed, and every run would end by cancelling up to
#      CONNECTIONS x STREAMS calls, which hawser logs (two lines each) and counts. With -n every call
#      must end: one stuck makes the run time out (3 x DURATION + 30 s) and the script fail.
#      Every run must report CALLS calls done, 0 failed, errored or timed out, every answer 2xx,
#      and exactly one echoed message per call in DATA bytes: h2load cannot read grpc-status,
#      and a gRPC error comes as HTTP 200 without a message, so this catches it. Otherwise the
#      script prints h2load's output and the proxies' log lines of the run and exits 3 (the
#      warm-up checks the same, but for the calls it cuts off at its end).
#
# Figures, per proxy, aggregated over the rounds:
#   calls/s         sum of calls answered / sum of h2load's measured durations
#   p50, p99 ms     per-call latency (h2load's --log-file), median over the rounds
#   user, system µs the proxy's utime and stime (/proc/PID/stat, 1/CLK_TCK resolution) read just
#                   before and after each run, summed over rounds / sum of calls; nginx: master
#                   plus its workers; hawser: the one process (all threads). Neither h2load nor
#                   the backends are counted.
#   busy %          the proxy's CPU time / wall time of the runs (100 % = one core): a proxy well
#                   under WORKERS x 100 % was not the bottleneck (h2load, the backends or other
#                   work on the same cores was); the script says so under the table
#   vs nginx        hawser's calls/s, user, system and total CPU per call divided by nginx's
# stdout: the machine facts and the markdown table. stderr: context and one line per run ('#').
#
# Environment (defaults in brackets):
#   DURATION        seconds per measured run [10]
#   ROUNDS          rounds [3]
#   WARMUP          seconds of unmeasured load per proxy before round 1, >= 1 (it measures the
#                   rate that sets the measured runs' call count) [2]
#   CONNECTIONS     h2load client connections [8]
#   STREAMS         concurrent calls per connection (h2load -m), 1-128 (nginx's default
#                   http2_max_concurrent_streams) [16]
#   BACKENDS        backend containers [2]
#   MESSAGE_BYTES   size of the request message, echoed back [64]
#   WORKERS         nginx worker_processes = hawser pingora.threads [1]
#   READY_TIMEOUT   longest wait for a proxy to reach all backends, seconds [30]
#   HAWSER_BIN      use this hawser binary instead of `cargo build --release`
#   HAWSER_VENV     the Python virtualenv with grpcio [~/.cache/hawser-venv], made as .ci/run
#                   makes it: python3 -m venv DIR && DIR/bin/pip install -r .ci/python-requirements.txt
#   INSTALL         1: apt-get install missing tools instead of stopping [0]
#
# Tools: h2load (Debian nghttp2-client), curl, nginx (nginx-light, which has the grpc module),
# ps (procps), docker, cargo and rustc (hawser and the backend; cmake for hawser). A missing one
# stops the script, naming the package, before anything starts. System services are never
# touched: nginx runs as this script's own process.
#
# Bounded: every run has a fixed duration (and a timeout of DURATION + 30 s), every wait a
# deadline; traffic goes to loopback and to the containers this script starts. Everything it
# creates (processes, containers, network, image tag, temp dir) is removed on every exit,
# Ctrl-C and failure included; on a failure the proxies' last log lines are printed first.
# Exit status 0; 3 when a measured run saw a failed call; 1 on any other failure; 2 on a bad
# setting.
set -euo pipefail

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-8}
STREAMS=${STREAMS:-16}
BACKENDS=${BACKENDS:-2}
MESSAGE_BYTES=${MESSAGE_BYTES:-64}
WORKERS=${WORKERS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-30}
INSTALL=${INSTALL:-0}
VENV=${HAWSER_VENV:-$HOME/.cache/hawser-venv}
HOST_NAME=bench.test
METHOD=/hawser.test.Echo/Unary
PROXIES=(hawser nginx)
GOAL_CALLS=1.0 # hawser's calls per second at least this times nginx's

for v in DURATION ROUNDS WARMUP CONNECTIONS STREAMS BACKENDS MESSAGE_BYTES WORKERS READY_TIMEOUT INSTALL; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((DURATION >= 1 && ROUNDS >= 1 && WARMUP >= 1 && CONNECTIONS >= 1 && BACKENDS >= 1 && WORKERS >= 1)) \
    || { echo "$0: DURATION, ROUNDS, WARMUP, CONNECTIONS, BACKENDS and WORKERS must be >= 1" >&2; exit 2; }
# nginx refuses a client's stream beyond http2_max_concurrent_streams (128 by default).
((STREAMS >= 1 && STREAMS <= 128)) || { echo "$0: STREAMS must be 1 to 128, got $STREAMS" >&2; exit 2; }
# A message that the backend reads as a command ("name", "sleep:…") is never all 'x'; 4 MiB is
# gRPC's default largest message.
((MESSAGE_BYTES >= 1 && MESSAGE_BYTES <= 4194304)) \
    || { echo "$0: MESSAGE_BYTES must be 1 to 4194304, got $MESSAGE_BYTES" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

# --- cleanup ------------------------------------------------------------------------------
bench_names gvn
TMP=""
NET_CREATED=0
IMAGE_BUILT=0
declare -A PID=() # proxy -> pid of the process this script started
LOAD_PID=""

cleanup() {
    bench_cleanup_hawser_nginx $?
}
bench_traps

# --- prerequisites ------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin" # nginx lives in /usr/sbin
declare -A PACKAGE=([h2load]=nghttp2-client [curl]=curl [nginx]=nginx-light [ps]=procps)
tools=(h2load curl nginx ps)
need=()
for tool in "${tools[@]}"; do command -v "$tool" >/dev/null 2>&1 || need+=("${PACKAGE[$tool]}"); done
bench_build_needs
if ((${#need[@]})); then
    ((INSTALL)) || die "missing: ${need[*]} (Debian packages). Install them with" \
        "'apt-get install --no-install-recommends ${need[*]}', or run with INSTALL=1"
    bench_apt_install "${need[@]}"
fi
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian package ${PACKAGE[$tool]})"
done
command -v docker >/dev/null 2>&1 || die "docker not found (Debian package docker.io)"
command -v rustc >/dev/null 2>&1 || die "rustc not found (install Rust: https://rustup.rs)"
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"
PYTHON="$VENV/bin/python"
[[ -x $PYTHON ]] && "$PYTHON" -c 'import grpc' </dev/null >/dev/null 2>&1 \
    || die "no Python virtualenv with grpcio at $VENV (HAWSER_VENV): make it as .ci/run does:" \
        "python3 -m venv $VENV && $VENV/bin/pip install -r $REPO/.ci/python-requirements.txt"
docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 </dev/null || die "no Docker engine answers (docker info failed)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-gvn.XXXXXX")
machine_facts
note "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other heavy work skews every figure)"

# --- hawser binary, backends ----------------------------------------------------------------
bench_hawser_binary

BACKEND_KIND=grpc BACKEND_SERVICE=grpc bench_backends "host=$HOST_NAME" scheme=h2c healthcheck.type=grpc

# One gRPC request message as it goes on the wire: flag 0 (uncompressed), the length as 4 bytes
# big-endian, then MESSAGE_BYTES of 'x'.
FRAME="$TMP/frame.bin"
FRAME_BYTES=$((5 + MESSAGE_BYTES))
{
    printf '\0'
    printf "\\x$(printf %02x $((MESSAGE_BYTES >> 24 & 255)))\\x$(printf %02x $((MESSAGE_BYTES >> 16 & 255)))"
    printf "\\x$(printf %02x $((MESSAGE_BYTES >> 8 & 255)))\\x$(printf %02x $((MESSAGE_BYTES & 255)))"
    head -c "$MESSAGE_BYTES" /dev/zero | tr '\0' x
} >"$FRAME"
[[ $(stat -c %s "$FRAME") == "$FRAME_BYTES" ]] || die "the gRPC frame is $(stat -c %s "$FRAME") bytes, not $FRAME_BYTES"

# --- configurations -----------------------------------------------------------------------
declare -A PORT=()
free_port 'PORT[hawser]'
free_port 'PORT[nginx]'
free_port ADMIN_PORT

cat >"$TMP/hawser.yaml" <<EOF
listen: ["127.0.0.1:${PORT[hawser]}"]
admin: {listen: "127.0.0.1:$ADMIN_PORT"}
docker: {label_prefix: $PREFIX}
access_log: off
pingora: {threads: $WORKERS}
EOF

NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|^.*nginx/\([0-9.]*\).*$|\1|p')
version_at_least() { [[ $(printf '%s\n' "$1" "$NGINX_VERSION" | sort -V | head -n1) == "$1" ]]; }
KEEPALIVE=$((CONNECTIONS * STREAMS))
((KEEPALIVE >= 64)) || KEEPALIVE=64
NGX="$TMP/nginx"
mkdir -p "$NGX"
{
    bench_nginx_conf_head "$NGX" "$WORKERS" grpc "$KEEPALIVE"
    echo "    server {"
    # `http2 on;` replaced the listen parameter in nginx 1.25.1.
    if version_at_least 1.25.1; then
        echo "        listen 127.0.0.1:${PORT[nginx]};"
        echo "        http2 on;"
    else
        echo "        listen 127.0.0.1:${PORT[nginx]} http2;"
    fi
    echo "        location / {"
    echo "            grpc_pass grpc://grpc;"
    echo "            grpc_set_header X-Forwarded-For \$remote_addr;"
    echo "            grpc_set_header X-Forwarded-Proto \$scheme;"
    echo "            grpc_set_header X-Forwarded-Host \$http_host;"
    echo "        }"
    echo "    }"
    echo "}"
} >"$NGX/nginx.conf"

"$HAWSER" -t -c "$TMP/hawser.yaml" >"$TMP/hawser.log" 2>&1 </dev/null \
    || { cat "$TMP/hawser.log" >&2; die "hawser refused $TMP/hawser.yaml"; }
nginx -t -q -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" </dev/null >"$TMP/nginx-t.log" 2>&1 \
    || { cat "$TMP/nginx-t.log" >&2; die "nginx -t refused the generated configuration"; }

# --- start the proxies ----------------------------------------------------------------------
RUST_LOG=${RUST_LOG:-warn} "$HAWSER" -c "$TMP/hawser.yaml" >>"$TMP/hawser.log" 2>&1 </dev/null &
PID[hawser]=$!
nginx -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" -g 'daemon off;' >"$NGX/stdout.log" 2>&1 </dev/null &
PID[nginx]=$!

# Ready once a gRPC call through the proxy (curl, h2c with prior knowledge, the load's own
# frame) has come back 200 from every backend (x-backend).
GRPC_CURL=(--http2-prior-knowledge -X POST --data-binary "@$FRAME" -H "Host: $HOST_NAME"
    -H 'content-type: application/grpc' -H 'te: trailers')
for px in "${PROXIES[@]}"; do
    bench_wait_ready "$px" "http://127.0.0.1:${PORT[$px]}$METHOD" "${GRPC_CURL[@]}"
done

# What curl saw of one call through each proxy: HTTP/2, 200, application/grpc, grpc-status 0 in
# the trailers, and the message back byte for byte.
check_curl_call() { # proxy
    local head
    head=$(curl -sS --max-time 10 -D - -o "$TMP/curl.body" "${GRPC_CURL[@]}" \
        "http://127.0.0.1:${PORT[$1]}$METHOD" </dev/null 2>&1 | tr -d '\r') \
        || die "curl's gRPC call through $1 failed: $head"
    grep -q '^HTTP/2 200' <<<"$head" || die "curl's gRPC call through $1: not HTTP/2 200: $head"
    grep -qi '^content-type: application/grpc' <<<"$head" || die "curl's gRPC call through $1: no application/grpc: $head"
    grep -qi '^grpc-status: 0$' <<<"$head" || die "curl's gRPC call through $1: no grpc-status 0: $head"
    cmp -s "$TMP/curl.body" "$FRAME" || die "curl's gRPC call through $1: the message did not come back unchanged"
}

# A real gRPC client: the load's message echoed with status OK (grpcio reads grpc-status from
# the trailers: without them the call fails), and calls answered by every backend.
cat >"$TMP/grpc_check.py" <<'EOF'
import collections, sys
import grpc

addr, authority, size, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sorted(sys.argv[4].split(","))
ident = lambda b: b
channel = grpc.insecure_channel(addr, options=[("grpc.default_authority", authority), ("grpc.enable_http_proxy", 0)])
unary = channel.unary_unary("/hawser.test.Echo/Unary", request_serializer=ident, response_deserializer=ident)
try:
    msg = b"x" * size
    reply, call = unary.with_call(msg, timeout=10)
    if call.code() != grpc.StatusCode.OK or reply != msg:
        sys.exit(f"the echo came back as {call.code()} with {len(reply)} bytes, expected OK and {size}")
    seen = collections.Counter()
    for _ in range(10 * len(names)):
        reply, call = unary.with_call(b"name", timeout=10)
        header = dict(call.initial_metadata()).get("x-backend")
        if call.code() != grpc.StatusCode.OK or header != reply.decode():
            sys.exit(f"a call answered {reply!r} with x-backend {header!r} and {call.code()}")
        seen[reply.decode()] += 1
except grpc.RpcError as e:
    sys.exit(f"gRPC call failed: {e.code()} {e.details()!r}")
if sorted(seen) != names:
    sys.exit(f"calls answered by {dict(seen)}, expected every one of {names}")
print(f"echo of {size} bytes with status OK; {sum(seen.values())} calls answered by "
      + ", ".join(f"{n} {c}" for n, c in sorted(seen.items())))
EOF
for px in "${PROXIES[@]}"; do
    check_curl_call "$px"
    out=$(timeout -k 5 60 "$PYTHON" "$TMP/grpc_check.py" "127.0.0.1:${PORT[$px]}" "$HOST_NAME" "$MESSAGE_BYTES" \
        "$(IFS=,; echo "${NAMES[*]}")" </dev/null 2>&1) || die "grpcio through $px: $out"
    note "$px: curl call OK (HTTP/2 200, grpc-status 0, message echoed); grpcio: $out"
done

bench_nginx_pidset
proc_pids() { # proxy -> the pids whose CPU counts for it
    if [[ $1 == nginx ]]; then echo "$PIDSET_NGINX"; else echo "${PID[$1]}"; fi
}

# --- load -----------------------------------------------------------------------------------
# One h2load run against a proxy, for SECS seconds (-D) or CALLS calls (-n); sets REQS
# SECS_RUN P50 P99 BAD (lib.sh) and CHECK: empty when every call succeeded, else why not.
run_calls() { # proxy secs|calls N
    local px=$1 mode=$2 n=$3 out done ok2xx data cut limit
    local -a amount
    if [[ $mode == secs ]]; then
        amount=(-D"$n") limit=$((n + 30))
    else
        amount=(-n"$n") limit=$((3 * DURATION + 30))
    fi
    rm -f "$TMP/h2.log"
    run_load "h2load against $px (a failure after $limit s: calls that never ended)" \
        timeout -k 5 "$limit" h2load -t1 -c"$CONNECTIONS" -m"$STREAMS" "${amount[@]}" \
        -d "$FRAME" -H 'content-type: application/grpc' -H 'te: trailers' \
        --connect-to="127.0.0.1:${PORT[$px]}" --log-file="$TMP/h2.log" \
        "http://$HOST_NAME:${PORT[$px]}$METHOD"
    h2load_figures "$TMP/load.out" "$TMP/h2.log"
    out=$(cat "$TMP/load.out")
    # "requests: 123 total, 123 started, 123 done, 123 succeeded, 0 failed, 0 errored, 0 timeout"
    done=$(awk '/^requests:/ {print $6}' <<<"$out")
    ok2xx=$(awk '/^status codes:/ {print $3}' <<<"$out")
    # "traffic: 4.45MB (4662939) total, 1.17MB (1228800) headers (...), 2.93MB (3072000) data"
    data=$(sed -nE 's/^traffic:.* \(([0-9]+)\) data.*$/\1/p' <<<"$out")
    [[ $done =~ ^[0-9]+$ && $ok2xx =~ ^[0-9]+$ && $data =~ ^[0-9]+$ ]] || { echo "$out" >&2; die "cannot parse h2load's output"; }
    # h2load counts a status when the answer's head arrives, a call when its stream ends: the
    # calls still open when -D's time is up (at most -c x -m) can have a 2xx, and part of their
    # message, without being done. With -n there are none.
    cut=$((ok2xx - REQS))
    CHECK=""
    ((REQS > 0)) || CHECK+="no call answered; "
    ((BAD == 0)) || CHECK+="$BAD failed, errored, timed-out or non-2xx; "
    ((done == REQS)) || CHECK+="$done done but $REQS succeeded; "
    if [[ $mode == calls ]]; then
        ((REQS == n)) || CHECK+="$REQS calls succeeded of $n; "
        ((cut == 0)) || CHECK+="$ok2xx answers 2xx for $REQS calls; "
    else
        ((cut >= 0 && cut <= CONNECTIONS * STREAMS)) || CHECK+="$ok2xx answers 2xx for $REQS calls; "
    fi
    # A gRPC error is HTTP 200 too, without a message: count the messages. Every call done
    # brought its echo; the calls cut off may have brought theirs too.
    ((data >= REQS * FRAME_BYTES && data <= ok2xx * FRAME_BYTES)) \
        || CHECK+="$data bytes of DATA for $REQS calls, not one echoed message of $FRAME_BYTES bytes each; "
    CHECK=${CHECK%; }
}

# Log lines the proxies wrote since the marks (byte offsets) set by log_mark.
declare -A LOG_FILE=([hawser]="$TMP/hawser.log" [nginx]="$NGX/error.log") LOG_MARK=()
log_mark() { local px; for px in "${PROXIES[@]}"; do LOG_MARK[$px]=$(stat -c %s "${LOG_FILE[$px]}" 2>/dev/null || echo 0); done; }
log_since_mark() { tail -c +"$((${LOG_MARK[$1]} + 1))" "${LOG_FILE[$1]}" 2>/dev/null | grep -vE '^ +([0-9]+: | *at )' || true; }

HZ=$(getconf CLK_TCK)
note "nginx $NGINX_VERSION, $(h2load --version 2>/dev/null | head -n1), grpcio $("$PYTHON" -c 'import grpc; print(grpc.__version__)')"
note "workers/threads per proxy: $WORKERS; nginx pids (master workers): $PIDSET_NGINX; hawser pid ${PID[hawser]};" \
    "load: h2load -c$CONNECTIONS -m$STREAMS, ${MESSAGE_BYTES}-byte messages; nginx upstream keepalive $KEEPALIVE"

# --- runs -----------------------------------------------------------------------------------
declare -A R_REQS=() R_SECS=() R_USER=() R_SYS=() R_P50=() R_P99=()

measure() { # round proxy
    local round=$1 px=$2 u0 s0 u1 s1 pids other logged
    read -r -a pids <<<"$(proc_pids "$px")"
    log_mark
    read -r u0 s0 <<<"$(proc_cpu_ticks "${pids[@]}")"
    run_calls "$px" calls "$(calls_for "$px")"
    RATE[$px]=$(rate_of_last_run)
    read -r u1 s1 <<<"$(proc_cpu_ticks "${pids[@]}")"
    [[ $px != nginx || "$(nginx_pids)" == "$PIDSET_NGINX" ]] \
        || die "nginx's worker processes changed during the run (a worker died?)"
    R_REQS[$px]="${R_REQS[$px]:-} $REQS"
    R_SECS[$px]="${R_SECS[$px]:-} $SECS_RUN"
    R_USER[$px]="${R_USER[$px]:-} $((u1 - u0))"
    R_SYS[$px]="${R_SYS[$px]:-} $((s1 - s0))"
    R_P50[$px]="${R_P50[$px]:-} $P50"
    R_P99[$px]="${R_P99[$px]:-} $P99"
    logged=$(log_since_mark "$px" | grep -c . || true)
    awk -v r="$round" -v x="$px" -v n="$REQS" -v s="$SECS_RUN" -v u="$((u1 - u0))" -v sy="$((s1 - s0))" \
        -v hz="$HZ" -v a="$P50" -v b="$P99" -v l="$logged" 'BEGIN {
        printf "# round %d %-6s calls=%d secs=%.2f per_s=%.0f p50_ms=%.3f p99_ms=%.3f user_us=%.1f sys_us=%.1f busy=%.0f%% log_lines=%d\n",
            r, x, n, s, n / s, a, b, (n ? u / hz * 1e6 / n : 0), (n ? sy / hz * 1e6 / n : 0),
            (s ? (u + sy) / hz / s * 100 : 0), l }' >&2
    [[ -z $CHECK ]] && return 0
    echo "--- h2load against $px, round $round:" >&2
    grep -E '^(finished|requests|status codes|traffic):' "$TMP/load.out" >&2
    for other in "${PROXIES[@]}"; do
        echo "--- $other's log lines during the run (at most 40):" >&2
        log_since_mark "$other" | head -n 40 >&2
    done
    echo "ERROR: h2load against $px, round $round: $CHECK" >&2
    exit 3
}

rate_of_last_run() { awk -v n="$REQS" -v s="$SECS_RUN" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }'; }

# A measured run's call count: the proxy's last rate x DURATION, and at least a few calls per
# stream slot (h2load needs -n >= -c).
declare -A RATE=()
calls_for() { # proxy
    awk -v r="${RATE[$1]}" -v d="$DURATION" -v min=$((4 * CONNECTIONS * STREAMS)) \
        'BEGIN { n = int(r * d + 0.5); if (n < min) n = min; print n }'
}

t=$EPOCHREALTIME
for px in "${PROXIES[@]}"; do
    run_calls "$px" secs "$WARMUP"
    [[ -z $CHECK ]] || die "warm-up against $px: $CHECK"
    RATE[$px]=$(rate_of_last_run)
done
note "warm-up: ${WARMUP} s per proxy ($(secs_since "$t") s); calls per measured run to begin with:" \
    "hawser $(calls_for hawser), nginx $(calls_for nginx)"

# Proxy log lines written during the measured runs (warnings, errors), for the record. (The
# warm-up's end cuts off its open calls: hawser logs each of those.)
declare -A LOG_START=()
for px in "${PROXIES[@]}"; do LOG_START[$px]=$(stat -c %s "${LOG_FILE[$px]}" 2>/dev/null || echo 0); done

n=${#PROXIES[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    for ((k = 0; k < n; k++)); do measure "$round" "${PROXIES[$(((round - 1 + k) % n))]}"; done
done

# --- table ----------------------------------------------------------------------------------
# Prints "per_s p50 p99 user_us sys_us busy_pct" for a proxy.
aggregate() {
    awk -v reqs="${R_REQS[$1]}" -v secs="${R_SECS[$1]}" -v user="${R_USER[$1]}" -v sys="${R_SYS[$1]}" \
        -v p50="${R_P50[$1]}" -v p99="${R_P99[$1]}" -v hz="$HZ" "$BENCH_AWK_STATS"'
    BEGIN {
        r = sum(reqs); s = sum(secs); u = sum(user); y = sum(sys)
        printf "%.1f %.3f %.3f %.2f %.2f %.1f\n", (s ? r / s : 0), median(p50), median(p99),
            (r ? u / hz * 1e6 / r : 0), (r ? y / hz * 1e6 / r : 0), (s ? (u + y) / hz / s * 100 : 0) }'
}

print_table() {
    local px rps p50 p99 us sy busy base_rps base_us base_sy
    read -r base_rps _ _ base_us base_sy _ <<<"$(aggregate nginx)"
    echo "| proxy | calls/s | p50 ms | p99 ms | user µs/call | system µs/call | CPU µs/call | busy % | calls/s vs nginx | user vs nginx | system vs nginx | CPU vs nginx | goal |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for px in "${PROXIES[@]}"; do
        read -r rps p50 p99 us sy busy <<<"$(aggregate "$px")"
        awk -v px="$px" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v us="$us" -v sy="$sy" -v busy="$busy" \
            -v brps="$base_rps" -v bus="$base_us" -v bsy="$base_sy" -v g="$GOAL_CALLS" '
        function commas(n,   s) { s = sprintf("%d", n + 0.5); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); return s }
        function ratio(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "n/a" }
        BEGIN {
            rr = (brps > 0) ? rps / brps : 0
            goal = ""
            if (px == "hawser") goal = sprintf("calls/s ≥ %.1f× nginx: %s", g, (rr >= g ? "met" : "**not met**"))
            printf "| %s | %s | %.2f | %.2f | %.1f | %.1f | %.1f | %.0f | %s | %s | %s | %s | %s |\n",
                px, commas(rps), p50, p99, us, sy, us + sy, busy, ratio(rps, brps), ratio(us, bus),
                ratio(sy, bsy), ratio(us + sy, bus + bsy), goal }'
    done
}

echo
echo "Goal: hawser >= ${GOAL_CALLS}x nginx's calls per second (unary gRPC over h2c, one worker each)"
note "aggregated over $ROUNDS round(s) of ${DURATION} s: calls/s = sum calls / sum seconds, p50/p99 = median over rounds,"
note "user/system µs = the proxy's utime/stime summed over the runs / calls (nginx: master + $WORKERS worker(s))"
print_table

# A rate compares the proxies only when they were the bottleneck: h2load and the backends share
# the cores with them, and so does any other work on the machine.
idle=""
for px in "${PROXIES[@]}"; do
    read -r _ _ _ _ _ busy <<<"$(aggregate "$px")"
    awk -v b="$busy" -v w="$WORKERS" 'BEGIN { exit !(b < 90 * w) }' && idle+="${idle:+, }$px $(printf '%.0f' "$busy") %"
done
[[ -z $idle ]] || printf '\nNot saturated (busy under 90 %% of %d %%): %s. h2load, the backends or other work on the same cores set the pace: compare CPU µs, not rates.\n' \
    $((100 * WORKERS)) "$idle"

# What the proxies logged while under load (hawser at warn, nginx's error log at warn).
for px in "${PROXIES[@]}"; do
    lines=$(tail -c +"$((${LOG_START[$px]} + 1))" "${LOG_FILE[$px]}" 2>/dev/null | grep -vE '^ +([0-9]+: | *at )' || true)
    if [[ -z $lines ]]; then
        note "$px logged nothing during the measured runs"
    else
        note "$px logged $(wc -l <<<"$lines") line(s) during the measured runs; the first 10:"
        head -n 10 <<<"$lines" | sed 's/^/#   /' >&2
    fi
done
METRICS=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null) || true
errs=$(awk '/^hawser_(upstream_connect_errors_total|retries_total|backend_ejections_total)/ && $2 > 0 {
    printf "%s%s %s", sep, $1, $2; sep = ", " }' <<<"$METRICS")
note "hawser's upstream connect errors, retries and ejections over the whole run: ${errs:-none}"
# Calls a client gave up on (h2load's open calls at the end of the warm-up) are counted too.
answers=$(awk '/^hawser_requests_total\{/ && /service="grpc"/ { match($1, /class="[^"]*"/)
    printf "%s%s %s", sep, substr($1, RSTART + 7, RLENGTH - 8), $2; sep = ", " }' <<<"$METRICS")
note "hawser's answers by class over the whole run (checks and warm-up included): ${answers:-none}"
