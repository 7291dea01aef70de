#!/usr/bin/env bash
# hawser against nginx over TLS (issue 11): the same ECDSA P-256 certificate and the same
# backend containers behind both, one worker each, measured in the same run with the runs
# interleaved so that drift on the machine hits both alike.
#
#   bench/tls-vs-nginx.sh                        # 3 rounds x 2 loads x 2 proxies x 5 s, ~1.5 min
#   DURATION=3 ROUNDS=1 bench/tls-vs-nginx.sh    # quick look, ~30 s after the build
#   H2=1 bench/tls-vs-nginx.sh                   # also HTTP/2 over TLS (h2load), +30 s
#
# Goals (issue 11), printed beside the figures: hawser >= 1.0x nginx's full handshakes per
# second; hawser's CPU per HTTPS request (HTTP/1.1 keep-alive) <= 1.2x nginx's.
#
# What it does:
#   1. Makes a self-signed ECDSA P-256 certificate for bench.test (openssl req -x509). Builds
#      the test backend (tests/support/backend.rs: `GET /` answers 200 with X-Backend: NAME) into
#      a FROM-scratch image and starts BACKENDS containers of it on a private Docker network.
#   2. Starts, on free loopback ports:
#        hawser  pingora.threads=WORKERS, access_log off, a TLS listener serving the
#                certificate (also as its default certificate: wrk sends the IP it dialled as
#                SNI, and an IP names no certificate), and a YAML service `app` for bench.test
#                with `tls: true` that the containers join by label (run-unique prefix);
#        nginx   worker_processes WORKERS, ssl_protocols TLSv1.2 TLSv1.3, the same certificate,
#                http2 on the TLS listener, an upstream of the container IPs with keepalive 64,
#                keepalive_requests 1000000 towards clients and upstream (as proxy-vs-nginx.sh),
#                the forwarding headers hawser sets (X-Forwarded-For/-Proto/-Host), no access log.
#      Session resumption is left at each proxy's default (both issue tickets); the handshake
#      client below never offers a session, so it is not exercised.
#   3. Checks before measuring anything: each proxy answers 200 over HTTPS from every backend,
#      to curl verifying the certificate for bench.test; `openssl s_client` sees the same
#      certificate (SHA-256 fingerprint) from both, with SNI bench.test and with SNI 127.0.0.1
#      (what wrk sends); and the handshake client makes full handshakes (below).
#   4. Warm-up (WARMUP s per proxy and load), then ROUNDS rounds; each round runs every load
#      against every proxy, the proxies' order alternating from round to round:
#        handshakes  hey -z DURATION -c CONNECTIONS -disable-keepalive: one new TCP connection
#                    and one full TLS handshake (TLS 1.3, X25519, ECDSA P-256) per request, each
#                    request proxied to a backend;
#        keep-alive  wrk -t1 -c CONNECTIONS -d DURATION over https, HTTP/1.1 (the primary figure);
#        h2          (H2=1) h2load -t1 -c CONNECTIONS -m1 -D DURATION, ALPN h2.
#
# Why hey for the handshakes: it is Go's TLS client, which resumes a session only when it is
# given a session cache, and hey gives it none; so every connection is a full handshake. wrk and
# h2load were tried with `Connection: close` and both resume: they keep the OpenSSL SSL object
# across reconnections (wrk's SSL_clear, h2load's SSL object kept after a clean shutdown) and
# offer the previous session, so 196 of 200 h2load and 683 of 687 wrk handshakes with nginx were
# resumptions ($ssl_session_reused; OpenSSL 3.0, wrk 4.1, h2load 1.52). `openssl s_time -new`
# makes full handshakes but sends no SNI and no Host, and never looks at the answer. This is
# checked on every run, not assumed: before measuring, hey connects to a second nginx listener
# (same certificate, same proxying, an access log with $ssl_session_reused) and the script
# stops if any of those handshakes was a resumption.
#
# Figures, per load and proxy, aggregated over the rounds:
#   per second      handshakes/s (= requests/s: one request per connection) or requests/s:
#                   sum of answers / sum of the client's measured durations
#   p50, p99 ms     client latency, median over the rounds (hey: connect + handshake + request)
#   user, system µs the proxy's utime and stime (/proc/PID/stat, 1/CLK_TCK resolution) read just
#                   before and after each run, summed over rounds / sum of answers; nginx: master
#                   plus its workers. Neither the clients nor the backends are counted.
#   busy %          the proxy's CPU time / wall time of the runs (100 % = one core): a proxy well
#                   under WORKERS x 100 % was not the bottleneck (the client or other work on
#                   the same cores was), and its rate says more about them than about it; the
#                   script says so under the table
#   vs nginx        hawser's per-second and CPU (user + system) divided by nginx's
#   failed          answers other than 2xx plus client errors; any makes the exit status 3
# stdout: the machine facts and the markdown table. stderr: context and one line per run ('#').
#
# Environment (defaults in brackets):
#   DURATION        seconds per measured run [5]
#   ROUNDS          rounds [3]
#   CONNECTIONS     client connections (hey workers, wrk and h2load connections) [32]
#   WARMUP          seconds of unmeasured load per proxy and load before round 1 (0: none) [1]
#   BACKENDS        backend containers [3]
#   WORKERS         nginx worker_processes = hawser pingora.threads [1]
#   H2              1: also HTTP/2 over TLS with h2load [0]
#   READY_TIMEOUT   longest wait for a proxy to reach all backends, seconds [30]
#   HAWSER_BIN      use this hawser binary instead of `cargo build --release`
#   INSTALL         1: apt-get install missing tools instead of stopping [0]
#
# Tools: hey (Debian package hey), wrk (wrk), curl (curl), openssl (openssl), nginx
# (nginx-light), ps (procps), h2load (nghttp2-client, with H2=1), docker and rustc; cargo and
# cmake to build hawser. A missing one stops the script, naming the package, before anything
# starts. System services are never touched: nginx runs as this script's own process.
#
# Bounded: every run has a fixed duration (and a timeout of DURATION + 30 s), every wait a
# deadline; traffic goes to loopback and to the containers this script starts. Everything it
# creates (processes, containers, network, image tag, temp dir with the key) is removed on every
# exit, Ctrl-C and failure included; on a failure the proxies' last log lines are printed first.
# Exit status 0; 3 when a measured run saw a non-2xx answer or a client error; 1 on any other
# failure; 2 on a bad setting.
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-1}
BACKENDS=${BACKENDS:-3}
WORKERS=${WORKERS:-1}
H2=${H2:-0}
READY_TIMEOUT=${READY_TIMEOUT:-30}
INSTALL=${INSTALL:-0}
HOST_NAME=bench.test
PROXIES=(hawser nginx)
# The goals of issue 11.
GOAL_HANDSHAKES=1.0 # hawser's handshakes/s at least this times nginx's
GOAL_CPU=1.2        # hawser's CPU per HTTPS keep-alive request at most this times nginx's

