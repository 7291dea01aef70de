#!/usr/bin/env bash
# hawser against nginx and HAProxy (issue 5): the same N backend containers behind each proxy,
# the same worker/thread count, the same client, interleaved so that drift hits all alike.
#
#   bench/proxy-vs-nginx.sh                                # 3 rounds x 10 s x 3 proxies, ~2 min
#                                                          # (+1 min with BENCH_H2=1)
#   BENCH_SECONDS=3 BENCH_ROUNDS=1 bench/proxy-vs-nginx.sh # quick look, ~20 s after the build
#   BENCH_WORKERS=2 BENCH_H2=1 bench/proxy-vs-nginx.sh
#
# What it does:
#   1. Builds the test backend (tests/support/backend.rs, std-only, keep-alive; `GET /` answers
#      200 with its name as the body) as a static binary into a FROM-scratch image and starts
#      BENCH_BACKENDS containers of it on a private Docker network, labelled for hawser with a
#      run-unique label prefix (PREFIX.enable=true, PREFIX.host=bench.test, PREFIX.service=app).
#      Their IPs (docker inspect) go into the nginx and HAProxy configurations.
#   2. Starts, each on free loopback ports, with BENCH_WORKERS workers/threads:
#        hawser   target/release/hawser (cargo build --release, or HAWSER_BIN), pingora.threads=W,
#                 access_log off, its Docker discovery finds the containers by the label prefix;
#        nginx    `nginx -p TMP -c nginx.conf -e error.log -g 'daemon off;'`, worker_processes W,
#                 upstream of the N addresses with `keepalive 64`, proxy_http_version 1.1,
#                 Connection "", access_log off, keepalive_requests 1000000 both towards the
#                 clients and the upstream (nginx's default, 1000, closes a client connection
#                 after 1000 requests: wrk reconnects at a cost hawser and HAProxy do not pay,
#                 and h2load does not reconnect at all, which capped nginx/h2c at exactly
#                 1000 x connections requests);
#        HAProxy  `haproxy -f cfg -db`, nbthread W, roundrobin over the N servers,
#                 option http-keep-alive, http-reuse always, no logging.
#      All three do the same header work hawser does: Host passed unchanged, X-Forwarded-For
#      (client address), X-Forwarded-Proto and X-Forwarded-Host set. Each proxy must answer 200
#      through to every one of the N backends (X-Backend header) before anything is measured.
#   3. Warm-up (BENCH_WARMUP s of the same load per proxy, not counted), then BENCH_ROUNDS
#      rounds; each round drives every proxy once with
#        wrk -t1 -c$BENCH_CONNECTIONS -d$BENCH_SECONDS --latency -H 'Host: bench.test'
#      in an order rotated every round (hawser nginx haproxy, nginx haproxy hawser, ...).
#
# Figures, per proxy, aggregated over the rounds:
#   req/s           sum of requests / sum of wrk's measured durations
#   p50_ms, p99_ms  from wrk's --latency distribution: the MEDIAN over rounds of each round's value
#   cpu_us_per_req  proxy utime+stime (/proc/PID/stat, 1/CLK_TCK resolution) read just before and
#                   just after each run, summed over rounds / sum of requests; user_us and sys_us
#                   are its two parts (system-call cost differs about 2x between machines, so
#                   compare ratios measured in one run). nginx: master plus
#                   all its worker processes (its children); hawser, HAProxy: the one process (all
#                   threads). The client (wrk) and the backends are not counted.
#   peak_rss_mb     VmHWM from /proc/PID/status at the end (peak over the process's whole life,
#                   warm-up and every run included). nginx: the SUM over master and workers (pages
#                   shared between them are counted once per process, so this overstates nginx
#                   somewhat for W > 1).
#   rps_vs_nginx, cpu_vs_nginx   the proxy's req/s and cpu_us_per_req divided by nginx's.
# stdout: the table only. stderr: context and one raw line per run, all starting with '#'.
#
# HTTP/2 (BENCH_H2=1, needs h2load from nghttp2-client): cleartext h2c with prior knowledge,
# measured only on proxies whose listener speaks it: nginx (`listen ... http2` on a second
# port) and HAProxy (`bind ... proto h2` on a second port); hawser is probed on its listener
# (h2load -n1) and measured only if it answers (h2c is on unless its config says `h2c: false`;
# a hawser without it gets a row saying n/a). Load: h2load -t1 -c$BENCH_CONNECTIONS -m$BENCH_H2_STREAMS -D$BENCH_SECONDS, in
# the same rounds after the HTTP/1.1 runs; p50/p99 are computed from h2load's per-request log
# (h2load itself prints no percentiles). A second table follows the first on stdout, with rows
# `hawser/h2c`, `nginx/h2c`, `haproxy/h2c` and ratios to nginx/h2c.
#
# Environment (defaults in brackets):
#   BENCH_BACKENDS        backend containers [3]
#   BENCH_WORKERS         nginx worker_processes = HAProxy nbthread = hawser pingora.threads [1]
#   BENCH_HAWSER_PINGORA  more keys for hawser's pingora section, e.g. 'work_stealing: false' []
#   BENCH_CONNECTIONS     client connections [32]
#   BENCH_SECONDS         seconds per run [10]
#   BENCH_ROUNDS          rounds [3]
#   BENCH_WARMUP          seconds of unmeasured load per proxy before round 1 (0: none) [1]
#   BENCH_H2              1: also HTTP/2 cleartext with h2load [0]
#   BENCH_H2_STREAMS      h2load -m (concurrent streams per connection) [1]
#   BENCH_READY_TIMEOUT   longest wait for a proxy to reach all backends, seconds [30]
#   HAWSER_BIN            use this hawser binary instead of `cargo build --release`
#
# Missing tools are installed with apt-get (sudo -n when not root): wrk, curl, nginx-light (or
# nginx), haproxy, nghttp2-client (with BENCH_H2=1), and what the builds need. System services
# are not touched: if installing the nginx or haproxy package starts a system service (Debian
# does, on port 80, unless policy-rc.d forbids it), it is left running as it is; this script
# only runs its own processes on free loopback ports and stops exactly those.
#
# Bounded: every run has a fixed duration and every wait a deadline; traffic goes to loopback
# and the containers this script starts. Everything it creates (processes, containers, network,
# image tag, temp dir) is removed on every exit, Ctrl-C and failure included; on a failure the
# proxies' last log lines are printed and hawser's log is kept (its path is printed). Exit
# status 0; 3 when a measured run saw non-2xx answers or socket errors; 1 on any other failure.
set -euo pipefail

