#!/usr/bin/env bash
# Discovery latency (issue 5): how soon a started container gets its first request through
# hawser, and how soon a stopped one stops getting them.
#
#   bench/discovery-latency.sh                                  # 60 + 3 x 20 containers, ~80 s
#   BENCH_SEQUENTIAL=6 BENCH_BURSTS=1 BENCH_BURST_SIZE=4 bench/discovery-latency.sh   # quick look
#   bench/discovery-latency.sh swarm       # Swarm tasks instead (or BENCH_MODE=swarm): see
#                                          # bench/discovery-latency-swarm.sh, which it runs
#
# Goals (reported, not pass/fail): start -> routed p99 <= 50 ms after the container listens
# (readiness gating on); stop -> no new requests later than 10 ms after the `kill` event.
#
# What it does:
#   1. Builds the test backend (tests/support/backend.rs: std-only, static, exits promptly on
#      SIGTERM, waits LISTEN_DELAY_MS before binding, and prints "listening on ... (unix time
#      S.MICROS)" once bound) into a FROM-scratch image, on a private Docker network. The
#      measured containers keep serving BENCH_SIGTERM_DELAY_MS after SIGTERM, as an application
#      that drains does: a request hawser still sends them after their `kill` event reaches
#      them and shows in the figures, rather than failing over to another backend.
#   2. Pre-creates every measured container with `docker create` (so that `docker start`
#      measures only the start), all in one service (PREFIX.service=app, PREFIX.host=bench.test,
#      PREFIX being a run-unique label prefix that no other container carries). Container i
#      waits LISTEN_DELAY_MS = (i * 97) mod (BENCH_LISTEN_DELAY_MAX_MS + 1) before it listens:
#      delays spread evenly over 0..MAX, so some listen before hawser has even heard of them
#      and some long after their first health probes. One more container, the anchor, runs
#      all along in the same service, so the service never has zero backends.
#   3. Starts hawser (target/release/hawser, or HAWSER_BIN) on free loopback ports with that
#      label prefix, `access_log: json` (its stdout, one line per request, with the container
#      name of the backend), HTTP health checks on /healthz (readiness gating: a new backend
#      gets no request before a probe passed) every BENCH_HEALTH_INTERVAL once ready.
#   4. Puts a steady, bounded load through hawser for the whole run:
#        wrk -t1 -c$BENCH_CONNECTIONS with a Lua delay() of 0..2*BENCH_PACE_MS ms, at random
#      (each connection waits that long between a response and its next request), so about
#      BENCH_CONNECTIONS / BENCH_PACE_MS requests per ms, spread evenly in time and shared
#      round-robin by the ready backends. Follows `docker events` (this run's containers and
#      network) for the daemon's start, kill and network connect times.
#   5. sequential: BENCH_SEQUENTIAL containers one at a time: docker start -> wait until hawser's
#      admin API says ready -> BENCH_HOLD_MS of serving -> docker stop -> wait until hawser has
#      dropped it. bursts: BENCH_BURSTS times, BENCH_BURST_SIZE containers started at once (the
#      Engine API's start call, what `docker start` makes, for all of them together from one
#      python3 process), all waited for, held, then stopped by one `docker stop` of them all
#      (the CLI stops them in parallel). The script records the time just after each start
#      call returned and just before each `docker stop` was issued.
#   6. Afterwards reads each container's listening time (`docker logs`), the events, and
#      hawser's access log. A request's time is when hawser received it: the log line's time
#      (written at the end of the request, millisecond resolution, taken as the middle of its
#      millisecond) minus its duration_ms. Per container:
#        first = time of the first request logged with that backend, last = of the last one.
#
# Table (stdout), per measure and phase (sequential, bursts, all), in milliseconds, percentiles
# by nearest rank over the containers:
#   start_returned->first_request   first - `docker start` returned
#   listening->first_request        first - the backend's own "listening" time        (goal)
#   stop_issued->last_request       last - just before `docker stop` was issued
#   kill_event->last_request        last - the daemon's `kill` (signal 15) event time  (goal)
#                                   (negative: the last request came before the event)
#   start_event->hawser_routed      from hawser's own log: when it made X a backend (not ready
#                                   yet: probing starts), after the daemon's `start` event of X
#   listening->hawser_ready         from hawser's own log: "selector live N ms after Docker
#                                   event (container X ready)", N counted from the event that
#                                   made X a backend (its network `connect` or its `start`, as
#                                   X's "routed" line names it): when hawser's selector went
#                                   live with X. Containers whose lines hawser coalesced with
#                                   another's are left out, so n may be smaller.
#   kill_event->hawser_drained      hawser's log: "selector live N ms after Docker event (kill X)"
# Measurement resolution: a ready backend gets a request about every (ready backends) /
# (requests per ms) ms; the script prints the mean spacing it saw per phase on stderr.
# Every request that was not a 2xx (in hawser's log or wrk's count) is a failure: counted on
# stderr, exit status 3. A container that never got a request leaves its first/last out of the
# table and is also a failure.
#
# Environment (defaults in brackets):
#   BENCH_SEQUENTIAL           containers started and stopped one at a time [60]
#   BENCH_BURSTS               bursts [3]
#   BENCH_BURST_SIZE           containers per burst, started and stopped in parallel [20]
#   BENCH_LISTEN_DELAY_MAX_MS  longest LISTEN_DELAY_MS of a container [400]
#   BENCH_CONNECTIONS          wrk connections [8]
#   BENCH_PACE_MS              mean wrk delay() between a response and the next request on
#                              a connection, whole ms [4]
#   BENCH_HOLD_MS              how long each container serves before it is stopped [200]
#   BENCH_SIGTERM_DELAY_MS     how long the measured containers serve after SIGTERM [100]
#   BENCH_ROUTE_TIMEOUT        longest wait for containers to be ready, or dropped, seconds [15]
#   BENCH_MAX_SECONDS          upper bound of the whole load (wrk -d), seconds [600]
#   BENCH_HEALTH_INTERVAL      hawser health_check.interval [2s]
#   BENCH_KEEP_DATA            non-empty: keep the raw data (events, access log, times) [empty]
#   HAWSER_BIN                 use this hawser binary instead of `cargo build --release`
#   RUST_LOG                   hawser's log filter [info] (the hawser_* rows need info)
#
# Bounded: every wait has a deadline and the load a fixed upper duration; traffic goes to
# loopback and the containers this script starts. Everything it creates (processes, containers,
# network, image tag, temp dir) is removed on every exit, Ctrl-C and failure included; hawser's
# log is kept (its path is printed), its access log is not. stdout: the table only; stderr:
# context, every line starting with '#'. Exit status 0 (goals missed or not); 3 when a request
# failed, a container was never routed or hawser dropped access log lines; 1 on any other
# failure; 2 on bad settings.
set -euo pipefail

