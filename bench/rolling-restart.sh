#!/usr/bin/env bash
# Rolling-restart benchmark: continuous HTTP load (wrk) through hawser against 3 replicas of
# the test backend (tests/support/backend.rs, built into a FROM-scratch image), while the
# replicas are replaced or killed. Prints one result line per variant:
#
#   variant=<name> requests=<n> non2xx=<n> errors=<n>
#
# Variants:
#   a  a-serve-after-sigterm  replace all 3 one by one (start new -> wait until routed ->
#                             docker stop old); backends keep serving SIGTERM_DELAY_MS after
#                             SIGTERM, then exit
#   b  b-exit-on-sigterm      same sequence; backends exit at once on SIGTERM
#   c  c-sigkill              docker kill -s KILL one of the 3 replicas in the middle of the load
#
# Goal: non2xx=0 and errors=0 in every variant (c with GET load, which this is). wrk's counts
# are reported as they are: no client-side retries. Exit status: 0 when every variant run met
# the goal, 3 when one did not, 1 on any other failure.
#
# Everything the script creates (network, containers, image tag, hawser process, temp files)
# carries a unique run id and is removed on every exit (also Ctrl-C and failure). Only the
# hawser log is kept; its path is printed. Context lines start with '#'.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 [-h] [a|b|c ...]

Runs the chosen variants (default: a b c) under wrk load through hawser and prints
  variant=<name> requests=<n> non2xx=<n> errors=<n>
per variant; other lines start with '#'. Exit status 3 when a variant saw non-2xx
answers or socket errors.
  a  a-serve-after-sigterm   rolling replace, backends serve \$BENCH_SIGTERM_DELAY_MS after SIGTERM
  b  b-exit-on-sigterm       rolling replace, backends exit at once on SIGTERM
  c  c-sigkill               docker kill -s KILL one replica mid-load

Environment (defaults in brackets):
  BENCH_DURATION         wrk duration of variants a and b, seconds [25]
  BENCH_KILL_DURATION    wrk duration of variant c, seconds [15]
  BENCH_KILL_AT          seconds into the load at which c kills a replica [half of c's duration]
  BENCH_WARMUP           seconds of load before the first replacement [3]
  BENCH_SIGTERM_DELAY_MS how long a's backends keep serving after SIGTERM [3000]
  BENCH_THREADS          wrk -t [1]
  BENCH_CONNECTIONS      wrk -c [32]
  BENCH_WRK_TIMEOUT      wrk --timeout (slower responses count as timeout errors) [2s]
  BENCH_ROUTE_TIMEOUT    longest wait for a backend to be routed, seconds [20]
  BENCH_HEALTH_INTERVAL  hawser health_check.interval [1s]
  HAWSER_BIN             use this hawser binary instead of 'cargo build --release'
EOF
}

VARIANTS=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        a | b | c) VARIANTS+=("$arg") ;;
        *) echo "$0: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done