BACKENDS=${BENCH_BACKENDS:-3}
WORKERS=${BENCH_WORKERS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
WARMUP=${BENCH_WARMUP:-1}
H2=${BENCH_H2:-0}
H2_STREAMS=${BENCH_H2_STREAMS:-1}
READY_TIMEOUT=${BENCH_READY_TIMEOUT:-30}
HOST_HEADER=bench.test
PROXIES=(hawser nginx haproxy)

for v in BACKENDS WORKERS CONNECTIONS SECS ROUNDS WARMUP H2 H2_STREAMS READY_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: BENCH_$v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((BACKENDS >= 1 && WORKERS >= 1 && CONNECTIONS >= 1 && SECS >= 1 && ROUNDS >= 1 && H2_STREAMS >= 1)) \
    || { echo "$0: BENCH_BACKENDS, _WORKERS, _CONNECTIONS, _SECONDS, _ROUNDS, _H2_STREAMS must be >= 1" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # note, die, ms_since, secs_since, free_port, bench_* (see there)

# --- cleanup ------------------------------------------------------------------------------
bench_names pvn
TMP=""
NET_CREATED=0
IMAGE_BUILT=0
declare -A PID=()                # proxy -> pid of the process this script started
LOAD_PID=""


cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n "$LOAD_PID" ]] && stop_pid "$LOAD_PID" TERM 2
    local workers=""
    # nginx's workers are the master's children; remember them in case the master must be killed.
    [[ -n "${PID[nginx]:-}" ]] && workers=$(ps -o pid= --ppid "${PID[nginx]}" 2>/dev/null)
    # SIGINT: pingora's fast shutdown; nginx and HAProxy stop at once on TERM.
    [[ -n "${PID[hawser]:-}" ]] && stop_pid "${PID[hawser]}" INT 10
    [[ -n "${PID[nginx]:-}" ]] && stop_pid "${PID[nginx]}" TERM 5
    for w in $workers; do kill -0 "$w" 2>/dev/null && kill -KILL "$w" 2>/dev/null; done
    [[ -n "${PID[haproxy]:-}" ]] && stop_pid "${PID[haproxy]}" TERM 5
    bench_remove_docker
    if ((rc == 1)) && [[ -n "$TMP" ]]; then
        local f
        for f in "$TMP"/hawser.log "$TMP"/nginx/error.log "$TMP"/haproxy.log; do
            [[ -s "$f" ]] || continue
            echo "--- last 20 lines of ${f#"$TMP"/} (backtrace frames left out):" >&2
            grep -vE '^ +([0-9]+: | *at )' "$f" | tail -n 20 >&2
        done
    fi
    if ((rc == 1)) && [[ -s "$TMP/hawser.log" ]]; then
        cp "$TMP/hawser.log" "${TMPDIR:-/tmp}/hawser-pvn-${RUN_ID}.log" \
            && note "hawser log kept: ${TMPDIR:-/tmp}/hawser-pvn-${RUN_ID}.log"
    fi
    [[ -n "$TMP" ]] && rm -rf "$TMP"
    note "total runtime $(secs_since "$T_START") s, exit code $rc"
    exit "$rc"
}
bench_traps