for v in DURATION ROUNDS CONNECTIONS WARMUP BACKENDS WORKERS H2 READY_TIMEOUT INSTALL; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((DURATION >= 1 && ROUNDS >= 1 && CONNECTIONS >= 1 && BACKENDS >= 1 && WORKERS >= 1)) \
    || { echo "$0: DURATION, ROUNDS, CONNECTIONS, BACKENDS and WORKERS must be >= 1" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"

# --- cleanup ------------------------------------------------------------------------------
bench_names tvn
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
declare -A PACKAGE=([hey]=hey [wrk]=wrk [curl]=curl [openssl]=openssl [nginx]=nginx-light
    [ps]=procps [h2load]=nghttp2-client)
tools=(hey wrk curl openssl nginx ps)
((H2)) && tools+=(h2load)
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
docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 </dev/null || die "no Docker engine answers (docker info failed)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-tvn.XXXXXX")
machine_facts
note "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other heavy work skews every figure)"

# --- hawser binary, backends, certificate --------------------------------------------------
bench_hawser_binary

# No host label: the YAML service `app` owns bench.test, and the containers join it by name.
bench_backends

CERT="$TMP/cert.pem"
KEY="$TMP/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=$HOST_NAME" -addext "subjectAltName=DNS:$HOST_NAME" \
    -keyout "$KEY" -out "$CERT" </dev/null >"$TMP/openssl.log" 2>&1 \
    || { cat "$TMP/openssl.log" >&2; die "openssl req could not make the test certificate"; }
FINGERPRINT=$(openssl x509 -in "$CERT" -noout -fingerprint -sha256 | sed 's/^.*=//')
note "certificate: ECDSA P-256, self-signed for $HOST_NAME, SHA-256 $FINGERPRINT"