# Swarm mode: tasks of a service scaled up and down, through a host-run hawser. Another flow
# and other figures (poll-bound, not event-bound): its own script.
case "${1:-${BENCH_MODE:-containers}}" in
    containers) ;;
    swarm) exec "$(dirname "${BASH_SOURCE[0]}")/discovery-latency-swarm.sh" ;;
    *) echo "usage: $0 [containers|swarm] (or BENCH_MODE=containers|swarm)" >&2; exit 2 ;;
esac

SEQUENTIAL=${BENCH_SEQUENTIAL:-60}
BURSTS=${BENCH_BURSTS:-3}
BURST_SIZE=${BENCH_BURST_SIZE:-20}
LISTEN_DELAY_MAX=${BENCH_LISTEN_DELAY_MAX_MS:-400}
CONNECTIONS=${BENCH_CONNECTIONS:-8}
PACE_MS=${BENCH_PACE_MS:-4}
HOLD_MS=${BENCH_HOLD_MS:-200}
SIGTERM_DELAY_MS=${BENCH_SIGTERM_DELAY_MS:-100}
ROUTE_TIMEOUT=${BENCH_ROUTE_TIMEOUT:-15}
MAX_SECONDS=${BENCH_MAX_SECONDS:-600}
HEALTH_INTERVAL=${BENCH_HEALTH_INTERVAL:-2s}
HOST_HEADER=bench.test