# --- prerequisites ------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin" # nginx and haproxy live in /usr/sbin
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v ps >/dev/null 2>&1 || need+=(procps)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
NGINX_PKG=""
command -v nginx >/dev/null 2>&1 || NGINX_PKG=nginx-light
if ((H2)) && ! command -v h2load >/dev/null 2>&1; then need+=(nghttp2-client); fi
bench_build_needs
if ((${#need[@]})) || [[ -n "$NGINX_PKG" ]]; then
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
    export DEBIAN_FRONTEND=noninteractive
    note "installing: ${need[*]} $NGINX_PKG (system services the packages may start are left alone)"
    "${SUDO[@]}" apt-get update -q </dev/null >&2 || die "apt-get update failed"
    if [[ -n "$NGINX_PKG" ]] && ! apt-cache show nginx-light >/dev/null 2>&1; then NGINX_PKG=nginx; fi
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need[@]}" $NGINX_PKG </dev/null >&2 \
        || die "apt-get install ${need[*]} $NGINX_PKG failed"
fi
for tool in wrk curl ps nginx haproxy docker rustc; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
if ((H2)) && ! command -v h2load >/dev/null 2>&1; then die "h2load not found (nghttp2-client)"; fi
docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 </dev/null || die "no Docker engine answers (docker info failed)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-pvn.XXXXXX")
note "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other heavy work skews every figure)"

# --- hawser binary ------------------------------------------------------------------------
bench_hawser_binary

# --- backends -----------------------------------------------------------------------------
bench_backends "host=${HOST_HEADER}"

# --- ports --------------------------------------------------------------------------------
# Ports below the kernel's ephemeral range (which outgoing connections, e.g. the proxies' own
# upstream connections, take from), not in use by any TCP socket.
declare -A PORT=() H2PORT=()
free_port 'PORT[hawser]'
free_port ADMIN_PORT
free_port 'PORT[nginx]'
free_port 'PORT[haproxy]'
if ((H2)); then
    H2PORT[hawser]=${PORT[hawser]} # probed; pingora would serve h2c on the same listener
    free_port 'H2PORT[nginx]'
    free_port 'H2PORT[haproxy]'
fi

# --- configurations -----------------------------------------------------------------------
cat >"$TMP/hawser.yaml" <<EOF
listen: ["127.0.0.1:${PORT[hawser]}"]
admin: {listen: "127.0.0.1:$ADMIN_PORT"}
docker: {label_prefix: $PREFIX}
access_log: off
pingora: {threads: $WORKERS${BENCH_HAWSER_PINGORA:+, $BENCH_HAWSER_PINGORA}}
EOF

NGX="$TMP/nginx"
mkdir -p "$NGX"
{
    bench_nginx_conf_head "$NGX" "$WORKERS" app 64
    echo "    server {"
    echo "        listen 127.0.0.1:${PORT[nginx]};"
    ((H2)) && echo "        listen 127.0.0.1:${H2PORT[nginx]} http2;"
    echo "        location / {"
    echo "            proxy_pass http://app;"
    echo "            proxy_http_version 1.1;"
    echo "            proxy_set_header Connection \"\";"
    echo "            proxy_set_header Host \$http_host;"
    echo "            proxy_set_header X-Forwarded-For \$remote_addr;"
    echo "            proxy_set_header X-Forwarded-Proto \$scheme;"
    echo "            proxy_set_header X-Forwarded-Host \$http_host;"
    echo "        }"
    echo "    }"
    echo "}"
} >"$NGX/nginx.conf"

# HAProxy refuses to start when maxconn needs more file descriptors than it may open.
FD_LIMIT=$(ulimit -Hn)
[[ $FD_LIMIT =~ ^[0-9]+$ ]] || FD_LIMIT=1048576 # "unlimited"
MAXCONN=$(((FD_LIMIT - 200) / 2))
((MAXCONN <= 4096)) || MAXCONN=4096
((MAXCONN >= CONNECTIONS + 16)) || die "the file descriptor limit ($FD_LIMIT) is too low for $CONNECTIONS connections"
{
    echo "global"
    echo "    nbthread $WORKERS"
    echo "    maxconn $MAXCONN"
    echo "defaults"
    echo "    mode http"
    echo "    option http-keep-alive"
    echo "    http-reuse always"
    echo "    timeout connect 1s"
    echo "    timeout client 60s"
    echo "    timeout server 60s"
    echo "frontend fe"
    echo "    bind 127.0.0.1:${PORT[haproxy]}"
    ((H2)) && echo "    bind 127.0.0.1:${H2PORT[haproxy]} proto h2"
    echo "    option forwardfor"
    echo "    http-request set-header X-Forwarded-Proto http"
    echo "    http-request set-header X-Forwarded-Host %[req.hdr(host)]"
    echo "    default_backend app"
    echo "backend app"
    echo "    balance roundrobin"
    i=0
    for ip in "${IPS[@]}"; do i=$((i + 1)); echo "    server b$i $ip:80"; done
} >"$TMP/haproxy.cfg"

"$HAWSER" -t -c "$TMP/hawser.yaml" >"$TMP/hawser.log" 2>&1 </dev/null || die "hawser refused $TMP/hawser.yaml"
nginx -t -q -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" </dev/null >"$TMP/nginx-t.log" 2>&1 \
    || { cat "$TMP/nginx-t.log" >&2; die "nginx -t refused the generated configuration"; }
haproxy -c -q -f "$TMP/haproxy.cfg" </dev/null >"$TMP/haproxy-c.log" 2>&1 \
    || { cat "$TMP/haproxy-c.log" >&2; die "haproxy -c refused the generated configuration"; }

# --- start the proxies ----------------------------------------------------------------------
RUST_LOG=${RUST_LOG:-warn} "$HAWSER" -c "$TMP/hawser.yaml" >>"$TMP/hawser.log" 2>&1 </dev/null &
PID[hawser]=$!
nginx -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/error.log" -g 'daemon off;' >"$NGX/stdout.log" 2>&1 </dev/null &
PID[nginx]=$!
haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 </dev/null &
PID[haproxy]=$!

for px in "${PROXIES[@]}"; do bench_wait_ready "$px" "http://127.0.0.1:${PORT[$px]}/" -H "Host: $HOST_HEADER"; done

bench_nginx_pidset
proc_pids() { # proxy -> the pids whose CPU/RSS count for it
    if [[ $1 == nginx ]]; then echo "$PIDSET_NGINX"; else echo "${PID[$1]}"; fi
}
cpu_ticks() { # pids... -> "utime stime", each summed over the pids, in clock ticks
    proc_cpu_ticks "$@"
}
hwm_kb() { # pids... -> sum of VmHWM in kB
    local p sum=0 s
    for p in "$@"; do
        s=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null) || s=0
        sum=$((sum + ${s:-0}))
    done
    echo "$sum"
}