# --- configurations -----------------------------------------------------------------------
declare -A PORT=()
free_port 'PORT[hawser]'
free_port 'PORT[nginx]'
free_port HTTP_PORT  # hawser's cleartext listener, not measured
free_port ADMIN_PORT
free_port PROBE_PORT # nginx's listener with an access log, for the resumption check

cat >"$TMP/hawser.yaml" <<EOF
listen: ["127.0.0.1:$HTTP_PORT"]
admin: {listen: "127.0.0.1:$ADMIN_PORT"}
docker: {label_prefix: $PREFIX}
access_log: off
pingora: {threads: $WORKERS}
tls:
  listen: ["127.0.0.1:${PORT[hawser]}"]
  certificates: [{cert: "$CERT", key: "$KEY"}]
  default_certificate: {cert: "$CERT", key: "$KEY"}
services:
  app:
    hosts: [$HOST_NAME]
    tls: true
EOF

NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's|^.*nginx/\([0-9.]*\).*$|\1|p')
version_at_least() { [[ $(printf '%s\n' "$1" "$NGINX_VERSION" | sort -V | head -n1) == "$1" ]]; }
NGX="$TMP/nginx"
mkdir -p "$NGX"
ngx_proxy() {
    echo "        location / {"
    echo "            proxy_pass http://app;"
    echo "            proxy_http_version 1.1;"
    echo "            proxy_set_header Connection \"\";"
    echo "            proxy_set_header Host \$http_host;"
    echo "            proxy_set_header X-Forwarded-For \$remote_addr;"
    echo "            proxy_set_header X-Forwarded-Proto \$scheme;"
    echo "            proxy_set_header X-Forwarded-Host \$http_host;"
    echo "        }"
}
{
    bench_nginx_conf_head "$NGX" "$WORKERS" app 64
    echo "    ssl_protocols TLSv1.2 TLSv1.3;"
    echo "    ssl_certificate $CERT;"
    echo "    ssl_certificate_key $KEY;"
    # \$ssl_curve appeared in nginx 1.21.5.
    if version_at_least 1.21.5; then
        echo "    log_format probe '\$ssl_protocol \$ssl_session_reused \$status \$ssl_server_name \$ssl_cipher \$ssl_curve';"
    else
        echo "    log_format probe '\$ssl_protocol \$ssl_session_reused \$status \$ssl_server_name \$ssl_cipher';"
    fi
    echo "    server {"
    # `http2 on;` replaced the listen parameter in nginx 1.25.1.
    if version_at_least 1.25.1; then
        echo "        listen 127.0.0.1:${PORT[nginx]} ssl;"
        echo "        http2 on;"
    else
        echo "        listen 127.0.0.1:${PORT[nginx]} ssl http2;"
    fi
    ngx_proxy
    echo "    }"
    echo "    server {"
    echo "        listen 127.0.0.1:$PROBE_PORT ssl;"
    echo "        access_log $NGX/probe.log probe;"
    ngx_proxy
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

# Ready once each proxy answered 200 over HTTPS from every backend, to a curl that verifies the
# certificate for bench.test against the test certificate.
for px in "${PROXIES[@]}"; do
    bench_wait_ready "$px" "https://$HOST_NAME:${PORT[$px]}/" --cacert "$CERT" \
        --resolve "$HOST_NAME:${PORT[$px]}:127.0.0.1"
done

# What the proxy presents to an OpenSSL client sending SNI: the certificate's fingerprint must be
# the test certificate's. Prints the negotiated protocol, cipher and key exchange.
check_certificate() { # proxy sni
    local out fp params
    out=$(timeout 10 openssl s_client -connect "127.0.0.1:${PORT[$1]}" -servername "$2" </dev/null 2>&1) || true
    fp=$(openssl x509 -noout -fingerprint -sha256 <<<"$out" 2>/dev/null | sed 's/^.*=//') || true
    [[ $fp == "$FINGERPRINT" ]] \
        || die "$1 presents another certificate for SNI $2 (SHA-256 '${fp:-none}', expected $FINGERPRINT)"
    params=$(awk '/^(New|Peer signature type|Server Temp Key)/' <<<"$out" | tr '\n' ';' | sed 's/;$//; s/;/, /g')
    note "$1, SNI $2: the test certificate; $params"
}
for px in "${PROXIES[@]}"; do
    check_certificate "$px" "$HOST_NAME"
    check_certificate "$px" 127.0.0.1
done

bench_nginx_pidset
proc_pids() { # proxy -> the pids whose CPU counts for it
    if [[ $1 == nginx ]]; then echo "$PIDSET_NGINX"; else echo "${PID[$1]}"; fi
}

# --- clients --------------------------------------------------------------------------------
# One hey run, a new connection (and full handshake) per request; sets REQS SECS_RUN P50 P99 BAD.
hey_figures() { # file
    local out
    out=$(cat "$1")
    read -r REQS BAD SECS_RUN P50 P99 < <(awk '
        /^[A-Z]/ { section = $0 }
        $1 == "Total:" { secs = $2 }
        $1 == "50%" && $2 == "in" { p50 = $3 * 1000 }
        $1 == "99%" && $2 == "in" { p99 = $3 * 1000 }
        section ~ /^Status code distribution/ && match($1, /^\[[0-9]+\]$/) {
            code = substr($1, 2, length($1) - 2); answers += $2; if (code !~ /^2/) bad += $2 }
        section ~ /^Error distribution/ && match($1, /^\[[0-9]+\]$/) { bad += substr($1, 2, length($1) - 2) }
        END { printf "%d %d %.3f %.3f %.3f\n", answers, bad, secs, p50, p99 }' <<<"$out")
    ((REQS > 0)) || { echo "$out" >&2; die "hey got no answer at all"; }
}
run_load_for() { # load proxy seconds [port]: runs it and sets REQS SECS_RUN P50 P99 BAD
    local load=$1 px=$2 secs=$3 port=${4:-${PORT[$2]}} limit=$(($3 + 30))
    case $load in
    handshakes)
        run_load "hey against $px" timeout -k 5 "$limit" hey -z "${secs}s" -c "$CONNECTIONS" \
            -disable-keepalive -host "$HOST_NAME" "https://127.0.0.1:$port/"
        hey_figures "$TMP/load.out"
        ;;
    keepalive)
        run_load "wrk against $px" timeout -k 5 "$limit" wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --latency \
            -H "Host: $HOST_NAME" "https://127.0.0.1:$port/"
        wrk_figures "$TMP/load.out"
        ;;
    h2)
        rm -f "$TMP/h2.log"
        run_load "h2load against $px" timeout -k 5 "$limit" h2load -t1 -c"$CONNECTIONS" -m1 -D"$secs" \
            --connect-to="127.0.0.1:$port" --log-file="$TMP/h2.log" "https://$HOST_NAME:$port/"
        h2load_figures "$TMP/load.out" "$TMP/h2.log"
        ;;
    esac
}

