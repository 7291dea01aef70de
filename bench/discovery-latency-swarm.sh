#!/usr/bin/env bash
# Discovery latency, Swarm mode (`bench/discovery-latency.sh swarm` runs this): how soon a new
# Swarm task gets its first request through a host-run hawser, and whether a task that a
# scale-down removes got its last request before its container's SIGTERM.
#
#   bench/discovery-latency.sh swarm                            # 6 cycles of +3/-3 tasks, ~1.5 min
#   BENCH_CYCLES=2 BENCH_SCALE_BY=2 bench/discovery-latency.sh swarm    # quick look
#
# Goals (reported, not pass/fail): task running -> first routed request p99 <= 1500 ms
# (hawser polls the manager every 1 s, Swarm emits no task events); 100 % of removed tasks
# get their last request before their container's SIGTERM.
#
# What it does:
#   1. Builds the test backend (tests/support/backend.rs) into a FROM-scratch image and makes
#      the engine a single-node swarm manager (`docker swarm init --advertise-addr 127.0.0.1`)
#      unless it is in a swarm already; a swarm it created it leaves again on exit.
#   2. Creates one dnsrr service of BENCH_BASE_REPLICAS tasks from the image's id (no
#      registry: a node skips the pull only for an id), `--publish mode=host,target=80` (the
#      host cannot reach overlay IPs: a host-run hawser routes to the published ports). Its
#      tasks serve BENCH_SIGTERM_DELAY_MS after SIGTERM, as an application that drains does:
#      a request hawser still sends after SIGTERM succeeds and shows in the figures.
#   3. Starts hawser (target/release/hawser, or HAWSER_BIN) with `docker.mode: swarm`, a
#      run-unique label prefix, `access_log: json` (one line per request: backend SERVICE.SLOT
#      and upstream 127.0.0.1:PUBLISHED_PORT, which tells two tasks of one slot apart) and HTTP
#      health checks on /healthz, and puts paced wrk load through it (as the container mode
#      does: -c BENCH_CONNECTIONS, a random delay() of 0..2*BENCH_PACE_MS ms).
#   4. BENCH_CYCLES times: `docker service scale` to BASE+BENCH_SCALE_BY -> wait until the
#      manager lists them running and hawser's admin API says each is a ready backend ->
#      BENCH_HOLD_MS of serving -> scale back to BASE -> wait until hawser has dropped the
#      removed tasks and their containers are gone. Each new task's running time
#      (Task.Status.Timestamp while its state is running) and the backend's own "listening"
#      time (its log) are read while it runs; `docker events` gives each container's `kill`
#      (signal 15) time.
#   5. Stops the load, reads hawser's CPU time (user and system separately, /proc) per
#      request, then hawser's idle CPU over BENCH_IDLE_SECONDS with BASE tasks and with
#      BENCH_IDLE_TASKS tasks: the cost of its poll rounds (one a second while nothing moves;
#      the health checks of the tasks are in it too). user/system from /proc/PID/stat (10 ms
#      ticks), total from the threads' schedstat (ns).
#
# Table (stdout), milliseconds, percentiles by nearest rank over the tasks:
#   running->first_request       first request to the task - its Status.Timestamp (running)  (goal)
#   listening->first_request     first request - the backend's own "listening" time
#   scale_up->first_request      first request - `docker service scale` up issued
#   scale_down->last_request     last request to a removed task - scale down issued
#   last_request->sigterm        the margin: SIGTERM (the `kill` event's time) - last request;
#                                positive: the last request came before SIGTERM       (goal: all > 0)
#   scale_down->sigterm          the manager's and the node's delay before the stop signal
# then `removed_before_sigterm=K/N (P %)`, hawser's CPU per request and its idle CPU lines.
# A request's time is when hawser received it (the access log line's time minus duration_ms).
# Every request that was not a 2xx (in hawser's log or wrk's count) is a failure, except one
# that hawser logged with status 0 as wrk was stopped (wrk closes its connections mid-request).
#
# Environment (defaults in brackets):
#   BENCH_BASE_REPLICAS     tasks the service keeps all along [2]
#   BENCH_CYCLES            scale up/down cycles [6]
#   BENCH_SCALE_BY          tasks added and removed per cycle [3]
#   BENCH_LISTEN_DELAY_MS   how long a task waits before it listens [0]
#   BENCH_SIGTERM_DELAY_MS  how long a task serves after SIGTERM [1000]
#   BENCH_HOLD_MS           how long the added tasks serve before the scale-down [1000]
#   BENCH_CONNECTIONS       wrk connections [8]
#   BENCH_PACE_MS           mean wrk delay() between a response and the next request [4]
#   BENCH_ROUTE_TIMEOUT     longest wait for tasks to run, be ready or be gone, seconds [30]
#   BENCH_MAX_SECONDS       upper bound of the load (wrk -d), seconds [600]
#   BENCH_HEALTH_INTERVAL   hawser health_check.interval [2s]
#   BENCH_IDLE_SECONDS      length of each idle CPU measurement, seconds [10]
#   BENCH_IDLE_TASKS        tasks during the second idle measurement [10]
#   BENCH_KEEP_DATA         non-empty: keep the raw data (events, access log, tasks) [empty]
#   HAWSER_BIN              use this hawser binary instead of `cargo build --release`
#   RUST_LOG                hawser's log filter [info]
#
# Bounded: every wait has a deadline and the load a fixed upper duration; traffic goes to
# loopback only. Everything it creates (processes, the service and its containers, image tag,
# temp dir, the swarm when it made it) carries the run's id and is removed on every exit,
# Ctrl-C and failure included; hawser's log is kept (its path is printed). stdout: the table;
# stderr: context lines starting with '#'. Exit status 0 (goals missed or not); 3 when a
# request failed, a new task never got a request or hawser dropped access log lines; 1 on any
# other failure; 2 on bad settings.
set -euo pipefail