for v in SEQUENTIAL BURSTS BURST_SIZE LISTEN_DELAY_MAX CONNECTIONS PACE_MS HOLD_MS SIGTERM_DELAY_MS ROUTE_TIMEOUT \
    MAX_SECONDS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: BENCH_$v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((CONNECTIONS >= 1 && ROUTE_TIMEOUT >= 1 && MAX_SECONDS >= 10)) \
    || { echo "$0: BENCH_CONNECTIONS, BENCH_ROUTE_TIMEOUT must be >= 1, BENCH_MAX_SECONDS >= 10" >&2; exit 2; }
((SEQUENTIAL + BURSTS * BURST_SIZE >= 1)) || { echo "$0: no container to measure" >&2; exit 2; }
[[ $HEALTH_INTERVAL =~ ^[0-9]+(ms|s|m)$ ]] \
    || { echo "$0: BENCH_HEALTH_INTERVAL must look like 500ms, 2s or 1m, got '$HEALTH_INTERVAL'" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # note, die, ms_since, secs_since, free_port, sleep_ms, bench_* (see there)

# --- cleanup ------------------------------------------------------------------------------
bench_names dl
TMP=""
NET_CREATED=0
IMAGE_BUILT=0
HAWSER_PID=""
WRK_PID=""
EVENTS_PID=""
NET_EVENTS_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    # Parallel docker start/stop subshells of an interrupted burst.
    local j
    for j in $(jobs -pr); do
        [[ $j == "$HAWSER_PID" || $j == "$WRK_PID" || $j == "$EVENTS_PID" || $j == "$NET_EVENTS_PID" ]] \
            || kill "$j" 2>/dev/null
    done
    [[ -n "$WRK_PID" ]] && stop_pid "$WRK_PID" INT 3
    [[ -n "$EVENTS_PID" ]] && stop_pid "$EVENTS_PID" TERM 3
    [[ -n "$NET_EVENTS_PID" ]] && stop_pid "$NET_EVENTS_PID" TERM 3
    bench_remove_docker
    # SIGINT: pingora's fast shutdown (SIGTERM would wait out the grace period).
    [[ -n "$HAWSER_PID" ]] && stop_pid "$HAWSER_PID" INT 10
    bench_end_tmp_log "$rc" "${TMPDIR:-/tmp}/hawser-dl-${RUN_ID}.log"
}

# --- traps, prerequisites, temp dir -------------------------------------------------------
bench_access_log_setup dl
TOTAL=$((SEQUENTIAL + BURSTS * BURST_SIZE))
((TOTAL >= 100)) || note "only $TOTAL containers: fewer than the 100 of a full run"

# --- hawser binary ------------------------------------------------------------------------
bench_hawser_binary

# --- backend image, network, events -------------------------------------------------------
t=$EPOCHREALTIME
bench_backend_image
NET_CREATED=1
docker network create --label "${RUN_LABEL}=${RUN_ID}" "$NET" >/dev/null </dev/null \
    || die "docker network create $NET failed"
note "backend image $IMAGE, network $NET, hawser label prefix $PREFIX ($(secs_since "$t") s)"

# The daemon's own times of start and kill. --since replays what happened between that time
# and the moment the subscription took effect, so nothing is lost to a late subscription.
# Network events carry no container labels: their own follower, on this run's network
# (hawser may route a container at its network `connect`, before its `start`).
EVENTS_SINCE=$EPOCHREALTIME
docker events --since "$EVENTS_SINCE" --filter "label=${RUN_LABEL}=${RUN_ID}" --filter type=container \
    --format '{{json .}}' >"$TMP/events.jsonl" 2>"$TMP/events.err" </dev/null &
EVENTS_PID=$!
docker events --since "$EVENTS_SINCE" --filter "network=$NET" --filter type=network \
    --format '{{json .}}' >"$TMP/net-events.jsonl" 2>>"$TMP/events.err" </dev/null &