# The handshake client must not resume sessions: hey against nginx's probe listener, whose access
# log says for each request whether its connection resumed a session ("r") or not (".").
probe_full_handshakes() {
    local n=$((4 * CONNECTIONS)) lines full params
    ((n >= 64)) || n=64
    run_load "hey against nginx's probe listener" timeout -k 5 30 hey -n "$n" -c "$CONNECTIONS" \
        -disable-keepalive -host "$HOST_NAME" "https://127.0.0.1:$PROBE_PORT/"
    hey_figures "$TMP/load.out"
    ((REQS == n && BAD == 0)) || die "hey against the probe listener: $REQS answers, $BAD failed (expected $n, 0)"
    lines=$(wc -l <"$NGX/probe.log")
    full=$(awk '$2 == "." && $3 == 200' "$NGX/probe.log" | wc -l)
    ((lines == n && full == n)) \
        || die "hey's handshakes are not all full ones: $full of $lines requests on new sessions (expected $n);" \
            "the handshake figures would not measure full handshakes"
    params=$(awk '{ $2 = ""; $3 = ""; print }' "$NGX/probe.log" | sort | uniq -c | sed 's/^ *//; s/  */ /g' | tr '\n' ';')
    note "hey: $n requests, $n full handshakes, no resumption (nginx probe log: ${params%;})"
}
probe_full_handshakes

HZ=$(getconf CLK_TCK)
LOADS=(handshakes keepalive)
((H2)) && LOADS+=(h2)
declare -A LOAD_NAME=(
    [handshakes]="full TLS handshakes (hey -c$CONNECTIONS, new connection per request)"
    [keepalive]="HTTPS keep-alive, HTTP/1.1 (wrk -c$CONNECTIONS)"
    [h2]="HTTPS keep-alive, HTTP/2 (h2load -c$CONNECTIONS -m1)")