note "nginx $(nginx -v 2>&1 | sed 's/.*version: //'), $(haproxy -v 2>/dev/null | head -n1 | awk '{print "HAProxy", $3}'), $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')"
note "workers/threads per proxy: $WORKERS; nginx pids (master workers): $PIDSET_NGINX; hawser pid ${PID[hawser]}; haproxy pid ${PID[haproxy]}"

# --- h2c probe ------------------------------------------------------------------------------
H2_PROXIES=()
declare -A H2_OK=()
if ((H2)); then
    for px in "${PROXIES[@]}"; do
        out=$(timeout 5 h2load -n1 -c1 -t1 -H ":authority: $HOST_HEADER" \
            "http://127.0.0.1:${H2PORT[$px]}/" 2>&1 </dev/null) || true
        if grep -qE '^requests: 1 total, 1 started, 1 done, 1 succeeded' <<<"$out" \
            && grep -qE '^status codes: 1 2xx' <<<"$out"; then
            H2_OK[$px]=1
            H2_PROXIES+=("$px")
            note "$px answers h2c on 127.0.0.1:${H2PORT[$px]}"
        else
            note "$px: no h2c on its listener (h2load -n1 did not get a 2xx): left out of the HTTP/2 runs"
        fi
    done
fi

# --- runs -----------------------------------------------------------------------------------
# Results per key "proto:proxy": space-separated per-round values.
declare -A R_REQS=() R_SECS=() R_UTICKS=() R_STICKS=() R_P50=() R_P99=()
BAD_RUNS=0
HZ=$(getconf CLK_TCK)