((${#VARIANTS[@]})) || VARIANTS=(a b c)

DURATION=${BENCH_DURATION:-25}
KILL_DURATION=${BENCH_KILL_DURATION:-15}
KILL_AT=${BENCH_KILL_AT:-$((KILL_DURATION / 2))}
WARMUP=${BENCH_WARMUP:-3}
SIGTERM_DELAY_MS=${BENCH_SIGTERM_DELAY_MS:-3000}
THREADS=${BENCH_THREADS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-2s}
ROUTE_TIMEOUT=${BENCH_ROUTE_TIMEOUT:-20}
HEALTH_INTERVAL=${BENCH_HEALTH_INTERVAL:-1s}
HOST_HEADER=bench.test

for v in DURATION KILL_DURATION KILL_AT WARMUP SIGTERM_DELAY_MS THREADS CONNECTIONS ROUTE_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((KILL_AT < KILL_DURATION)) || { echo "$0: BENCH_KILL_AT must be below BENCH_KILL_DURATION" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # note, die, ms_since, secs_since, free_port, at, load_running, bench_* (see there)

# --- cleanup, prerequisites, hawser binary, backend image -----------------------------------
cleanup() { bench_cleanup_wrk_hawser $?; }
bench_wrk_hawser_setup rr

NET_CREATED=1
docker network create --label "${RUN_LABEL}=${RUN_ID}" "$NET" >/dev/null </dev/null \
    || die "docker network create $NET failed"
note "network $NET, hawser label prefix $PREFIX"

# --- hawser -------------------------------------------------------------------------------
PORT=0
bench_start_hawser "" "for the empty service"

# --- helpers for a variant ----------------------------------------------------------------
VARIANT=""
MISSED=()
# bench_wrk_finish, and the routing probes' count when they saw a non-200 during the load.
finish_load() { # variant-name
    bench_wrk_finish "$1" "raise BENCH_DURATION" \
        "$( ((PROBE_NON200 == 0)) || echo "the routing probes (curl) got $PROBE_NON200 non-200 answers during the load")"
}
run_backend() { # name [extra docker args...]
    local name=$1
    shift
    docker run -d --name "$name" --network "$NET" \
        --label "${RUN_LABEL}=${RUN_ID}" --label "${RUN_LABEL}.variant=${VARIANT}" \
        --label "${PREFIX}.enable=true" --label "${PREFIX}.host=${HOST_HEADER}" \
        --label "${PREFIX}.service=app" \
        -e "NAME=$name" "$@" "$IMAGE" </dev/null >/dev/null || die "docker run $name failed"
}

# One GET through hawser; sets PROBE_BACKEND to its X-Backend, or "<status>" when the answer
# is not a 200. Counts the non-200 answers these probes get while wrk runs (they are not part
# of wrk's counts; before the load, 503 until the first backend is ready is expected).
PROBE_NON200=0
PROBE_BACKEND=""
probe() {
    local head code
    head=$(curl -s -o /dev/null -D - --max-time 2 -H "Host: $HOST_HEADER" "http://127.0.0.1:$PORT/" 2>/dev/null | tr -d '\r') || true
    code=$(awk 'NR==1 {print $2}' <<<"$head")
    if [[ "$code" == 200 ]]; then
        PROBE_BACKEND=$(awk -F': *' 'tolower($1)=="x-backend" {print $2}' <<<"$head")
    else
        PROBE_BACKEND="<${code:-no answer}>"
        if [[ -n "$WRK_PID" ]]; then
            PROBE_NON200=$((PROBE_NON200 + 1))
            at "routing probe got ${code:-no answer}"
        fi
    fi
}

# Waits until every named container has answered a request through hawser.
wait_routed() {
    local -A pending=()
    local n b t0=$EPOCHREALTIME i=0
    for n in "$@"; do pending[$n]=1; done
    while ((${#pending[@]})); do
        if (($(ms_since "$t0") > ROUTE_TIMEOUT * 1000)); then
            for n in "${!pending[@]}"; do
                note "not routed: $n (state: $(docker inspect -f '{{.State.Status}}' "$n" 2>/dev/null)); its log:"
                docker logs --tail 20 "$n" 2>&1 | sed 's/^/#   /' >&2
            done
            die "variant $VARIANT: ${!pending[*]} not routed within ${ROUTE_TIMEOUT} s (hawser log: $HAWSER_LOG)"
        fi
        probe
        b=$PROBE_BACKEND
        if [[ -n "$b" && -n "${pending[$b]+x}" ]]; then unset 'pending[$b]'; fi
        # Every second, make sure the containers we wait for are still running.
        if ((++i % 20 == 0)); then
            for n in "${!pending[@]}"; do
                [[ $(docker inspect -f '{{.State.Running}}' "$n" 2>/dev/null) == true ]] \
                    || die "variant $VARIANT: container $n is not running: $(docker logs --tail 5 "$n" 2>&1)"
            done
        fi
        ((${#pending[@]})) && sleep 0.05
    done
    return 0
}

remove_variant_containers() {
    local ids
    ids=$(docker ps -aq --filter "label=${RUN_LABEL}.variant=${VARIANT}" --filter "label=${RUN_LABEL}=${RUN_ID}")
    [[ -z "$ids" ]] || docker rm -f -v $ids >/dev/null 2>&1 </dev/null || true
}

# --- variants -----------------------------------------------------------------------------
variant_replace() { # letter name [extra docker run args...]
    VARIANT=$1
    local name=$2 i t old new
    shift 2
    local vt0=$EPOCHREALTIME
    PROBE_NON200=0
    note "=== variant $name"
    local olds=() news=()
    for i in 1 2 3; do
        olds+=("${PREFIX}-${VARIANT}-${i}")
        news+=("${PREFIX}-${VARIANT}-${i}-new")
    done
    t=$EPOCHREALTIME
    for old in "${olds[@]}"; do run_backend "$old" "$@"; done
    wait_routed "${olds[@]}"
    note "3 replicas started and routed in $(secs_since "$t") s"

    bench_wrk_start "$DURATION"
    sleep "$WARMUP"
    for i in 0 1 2; do
        old=${olds[$i]} new=${news[$i]}
        load_running || break
        t=$EPOCHREALTIME
        run_backend "$new" "$@"
        at "docker run $new ($(secs_since "$t") s)"
        t=$EPOCHREALTIME
        wait_routed "$new"
        at "$new routed ($(secs_since "$t") s after docker run returned)"
        t=$EPOCHREALTIME
        docker stop "$old" >/dev/null </dev/null
        at "docker stop $old returned ($(secs_since "$t") s)"
    done
    at "sequence done; waiting for wrk"
    finish_load "$name"
    remove_variant_containers
    note "variant $name took $(secs_since "$vt0") s"
}

variant_kill() {
    VARIANT=c
    local name=c-sigkill i t victim
    local vt0=$EPOCHREALTIME
    PROBE_NON200=0
    note "=== variant $name"
    local names=()
    for i in 1 2 3; do names+=("${PREFIX}-${VARIANT}-${i}"); done
    t=$EPOCHREALTIME
    for i in "${names[@]}"; do run_backend "$i"; done
    wait_routed "${names[@]}"
    note "3 replicas started and routed in $(secs_since "$t") s"

    bench_wrk_start "$KILL_DURATION"
    sleep "$KILL_AT"
    victim=${names[1]}
    t=$EPOCHREALTIME
    load_running && docker kill -s KILL "$victim" >/dev/null </dev/null
    at "docker kill -s KILL $victim returned ($(secs_since "$t") s)"
    finish_load "$name"
    remove_variant_containers
    note "variant $name took $(secs_since "$vt0") s"
}

for v in "${VARIANTS[@]}"; do
    case "$v" in
        a) variant_replace a a-serve-after-sigterm -e "SIGTERM_DELAY_MS=$SIGTERM_DELAY_MS" ;;
        b) variant_replace b b-exit-on-sigterm ;;
        c) variant_kill ;;
    esac
done

# Context from hawser's log (container names blanked), then exit 3 when a variant missed.
bench_warnings_summary 's/'"$PREFIX"'-[abc]-[0-9](-new)?/<container>/g'
bench_exit_missed