note "nginx $NGINX_VERSION ($(nginx -V 2>&1 | sed -n 's/^built with //p')), hey $(dpkg-query -W -f='${Version}' hey 2>/dev/null || echo '?'), $(wrk --version 2>&1 | head -n1 | awk '{print "wrk", $2}')$( ((H2)) && h2load --version 2>/dev/null | head -n1 | sed 's/^/, /')"
note "workers/threads per proxy: $WORKERS; nginx pids (master workers): $PIDSET_NGINX; hawser pid ${PID[hawser]}"

# --- runs -----------------------------------------------------------------------------------
declare -A R_REQS=() R_SECS=() R_USER=() R_SYS=() R_P50=() R_P99=() R_BAD=()
BAD_RUNS=0

measure() { # load round proxy
    local load=$1 round=$2 px=$3 u0 s0 u1 s1 key pids
    read -r -a pids <<<"$(proc_pids "$px")"
    read -r u0 s0 <<<"$(proc_cpu_ticks "${pids[@]}")"
    run_load_for "$load" "$px" "$DURATION"
    read -r u1 s1 <<<"$(proc_cpu_ticks "${pids[@]}")"
    [[ $px != nginx || "$(nginx_pids)" == "$PIDSET_NGINX" ]] \
        || die "nginx's worker processes changed during the run (a worker died?)"
    key="$load:$px"
    R_REQS[$key]="${R_REQS[$key]:-} $REQS"
    R_SECS[$key]="${R_SECS[$key]:-} $SECS_RUN"
    R_USER[$key]="${R_USER[$key]:-} $((u1 - u0))"
    R_SYS[$key]="${R_SYS[$key]:-} $((s1 - s0))"
    R_P50[$key]="${R_P50[$key]:-} $P50"
    R_P99[$key]="${R_P99[$key]:-} $P99"
    R_BAD[$key]="${R_BAD[$key]:-} $BAD"
    awk -v r="$round" -v l="$load" -v x="$px" -v n="$REQS" -v s="$SECS_RUN" -v u="$((u1 - u0))" \
        -v sy="$((s1 - s0))" -v hz="$HZ" -v a="$P50" -v b="$P99" -v bad="$BAD" 'BEGIN {
        printf "# round %d %-10s %-6s answers=%d secs=%.2f per_s=%.0f p50_ms=%.3f p99_ms=%.3f user_us=%.1f sys_us=%.1f busy=%.0f%% failed=%d\n",
            r, l, x, n, s, n / s, a, b, (n ? u / hz * 1e6 / n : 0), (n ? sy / hz * 1e6 / n : 0),
            (s ? (u + sy) / hz / s * 100 : 0), bad }' >&2
    if ((BAD)); then
        note "WARNING: $load $px round $round: $BAD answers other than 2xx or client errors"
        BAD_RUNS=$((BAD_RUNS + 1))
    fi
}

if ((WARMUP)); then
    t=$EPOCHREALTIME
    for load in "${LOADS[@]}"; do
        for px in "${PROXIES[@]}"; do run_load_for "$load" "$px" "$WARMUP"; done
    done
    note "warm-up: ${WARMUP} s per proxy and load ($(secs_since "$t") s)"
fi