# One wrk run; sets REQS SECS_RUN P50 P99 BAD (non-2xx + socket errors).
run_wrk() { # proxy seconds
    run_load "wrk against $1" wrk -t1 -c"$CONNECTIONS" -d"${2}s" --latency -H "Host: $HOST_HEADER" \
        "http://127.0.0.1:${PORT[$1]}/"
    wrk_figures "$TMP/load.out"
}

# One h2load run; sets the same variables. p50/p99 from the per-request log (3rd column: µs).
run_h2load() { # proxy seconds
    local log="$TMP/h2.log"
    rm -f "$log"
    run_load "h2load against $1" timeout $(($2 + 30)) h2load -t1 -c"$CONNECTIONS" -m"$H2_STREAMS" -D"$2" \
        -H ":authority: $HOST_HEADER" --log-file="$log" "http://127.0.0.1:${H2PORT[$1]}/"
    h2load_figures "$TMP/load.out" "$log"
}

measure() { # proto round proxy
    local proto=$1 round=$2 px=$3 u0 s0 u1 s1 key pids
    pids=$(proc_pids "$px")
    read -r u0 s0 <<<"$(cpu_ticks $pids)"
    if [[ $proto == h1 ]]; then run_wrk "$px" "$SECS"; else run_h2load "$px" "$SECS"; fi
    read -r u1 s1 <<<"$(cpu_ticks $pids)"
    [[ $px != nginx || "$(nginx_pids)" == "$PIDSET_NGINX" ]] \
        || die "nginx's worker processes changed during the run (a worker died?)"
    key="$proto:$px"
    R_REQS[$key]="${R_REQS[$key]:-} $REQS"
    R_SECS[$key]="${R_SECS[$key]:-} $SECS_RUN"
    R_UTICKS[$key]="${R_UTICKS[$key]:-} $((u1 - u0))"
    R_STICKS[$key]="${R_STICKS[$key]:-} $((s1 - s0))"
    R_P50[$key]="${R_P50[$key]:-} $P50"
    R_P99[$key]="${R_P99[$key]:-} $P99"
    awk -v r="$round" -v p="$proto" -v x="$px" -v n="$REQS" -v s="$SECS_RUN" -v u="$((u1 - u0))" -v k="$((s1 - s0))" \
        -v hz="$HZ" -v a="$P50" -v b="$P99" -v bad="$BAD" 'BEGIN {
        printf "# round %d %s %-8s requests=%d secs=%.2f req/s=%.0f p50_ms=%.3f p99_ms=%.3f user_us_per_req=%.1f sys_us_per_req=%.1f bad=%d\n",
            r, p, x, n, s, n / s, a, b, (n ? u / hz * 1e6 / n : 0), (n ? k / hz * 1e6 / n : 0), bad }' >&2
    if ((BAD)); then
        note "WARNING: $proto $px round $round: $BAD non-2xx answers or socket errors"
        BAD_RUNS=$((BAD_RUNS + 1))
    fi
}