BASE=${BENCH_BASE_REPLICAS:-2}
CYCLES=${BENCH_CYCLES:-6}
SCALE_BY=${BENCH_SCALE_BY:-3}
LISTEN_DELAY=${BENCH_LISTEN_DELAY_MS:-0}
SIGTERM_DELAY_MS=${BENCH_SIGTERM_DELAY_MS:-1000}
HOLD_MS=${BENCH_HOLD_MS:-1000}
CONNECTIONS=${BENCH_CONNECTIONS:-8}
PACE_MS=${BENCH_PACE_MS:-4}
ROUTE_TIMEOUT=${BENCH_ROUTE_TIMEOUT:-30}
MAX_SECONDS=${BENCH_MAX_SECONDS:-600}
HEALTH_INTERVAL=${BENCH_HEALTH_INTERVAL:-2s}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-10}
IDLE_TASKS=${BENCH_IDLE_TASKS:-10}
HOST_HEADER=bench.test

for v in BASE CYCLES SCALE_BY LISTEN_DELAY SIGTERM_DELAY_MS HOLD_MS CONNECTIONS PACE_MS ROUTE_TIMEOUT MAX_SECONDS \
    IDLE_SECONDS IDLE_TASKS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((BASE >= 1 && CYCLES >= 1 && SCALE_BY >= 1 && CONNECTIONS >= 1 && ROUTE_TIMEOUT >= 1 && MAX_SECONDS >= 10)) \
    || { echo "$0: BENCH_BASE_REPLICAS, BENCH_CYCLES, BENCH_SCALE_BY, BENCH_CONNECTIONS must be >= 1" >&2; exit 2; }
[[ $HEALTH_INTERVAL =~ ^[0-9]+(ms|s|m)$ ]] \
    || { echo "$0: BENCH_HEALTH_INTERVAL must look like 500ms, 2s or 1m, got '$HEALTH_INTERVAL'" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # note, die, ms_since, secs_since, free_port, sleep_ms, bench_* (see there)

# --- cleanup ------------------------------------------------------------------------------
bench_names dls
SVC="${PREFIX}-web"
TMP=""
NET_CREATED=0
IMAGE_BUILT=0
SWARM_CREATED=0
SERVICE_CREATED=0
HAWSER_PID=""
WRK_PID=""
EVENTS_PID=""

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n "$WRK_PID" ]] && stop_pid "$WRK_PID" INT 3
    [[ -n "$EVENTS_PID" ]] && stop_pid "$EVENTS_PID" TERM 3
    ((SERVICE_CREATED)) && bench_service_rm "$SVC"
    bench_remove_docker
    bench_swarm_leave
    # SIGINT: pingora's fast shutdown (SIGTERM would wait out the grace period).
    [[ -n "$HAWSER_PID" ]] && stop_pid "$HAWSER_PID" INT 10
    bench_end_tmp_log "$rc" "${TMPDIR:-/tmp}/hawser-dls-${RUN_ID}.log"
}