n=${#PROXIES[@]}
for ((round = 1; round <= ROUNDS; round++)); do
    order=()
    for ((k = 0; k < n; k++)); do order+=("${PROXIES[$(((round - 1 + k) % n))]}"); done
    for load in "${LOADS[@]}"; do
        for px in "${order[@]}"; do measure "$load" "$round" "$px"; done
    done
done

# --- table ----------------------------------------------------------------------------------
# Prints "per_s p50 p99 user_us sys_us busy_pct failed" for a key.
aggregate() {
    awk -v reqs="${R_REQS[$1]}" -v secs="${R_SECS[$1]}" -v user="${R_USER[$1]}" -v sys="${R_SYS[$1]}" \
        -v p50="${R_P50[$1]}" -v p99="${R_P99[$1]}" -v bad="${R_BAD[$1]}" -v hz="$HZ" "$BENCH_AWK_STATS"'
    BEGIN {
        r = sum(reqs); s = sum(secs); u = sum(user); y = sum(sys)
        printf "%.1f %.3f %.3f %.2f %.2f %.1f %d\n", (s ? r / s : 0), median(p50), median(p99),
            (r ? u / hz * 1e6 / r : 0), (r ? y / hz * 1e6 / r : 0), (s ? (u + y) / hz / s * 100 : 0), sum(bad) }'
}

print_table() {
    local load px rps p50 p99 us sy busy bad base_rps base_cpu first
    echo "| load | proxy | per second | p50 ms | p99 ms | user µs | system µs | CPU µs | busy % | per second vs nginx | CPU vs nginx | failed | goal |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for load in "${LOADS[@]}"; do
        read -r base_rps _ _ us sy _ _ <<<"$(aggregate "$load:nginx")"
        base_cpu=$(awk -v u="$us" -v s="$sy" 'BEGIN { print u + s }')
        first=1
        for px in "${PROXIES[@]}"; do
            read -r rps p50 p99 us sy busy bad <<<"$(aggregate "$load:$px")"
            awk -v load="${LOAD_NAME[$load]}" -v first="$first" -v kind="$load" -v px="$px" -v rps="$rps" \
                -v p50="$p50" -v p99="$p99" -v us="$us" -v sy="$sy" -v busy="$busy" -v bad="$bad" \
                -v brps="$base_rps" -v bcpu="$base_cpu" -v gh="$GOAL_HANDSHAKES" -v gc="$GOAL_CPU" '
            function commas(n,   s) { s = sprintf("%d", n + 0.5); while (s ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", s); return s }
            BEGIN {
                cpu = us + sy
                rr = (brps > 0) ? rps / brps : 0; cr = (bcpu > 0) ? cpu / bcpu : 0
                goal = ""
                if (px == "hawser" && kind == "handshakes")
                    goal = sprintf("handshakes/s ≥ %.1f× nginx: %s", gh, (rr >= gh ? "met" : "**not met**"))
                if (px == "hawser" && kind == "keepalive")
                    goal = sprintf("CPU per request ≤ %.1f× nginx: %s", gc, (cr <= gc ? "met" : "**not met**"))
                printf "| %s | %s | %s | %.2f | %.2f | %.1f | %.1f | %.1f | %.0f | %.2f | %.2f | %s | %s |\n",
                    (first ? load : ""), px, commas(rps), p50, p99, us, sy, cpu, busy, rr, cr,
                    (bad ? "**" bad "**" : "0"), goal }'
            first=0
        done
    done
}

echo
note "aggregated over $ROUNDS round(s) of ${DURATION} s: per second = sum answers / sum seconds, p50/p99 = median over rounds,"
note "user/system µs = the proxy's utime/stime summed over the runs / answers (nginx: master + $WORKERS worker(s))"
print_table

# A rate compares the proxies only when they were the bottleneck. The clients share the cores
# with them (hey's Go TLS costs about as much per handshake as the proxy's side), and so does
# any other work on the machine; say when a proxy had CPU to spare: then the CPU per answer is
# the figure to compare, not the rate.
for load in "${LOADS[@]}"; do
    idle=""
    for px in "${PROXIES[@]}"; do
        read -r _ _ _ _ _ busy _ <<<"$(aggregate "$load:$px")"
        awk -v b="$busy" -v w="$WORKERS" 'BEGIN { exit !(b < 90 * w) }' && idle+="${idle:+, }$px $(printf '%.0f' "$busy") %"
    done
    [[ -z $idle ]] || printf '\nNot saturated (busy under 90 %% of %d %%) in %s: %s. The client or other work on the same cores set the pace: compare CPU µs, not rates.\n' \
        $((100 * WORKERS)) "${LOAD_NAME[$load]}" "$idle"
done

# hawser's own count of failed handshakes (warm-up and probes included), for the record.
errs=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null \
    | awk '/^hawser_tls_handshake_errors_total/ && $2 > 0 { printf "%s%s %s", sep, $1, $2; sep = ", " }') || true
note "hawser's failed handshakes over the whole run: ${errs:-none}"

if ((BAD_RUNS)); then
    echo
    echo "**WARNING: $BAD_RUNS measured run(s) saw answers other than 2xx or client errors (column failed): these figures are not valid.**"
    note "$BAD_RUNS measured run(s) saw non-2xx answers or client errors (see WARNING lines)"
    exit 3
fi