NET_EVENTS_PID=$!

# --- containers ---------------------------------------------------------------------------
run_args() { # name listen-delay-ms -> the docker create/run arguments shared by all
    printf '%s\n' --name "$1" --network "$NET" \
        --label "${RUN_LABEL}=${RUN_ID}" \
        --label "${PREFIX}.enable=true" --label "${PREFIX}.host=${HOST_HEADER}" \
        --label "${PREFIX}.service=app" \
        -e "NAME=$1" -e "LISTEN_DELAY_MS=$2" -e "SIGTERM_DELAY_MS=$SIGTERM_DELAY_MS"
}
SEQ_NAMES=()
declare -A BURST_NAMES=()
t=$EPOCHREALTIME
i=0
: >"$TMP/containers.txt"          # name phase listen_delay_ms
create() { # name phase
    local delay=$(((i * 97) % (LISTEN_DELAY_MAX + 1))) args
    i=$((i + 1))
    mapfile -t args < <(run_args "$1" "$delay")
    timeout 60 docker create "${args[@]}" "$IMAGE" >/dev/null </dev/null || die "docker create $1 failed"
    echo "$1 $2 $delay" >>"$TMP/containers.txt"
}
for ((k = 1; k <= SEQUENTIAL; k++)); do
    name=$(printf '%s-s%03d' "$PREFIX" "$k")
    create "$name" sequential
    SEQ_NAMES+=("$name")
done
for ((b = 1; b <= BURSTS; b++)); do
    BURST_NAMES[$b]=""
    for ((k = 1; k <= BURST_SIZE; k++)); do
        name=$(printf '%s-b%d-%02d' "$PREFIX" "$b" "$k")
        create "$name" bursts
        BURST_NAMES[$b]+="$name "
    done
done
mapfile -t args < <(run_args "${PREFIX}-anchor" 0)
timeout 60 docker run -d "${args[@]}" "$IMAGE" >/dev/null </dev/null || die "docker run of the anchor failed"
note "$TOTAL containers created, anchor ${PREFIX}-anchor running ($(secs_since "$t") s)"

# --- hawser -------------------------------------------------------------------------------
bench_start_hawser_access_log "{label_prefix: $PREFIX}"
t=$EPOCHREALTIME
bench_wait_http_200 "$t" "through the anchor"
note "hawser pid $HAWSER_PID on 127.0.0.1:$PORT (admin $ADMIN_PORT) routes to the anchor ($(secs_since "$t") s)"

# --- load ---------------------------------------------------------------------------------
bench_wrk_paced