# --- traps, prerequisites, temp dir -------------------------------------------------------
bench_access_log_setup dls

bench_hawser_binary
bench_backend_image
IMAGE_ID=$(bench_image_id)
bench_swarm_join

# The daemon's own kill times (the service's containers carry the run's label). --since
# replays what happened before the subscription took effect.
docker events --since "$EPOCHREALTIME" --filter "label=${RUN_LABEL}=${RUN_ID}" --filter type=container \
    --format '{{json .}}' >"$TMP/events.jsonl" 2>"$TMP/events.err" </dev/null &
EVENTS_PID=$!

# --- service ------------------------------------------------------------------------------
t=$EPOCHREALTIME
SERVICE_CREATED=1
timeout 60 docker service create -d -q --name "$SVC" \
    --label "${RUN_LABEL}=${RUN_ID}" --container-label "${RUN_LABEL}=${RUN_ID}" \
    --label "${PREFIX}.enable=true" --label "${PREFIX}.host=${HOST_HEADER}" \
    --endpoint-mode dnsrr --publish mode=host,target=80 --replicas "$BASE" \
    -e "LISTEN_DELAY_MS=$LISTEN_DELAY" -e "SIGTERM_DELAY_MS=$SIGTERM_DELAY_MS" \
    "$IMAGE_ID" </dev/null >/dev/null 2>"$TMP/service.err" || { cat "$TMP/service.err" >&2; die "docker service create failed"; }