if ((WARMUP)); then
    t=$EPOCHREALTIME
    for px in "${PROXIES[@]}"; do run_wrk "$px" "$WARMUP"; done
    for px in "${H2_PROXIES[@]}"; do run_h2load "$px" "$WARMUP"; done
    note "warm-up: ${WARMUP} s per proxy and protocol ($(secs_since "$t") s)"
fi

n=${#PROXIES[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    order=()
    for ((k = 0; k < n; k++)); do order+=("${PROXIES[$(((round - 1 + k) % n))]}"); done
    for px in "${order[@]}"; do measure h1 "$round" "$px"; done
    for px in "${order[@]}"; do
        if [[ -n "${H2_OK[$px]:-}" ]]; then measure h2 "$round" "$px"; fi
    done
done

# --- table ----------------------------------------------------------------------------------
declare -A RSS_KB=()
for px in "${PROXIES[@]}"; do RSS_KB[$px]=$(hwm_kb $(proc_pids "$px")); done

# Prints "rps p50 p99 cpu_us user_us sys_us" for a key (medians of the per-round latencies).
aggregate() {
    awk -v reqs="${R_REQS[$1]}" -v secs="${R_SECS[$1]}" -v uticks="${R_UTICKS[$1]}" -v sticks="${R_STICKS[$1]}" \
        -v p50="${R_P50[$1]}" -v p99="${R_P99[$1]}" -v hz="$HZ" "$BENCH_AWK_STATS"'
    BEGIN {
        r = sum(reqs); s = sum(secs); u = sum(uticks); k = sum(sticks)
        printf "%.1f %.3f %.3f %.2f %.2f %.2f\n", (s ? r / s : 0), median(p50), median(p99),
            (r ? (u + k) / hz * 1e6 / r : 0), (r ? u / hz * 1e6 / r : 0), (r ? k / hz * 1e6 / r : 0) }'
}

print_table() { # proto suffix
    local proto=$1 sfx=$2 px key base_rps="" base_cpu="" rps p50 p99 cpu user sys
    if [[ -n "${R_REQS[$proto:nginx]:-}" ]]; then read -r base_rps _ _ base_cpu _ _ <<<"$(aggregate "$proto:nginx")"; fi
    printf '%-12s %9s %8s %8s %15s %8s %8s %12s %13s %13s\n' \
        proxy req/s p50_ms p99_ms cpu_us_per_req user_us sys_us peak_rss_mb rps_vs_nginx cpu_vs_nginx
    for px in "${PROXIES[@]}"; do
        key="$proto:$px"
        if [[ -z "${R_REQS[$key]:-}" ]]; then
            printf '%-12s %9s %8s %8s %15s %8s %8s %12s %13s %13s\n' "$px$sfx" n/a - - - - - - - -
            continue
        fi
        read -r rps p50 p99 cpu user sys <<<"$(aggregate "$key")"
        awk -v px="$px$sfx" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v cpu="$cpu" -v user="$user" -v sys="$sys" -v rss="${RSS_KB[$px]}" \
            -v brps="$base_rps" -v bcpu="$base_cpu" 'BEGIN {
            rr = (brps + 0 > 0) ? sprintf("%.3f", rps / brps) : "-"
            cr = (bcpu + 0 > 0) ? sprintf("%.3f", cpu / bcpu) : "-"
            printf "%-12s %9.0f %8.3f %8.3f %15.1f %8.1f %8.1f %12.1f %13s %13s\n", px, rps, p50, p99, cpu, user, sys, rss / 1024, rr, cr }'
    done
}

note "aggregated over $ROUNDS round(s) of ${SECS} s: req/s = sum requests / sum seconds, p50/p99 = median over rounds,"
note "cpu = sum utime+stime / sum requests (nginx: master + $WORKERS worker(s)), peak RSS = VmHWM (nginx: sum over master + workers)"
print_table h1 ""
if ((H2)); then
    echo
    print_table h2 "/h2c"
fi

if ((BAD_RUNS)); then
    note "$BAD_RUNS measured run(s) saw non-2xx answers or socket errors (see WARNING lines)"
    exit 3
fi