# --- waiting on hawser's view -------------------------------------------------------------
# Polls every 25 ms with as few processes as it can: the machine's CPU is what the figures
# are made of.
wait_until() { # ready|gone what names...
    local want=$1 what=$2 t0=$EPOCHREALTIME n s pending
    local -A state
    shift 2
    while :; do
        kill -0 "$HAWSER_PID" 2>/dev/null || die "hawser exited"
        kill -0 "$WRK_PID" 2>/dev/null || die "wrk ended early (BENCH_MAX_SECONDS=$MAX_SECONDS too short?)"
        state=()
        while read -r n s; do state[$n]=$s; done < <(bench_backend_states)
        pending=()
        for n in "$@"; do
            if [[ $want == ready ]]; then
                [[ ${state[$n]:-} == ready ]] || pending+=("$n")
            else
                [[ -z ${state[$n]+x} ]] || pending+=("$n")
            fi
        done
        ((${#pending[@]})) || return 0
        if (($(ms_since "$t0") > ROUTE_TIMEOUT * 1000)); then
            for n in "${pending[@]}"; do
                note "$n: backend state ${state[$n]:-none}; docker: $(docker inspect -f '{{.State.Status}}' "$n" 2>&1)"
            done
            die "$what: ${#pending[@]} container(s) not $want within ${ROUTE_TIMEOUT} s"
        fi
        sleep 0.025
    done
}

# --- phases -------------------------------------------------------------------------------
# A burst is started the way an orchestrator starts replicas: the `docker start` API call for
# each of them, all at once, from one process. (`docker start A B ...` starts them one after
# the other; 20 CLI processes at once would mostly measure the CPU that 20 Go programs take
# to start, on a machine whose CPU is what the figures are made of.) It needs the engine's
# unix socket; with another DOCKER_HOST, one `docker start` CLI per container, at once.
ENGINE_SOCKET=""
case "${DOCKER_HOST:-unix:///var/run/docker.sock}" in
    unix://*) ENGINE_SOCKET=${DOCKER_HOST:-unix:///var/run/docker.sock}; ENGINE_SOCKET=${ENGINE_SOCKET#unix://} ;;
esac
[[ -z $ENGINE_SOCKET || -S $ENGINE_SOCKET ]] || ENGINE_SOCKET=""
((BURSTS == 0)) || note "bursts start through ${ENGINE_SOCKET:-one docker CLI per container (DOCKER_HOST is not a unix socket)}"
cat >"$TMP/burst_start.py" <<'PY'
# POST /containers/NAME/start for every NAME at once (one thread each, released together);
# prints "NAME start_returned EPOCH-SECONDS" as each call returns, like `docker start` does.
import socket, sys, threading, time

path, names = sys.argv[1], sys.argv[2:]
gate = threading.Barrier(len(names))
lock, failed = threading.Lock(), []

def start(name):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(path)
    gate.wait()
    s.sendall(f"POST /containers/{name}/start HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode())
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    done = time.time()
    s.close()
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"?"
    with lock:
        if status in (b"204", b"304"):
            print(f"{name} start_returned {done:.6f}", flush=True)
        else:
            failed.append(f"{name}: {head.splitlines()[0] if head else 'no answer'}")

threads = [threading.Thread(target=start, args=(n,)) for n in names]
for t in threads:
    t.start()
for t in threads:
    t.join()
for f in failed:
    print(f"docker start {f}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY

: >"$TMP/timeline.txt"           # name start_returned|stop_issued epoch-seconds
hold() { sleep_ms "$HOLD_MS"; } # fixed pacing

t=$EPOCHREALTIME
for name in "${SEQ_NAMES[@]}"; do
    timeout 60 docker start "$name" >/dev/null </dev/null || die "docker start $name failed"
    echo "$name start_returned $EPOCHREALTIME" >>"$TMP/timeline.txt"
    wait_until ready "sequential $name" "$name"
    hold
    echo "$name stop_issued $EPOCHREALTIME" >>"$TMP/timeline.txt"
    timeout 60 docker stop "$name" >/dev/null </dev/null || die "docker stop $name failed"
    wait_until gone "sequential $name" "$name"
done
((SEQUENTIAL == 0)) || note "sequential: $SEQUENTIAL containers in $(secs_since "$t") s"

for ((b = 1; b <= BURSTS; b++)); do
    t=$EPOCHREALTIME
    read -r -a names <<<"${BURST_NAMES[$b]}"
    if [[ -n $ENGINE_SOCKET ]]; then
        timeout 90 python3 "$TMP/burst_start.py" "$ENGINE_SOCKET" "${names[@]}" >>"$TMP/timeline.txt" </dev/null \
            || die "burst $b: starting the containers through $ENGINE_SOCKET failed"
    else
        pids=()
        for name in "${names[@]}"; do
            { timeout 60 docker start "$name" >/dev/null </dev/null \
                && echo "$name start_returned $EPOCHREALTIME" >>"$TMP/timeline.txt"; } &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p" || die "burst $b: a docker start failed"; done
    fi
    started=$(secs_since "$t")
    wait_until ready "burst $b" "${names[@]}"
    ready=$(secs_since "$t")
    hold
    # One `docker stop` of them all: the CLI stops them in parallel, as it would for an
    # operator (20 CLI processes starting at once would only measure the CPU they take).
    issued=$EPOCHREALTIME
    for name in "${names[@]}"; do echo "$name stop_issued $issued" >>"$TMP/timeline.txt"; done
    timeout 60 docker stop "${names[@]}" >/dev/null </dev/null || die "burst $b: docker stop failed"
    wait_until gone "burst $b" "${names[@]}"
    note "burst $b: ${#names[@]} started in $started s, all ready at $ready s, stopped and dropped at $(secs_since "$t") s"
done

# --- collect ------------------------------------------------------------------------------
stop_pid "$WRK_PID" INT 5 # wrk prints its summary on SIGINT
WRK_PID=""
bench_wrk_collect
# Every stopped container's `kill` event must be in before the events follower stops.
t=$EPOCHREALTIME
while (($(grep -c '"Action":"die"' "$TMP/events.jsonl" || true) < TOTAL)); do
    (($(ms_since "$t") < 10000)) || die "docker events: fewer than $TOTAL die events after 10 s ($(cat "$TMP/events.err"))"
    sleep 0.1
done
stop_pid "$EVENTS_PID" TERM 3
stop_pid "$NET_EVENTS_PID" TERM 3
EVENTS_PID="" NET_EVENTS_PID=""

t=$EPOCHREALTIME
: >"$TMP/listening.txt"           # name epoch-seconds
while read -r name _ _; do
    bench_listening_time "$name" "$name"
    echo "$name $LISTENING" >>"$TMP/listening.txt"
done <"$TMP/containers.txt"
note "listening times read from $TOTAL container logs ($(secs_since "$t") s)"

# --- analysis -----------------------------------------------------------------------------
{
    echo "$BENCH_PY_ACCESS_LOG"
    cat <<'PY'
import re

tmp, wrk_bad, dropped = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

phase, delay = {}, {}
for line in open(f"{tmp}/containers.txt"):
    n, p, d = line.split()
    phase[n], delay[n] = p, int(d)
timeline = {}
for line in open(f"{tmp}/timeline.txt"):
    n, what, t = line.split()
    timeline[(n, what)] = float(t)
listening = {}
for line in open(f"{tmp}/listening.txt"):
    n, t = line.split()
    listening[n] = float(t)
start_event, kill_event, connect_event, name_of = {}, {}, {}, {}
for line in open(f"{tmp}/events.jsonl"):
    e = json.loads(line)
    attrs = e.get("Actor", {}).get("Attributes", {})
    n, t = attrs.get("name"), e["timeNano"] / 1e9
    name_of[e.get("Actor", {}).get("ID")] = n
    if e.get("Action") == "start":
        start_event.setdefault(n, t)
    elif e.get("Action") == "kill" and attrs.get("signal") == "15":
        kill_event.setdefault(n, t)
for line in open(f"{tmp}/net-events.jsonl"):
    e = json.loads(line)
    n = name_of.get(e.get("Actor", {}).get("Attributes", {}).get("container"))
    if e.get("Action") == "connect" and n:
        connect_event.setdefault(n, e["timeNano"] / 1e9)

# Access log: per backend, the first and last request (hawser's receive time), and the
# spacing of its requests (the measurement's resolution).
first, last, count = {}, {}, {}
requests = failed = retried = 0
failures = {}
for _, e in access_log(f"{tmp}/access.jsonl"):
    requests += 1
    if not 200 <= e["status"] < 300:
        failed += 1
        key = (e["status"], e["backend"] or "-")
        failures[key] = failures.get(key, 0) + 1
    if e["retries"]:
        retried += 1
    b = e["backend"]
    if b not in phase:
        continue
    t = epoch(e["time"]) - e["duration_ms"] / 1e3
    first[b] = min(first.get(b, t), t)
    last[b] = max(last.get(b, t), t)
    count[b] = count.get(b, 0) + 1

# hawser's own view: when its selector went live with the container (ready) and without it
# (kill). A container's "ready" delay counts from the event that made it a backend, which
# the line after its "routed to service" line names (connect or start).
hawser_routed, hawser_ready, hawser_drained = {}, {}, {}
live = re.compile(r"selector live ([0-9.]+) ms after Docker event \((\S+) (\S+)( ready)?\)")
routed = re.compile(r"container (\S+): routed to service")
made_backend, just_routed = {}, None
event_time = {"connect": connect_event, "start": start_event}
for line in open(f"{tmp}/hawser.log", errors="replace"):
    m = routed.search(line)
    if m:
        just_routed = m.group(1)
        continue
    m = live.search(line)
    if not m:
        continue
    secs, action, n, ready = float(m.group(1)) / 1e3, m.group(2), m.group(3), m.group(4)
    if action in event_time and n == just_routed and n in event_time[action]:
        made_backend.setdefault(n, event_time[action][n])
        hawser_routed.setdefault(n, made_backend[n] + secs)
    elif ready and action == "container" and n in made_backend:
        hawser_ready.setdefault(n, made_backend[n] + secs)
    elif action == "kill" and n in kill_event:
        hawser_drained.setdefault(n, kill_event[n] + secs)
    just_routed = None

def diff(a, b):
    return {n: (a[n] - b[n]) * 1e3 for n in phase if n in a and n in b}
measures = [
    ("start_returned->first_request", diff(first, {n: timeline.get((n, "start_returned")) for n in phase if (n, "start_returned") in timeline}), ""),
    ("listening->first_request", diff(first, listening), "p99<=50"),
    ("stop_issued->last_request", diff(last, {n: timeline.get((n, "stop_issued")) for n in phase if (n, "stop_issued") in timeline}), ""),
    ("kill_event->last_request", diff(last, kill_event), "max<=10"),
    ("start_event->hawser_routed", diff(hawser_routed, start_event), ""),
    ("listening->hawser_ready", diff(hawser_ready, listening), ""),
    ("kill_event->hawser_drained", diff(hawser_drained, kill_event), ""),
]

fmt = "%-30s %-10s %4s %8s %8s %8s  %s"
print(fmt % ("measure", "phase", "n", "p50_ms", "p99_ms", "max_ms", "goal"))
missed = []
for label, values, goal in measures:
    for ph in ("sequential", "bursts", "all"):
        v = [x for n, x in values.items() if ph == "all" or phase[n] == ph]
        if not v:
            if ph == "all" or any(p == ph for p in phase.values()):
                print(fmt % (label, ph, 0, "-", "-", "-", goal))
            continue
        p50, p99, mx = pct(v, 50), pct(v, 99), max(v)
        verdict = ""
        if goal and ph == "all":
            ok = (p99 <= 50) if goal.startswith("p99") else (mx <= 10)
            verdict = goal + (" met" if ok else " MISSED")
            if not ok:
                missed.append(label)
        elif goal:
            verdict = goal
        print(fmt % (label, ph, len(v), "%.1f" % p50, "%.1f" % p99, "%.1f" % mx, verdict))

for ph in ("sequential", "bursts"):
    g = [(last[n] - first[n]) / (count[n] - 1) * 1e3 for n in first if phase[n] == ph and count[n] > 1]
    if g:
        note(f"{ph}: requests to one measured backend came every {sum(g) / len(g):.2f} ms on average "
             f"(the resolution of its first and last request)")
worst = sorted(diff(first, listening).items(), key=lambda kv: -kv[1])[:5]
note("slowest listening->first_request: " + ", ".join(
    f"{n.split('-', 1)[1]} {v:.1f} ms (LISTEN_DELAY_MS={delay[n]})" for n, v in worst))
never = sorted(n for n in phase if n not in first)
note(f"hawser access log: {requests} requests, {failed} not 2xx, {retried} retried; wrk: {wrk_bad} non-2xx or socket errors")
for (status, b), k in sorted(failures.items(), key=lambda kv: -kv[1])[:10]:
    note(f"  {k} x status {status} (backend {b})")
if never:
    note(f"{len(never)} container(s) never got a request: {' '.join(never[:10])}")
if missed:
    note("goal missed: " + ", ".join(missed))
sys.exit(3 if failed or wrk_bad or never or dropped else 0)
PY
} >"$TMP/analyse.py"
python3 "$TMP/analyse.py" "$TMP" "$WRK_BAD" "${DROPPED%%.*}" || {
    rc=$?
    ((rc == 3)) || die "the analysis failed"
    exit 3
}