# "ID NAME PORT STATE UNIX_NANOS CONTAINER_ID" of the tasks whose desired state is running.
running_tasks() {
    local ids
    mapfile -t ids < <(timeout 30 docker service ps -q --no-trunc --filter desired-state=running "$SVC" </dev/null)
    ((${#ids[@]})) || return 0
    timeout 30 docker inspect -f '{{.ID}} {{.Slot}} {{range $i, $p := .Status.PortStatus.Ports}}{{if eq $i 0}}{{$p.PublishedPort}}{{end}}{{end}} {{.Status.State}} {{.Status.Timestamp.UnixNano}} {{if .Status.ContainerStatus}}{{.Status.ContainerStatus.ContainerID}}{{end}}' \
        "${ids[@]}" </dev/null | awk -v svc="$SVC" '{ $2 = svc "." $2; print }'
}

# Waits until exactly N tasks are desired running and run (with a published port and a
# container); leaves their lines in TASKS.
wait_running() { # n what
    local t0=$EPOCHREALTIME
    while :; do
        TASKS=$(running_tasks)
        if (($(awk '$4 == "running" && $3 ~ /^[0-9]+$/ && $6 != ""' <<<"$TASKS" | wc -l) == $1)) \
            && (($(wc -l <<<"$TASKS") == $1)); then
            return 0
        fi
        (($(ms_since "$t0") < ROUTE_TIMEOUT * 1000)) || die "$2: not $1 running tasks within ${ROUTE_TIMEOUT} s: $TASKS"
        sleep 0.1
    done
}
wait_running "$BASE" "service create"
note "service $SVC: $BASE tasks running ($(secs_since "$t") s)"

# --- hawser -------------------------------------------------------------------------------
bench_start_hawser_access_log "{label_prefix: $PREFIX, mode: swarm}"

# Waits until hawser's backends of the service are exactly NAMES, all ready. Polls every
# 25 ms with as few processes as it can: the machine's CPU is what the figures are made of.
wait_backends() { # what names...
    local what=$1 t0=$EPOCHREALTIME want have
    shift
    want=$(printf '%s ready\n' "$@" | sort)
    while :; do
        kill -0 "$HAWSER_PID" 2>/dev/null || die "hawser exited"
        [[ -z $WRK_PID ]] || kill -0 "$WRK_PID" 2>/dev/null || die "wrk ended early (BENCH_MAX_SECONDS=$MAX_SECONDS too short?)"
        have=$(bench_backend_states | grep -F "$SVC." | sort || true)
        [[ $have != "$want" ]] || return 0
        (($(ms_since "$t0") < ROUTE_TIMEOUT * 1000)) \
            || die "$what: hawser's backends are '$(tr '\n' ' ' <<<"$have")', not '$(tr '\n' ' ' <<<"$want")' after ${ROUTE_TIMEOUT} s"
        sleep 0.025
    done
}
task_names() { awk '{print $2}' <<<"$1"; }

t=$EPOCHREALTIME
mapfile -t names < <(task_names "$TASKS")
wait_backends "hawser start" "${names[@]}"
# Its proxy listener too (the admin API may answer first).
bench_wait_http_200 "$t" "on 127.0.0.1:$PORT"
note "hawser pid $HAWSER_PID on 127.0.0.1:$PORT (admin $ADMIN_PORT): $BASE tasks ready ($(secs_since "$t") s)"

# --- load ---------------------------------------------------------------------------------
CPU0=$(proc_cpu_ticks "$HAWSER_PID")
bench_wrk_paced

# --- cycles -------------------------------------------------------------------------------
: >"$TMP/new.txt"                # cycle id name port running_nanos container listening_secs
: >"$TMP/removed.txt"            # cycle id name port container
: >"$TMP/timeline.txt"           # cycle up|down epoch-seconds
declare -A SEEN=()
while read -r id _; do SEEN[$id]=1; done <<<"$TASKS"
hold() { sleep_ms "$HOLD_MS"; } # fixed pacing
UP=$((BASE + SCALE_BY))
for ((c = 1; c <= CYCLES; c++)); do
    t=$EPOCHREALTIME
    echo "$c up $EPOCHREALTIME" >>"$TMP/timeline.txt"
    timeout 60 docker service scale -d "$SVC=$UP" </dev/null >/dev/null 2>&1 || die "docker service scale $SVC=$UP failed"
    wait_running "$UP" "cycle $c up"
    mapfile -t names < <(task_names "$TASKS")
    wait_backends "cycle $c up" "${names[@]}"
    ready=$(secs_since "$t")
    while read -r id name port state nanos cid; do
        [[ -z ${SEEN[$id]:-} ]] || continue
        SEEN[$id]=1
        bench_listening_time "$cid" "task $name"
        echo "$c $id $name $port $nanos $cid $LISTENING" >>"$TMP/new.txt"
    done <<<"$TASKS"
    before=$TASKS
    hold
    echo "$c down $EPOCHREALTIME" >>"$TMP/timeline.txt"
    timeout 60 docker service scale -d "$SVC=$BASE" </dev/null >/dev/null 2>&1 || die "docker service scale $SVC=$BASE failed"
    wait_running "$BASE" "cycle $c down"
    declare -A stay=()
    while read -r id _; do stay[$id]=1; done <<<"$TASKS"
    while read -r id name port state nanos cid; do
        [[ -n ${stay[$id]:-} ]] || echo "$c $id $name $port $cid" >>"$TMP/removed.txt"
    done <<<"$before"
    unset stay
    mapfile -t names < <(task_names "$TASKS")
    wait_backends "cycle $c down" "${names[@]}"
    t1=$EPOCHREALTIME
    while (($(docker ps -q --filter "label=${RUN_LABEL}=${RUN_ID}" </dev/null | wc -l) != BASE)); do
        (($(ms_since "$t1") < ROUTE_TIMEOUT * 1000)) || die "cycle $c: the removed tasks' containers still run after ${ROUTE_TIMEOUT} s"
        sleep 0.1
    done
    note "cycle $c: +$SCALE_BY tasks all ready in hawser at $ready s, removed and gone at $(secs_since "$t") s"
done

# --- collect ------------------------------------------------------------------------------
WRK_STOP=$EPOCHREALTIME
stop_pid "$WRK_PID" INT 5 # wrk prints its summary on SIGINT
WRK_PID=""
CPU1=$(proc_cpu_ticks "$HAWSER_PID")
bench_wrk_collect
REMOVED=$(wc -l <"$TMP/removed.txt")
t=$EPOCHREALTIME
while (($(grep -c '"signal":"15"' "$TMP/events.jsonl" || true) < REMOVED)); do
    (($(ms_since "$t") < 10000)) || die "docker events: fewer than $REMOVED kill events after 10 s ($(cat "$TMP/events.err"))"
    sleep 0.1
done
stop_pid "$EVENTS_PID" TERM 3
EVENTS_PID=""

# --- idle CPU: the cost of the poll rounds --------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# CPU time of all of hawser's threads in ns (/proc/PID/task/*/schedstat, first field): the
# 10 ms ticks of /proc/PID/stat are too coarse for an idle process.
cpu_ns() { cat /proc/"$HAWSER_PID"/task/*/schedstat 2>/dev/null | awk '{n += $1} END {printf "%.0f\n", n}'; } # %d: mawk caps it at 2^31-1
idle_cpu() { # tasks
    local a b na nb
    a=$(proc_cpu_ticks "$HAWSER_PID") na=$(cpu_ns)
    sleep "$IDLE_SECONDS" # the measurement's length, not a synchronisation
    b=$(proc_cpu_ticks "$HAWSER_PID") nb=$(cpu_ns)
    awk -v a="$a" -v b="$b" -v na="$na" -v nb="$nb" -v hz="$CLK_TCK" -v s="$IDLE_SECONDS" -v n="$1" 'BEGIN {
        split(a, x, " "); split(b, y, " ")
        u = (y[1] - x[1]) * 1000 / hz; k = (y[2] - x[2]) * 1000 / hz
        printf "idle_cpu tasks=%d seconds=%d user_ms=%.0f system_ms=%.0f (%.0f ms ticks) total_ms=%.1f per_second_ms=%.2f (one poll round a second, health checks included)\n",
            n, s, u, k, 1000 / hz, (nb - na) / 1e6, (nb - na) / 1e6 / s }'
}
idle_cpu "$BASE" >"$TMP/idle.txt"
timeout 60 docker service scale -d "$SVC=$IDLE_TASKS" </dev/null >/dev/null 2>&1 || die "docker service scale $SVC=$IDLE_TASKS failed"
wait_running "$IDLE_TASKS" "idle scale"
mapfile -t names < <(task_names "$TASKS")
wait_backends "idle scale" "${names[@]}"
idle_cpu "$IDLE_TASKS" >>"$TMP/idle.txt"

# --- analysis -----------------------------------------------------------------------------
{
    echo "$BENCH_PY_ACCESS_LOG"
    cat <<'PY'
tmp, wrk_bad, dropped, cpu0, cpu1, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6])
wrk_stop = float(sys.argv[7])

timeline = {}
for line in open(f"{tmp}/timeline.txt"):
    c, what, t = line.split()
    timeline[(int(c), what)] = float(t)
new, removed = [], []
for line in open(f"{tmp}/new.txt"):
    c, tid, name, port, nanos, cid, listening = line.split()
    new.append(dict(cycle=int(c), id=tid, name=name, port=port, running=int(nanos) / 1e9, cid=cid, listening=float(listening)))
for line in open(f"{tmp}/removed.txt"):
    c, tid, name, port, cid = line.split()
    removed.append(dict(cycle=int(c), id=tid, name=name, port=port, cid=cid))
sigterm = {}
for line in open(f"{tmp}/events.jsonl"):
    e = json.loads(line)
    attrs = e.get("Actor", {}).get("Attributes", {})
    if e.get("Action") == "kill" and attrs.get("signal") == "15":
        sigterm.setdefault(e.get("Actor", {}).get("ID"), e["timeNano"] / 1e9)

# Per task (backend name, upstream port): its first and last request, hawser's receive time.
first, last = {}, {}
requests = failed = retried = cut = 0
failures = {}
for line, e in access_log(f"{tmp}/access.jsonl"):
    requests += 1
    if e["status"] == 0 and epoch(e["time"]) >= wrk_stop - 0.001:
        cut += 1  # no answer because wrk closed its connections when it was stopped
    elif not 200 <= e["status"] < 300:
        note(f"not 2xx: {line.strip()}")
        failed += 1
        key = (e["status"], e["backend"] or "-")
        failures[key] = failures.get(key, 0) + 1
    if e["retries"]:
        retried += 1
    key = (e["backend"], (e.get("upstream") or "").rsplit(":", 1)[-1])
    t = epoch(e["time"]) - e["duration_ms"] / 1e3
    if key not in first or t < first[key]:
        first[key] = t
    if key not in last or t > last[key]:
        last[key] = t

rows = []
def row(label, values, goal=""):
    if not values:
        rows.append((label, 0, "-", "-", "-", "-", goal))
        return
    rows.append((label, len(values), "%.0f" % min(values), "%.0f" % pct(values, 50), "%.0f" % pct(values, 99),
                 "%.0f" % max(values), goal))

key = lambda t: (t["name"], t["port"])
never = [t for t in new if key(t) not in first]
got = [t for t in new if key(t) in first]
run_first = [(first[key(t)] - t["running"]) * 1e3 for t in got]
p99 = pct(run_first, 99) if run_first else None
row("running->first_request", run_first,
    "" if p99 is None else "p99<=1500 " + ("met" if p99 <= 1500 else "MISSED"))
row("listening->first_request", [(first[key(t)] - t["listening"]) * 1e3 for t in got])
row("scale_up->first_request", [(first[key(t)] - timeline[(t["cycle"], "up")]) * 1e3 for t in got])
served = [t for t in removed if key(t) in last]
row("scale_down->last_request", [(last[key(t)] - timeline[(t["cycle"], "down")]) * 1e3 for t in served])
margins = [(sigterm[t["cid"]] - last[key(t)]) * 1e3 for t in served if t["cid"] in sigterm]
before = sum(1 for m in margins if m > 0)
row("last_request->sigterm", margins, "all > 0 " + ("met" if margins and before == len(margins) else "MISSED"))
row("scale_down->sigterm", [(sigterm[t["cid"]] - timeline[(t["cycle"], "down")]) * 1e3 for t in removed if t["cid"] in sigterm])

fmt = "%-26s %4s %8s %8s %8s %8s  %s"
print(fmt % ("measure", "n", "min_ms", "p50_ms", "p99_ms", "max_ms", "goal"))
for r in rows:
    print(fmt % r)
n = len(margins)
print(f"removed_before_sigterm={before}/{n} ({100 * before / n if n else 0:.0f} %)")
no_kill = [t["name"] for t in served if t["cid"] not in sigterm]
if no_kill:
    note(f"{len(no_kill)} removed task(s) without a kill (signal 15) event: {' '.join(no_kill)}")
unserved = [t["name"] for t in removed if key(t) not in last]
if unserved:
    note(f"{len(unserved)} removed task(s) never got a request: {' '.join(unserved)}")

u0, s0 = map(int, cpu0.split())
u1, s1 = map(int, cpu1.split())
if requests:
    print("hawser_cpu_per_request user_us=%.1f system_us=%.1f (over %d requests, %.0f ms resolution of each sum)"
          % ((u1 - u0) * 1e6 / hz / requests, (s1 - s0) * 1e6 / hz / requests, requests, 1000 / hz))
for line in open(f"{tmp}/idle.txt"):
    print(line, end="")

note(f"hawser access log: {requests} requests, {failed} not 2xx, {retried} retried, {cut} cut short when wrk was stopped; "
     f"wrk: {wrk_bad} non-2xx or socket errors")
for (status, b), k in sorted(failures.items(), key=lambda kv: -kv[1])[:10]:
    note(f"  {k} x status {status} (backend {b})")
if never:
    note(f"{len(never)} new task(s) never got a request: {' '.join(t['name'] for t in never)}")
sys.exit(3 if failed or wrk_bad or never or dropped else 0)
PY
} >"$TMP/analyse.py"
python3 "$TMP/analyse.py" "$TMP" "$WRK_BAD" "${DROPPED%%.*}" "$CPU0" "$CPU1" "$CLK_TCK" "$WRK_STOP" || {
    rc=$?
    ((rc == 3)) || die "the analysis failed"
    exit 3
}
