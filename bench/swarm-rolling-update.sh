#!/usr/bin/env bash
# Swarm rolling updates under load: continuous HTTP load (wrk) through a host-run hawser
# against the tasks of a Swarm service (the test backend, tests/support/backend.rs, in a
# FROM-scratch image), while Swarm replaces them or one is killed. The Swarm counterpart of
# bench/rolling-restart.sh; prints one result line per variant in its format:
#
#   variant=<name> requests=<n> non2xx=<n> errors=<n>
#
# Variants (each on a fresh service of BENCH_REPLICAS tasks, removed afterwards):
#   stop-first   swarm-stop-first   docker service update --force --update-order stop-first
#                                   --update-parallelism 1: Swarm stops an old task, then
#                                   starts its replacement, one task after the other
#   start-first  swarm-start-first  the same with --update-order start-first: the new task
#                                   runs before the old one is stopped
#   kill         swarm-kill         docker kill (SIGKILL) of one task's container mid-load;
#                                   Swarm starts a replacement
# The tasks exit at once on SIGTERM (BENCH_SIGTERM_DELAY_MS=0): a request hawser sends after
# the stop signal fails. hawser must stop choosing a task when the manager marks it for
# shutdown (its poll) or at its container's `kill` event, whichever it sees first.
#
# Goal: non2xx=0 and errors=0 in every variant. wrk's counts are reported as they are: no
# client-side retries. Exit status: 0 when every variant met the goal, 3 when one did not,
# 1 on any other failure, 2 on bad arguments.
#
# The swarm: a single-node one (`docker swarm init --advertise-addr 127.0.0.1`) unless the
# engine is in a swarm already; a swarm the script made it leaves again on exit (and removes
# the docker_gwbridge network that leaving leaves behind). Services are created from the
# image's id (no registry here; a node skips the pull only for an id), endpoint mode dnsrr,
# `--publish mode=host,target=80`: the host cannot reach overlay IPs, so hawser routes to
# 127.0.0.1:<published port> of each task.
#
# Everything the script creates (services, their containers, image tag, hawser process, temp
# files, the swarm when it made it) carries a unique run id and is removed on every exit
# (also Ctrl-C and failure). hawser runs with RUST_LOG=info,hawser=debug; its log is kept and
# its path printed. Context lines start with '#'.
set -euo pipefail

usage() {
    cat <<EOF
usage: $0 [-h] [stop-first|start-first|kill ...]

Runs the chosen variants (default: all three) under wrk load through hawser and prints
  variant=<name> requests=<n> non2xx=<n> errors=<n>
per variant; other lines start with '#'. Exit status 3 when a variant saw non-2xx
answers or socket errors.

Environment (defaults in brackets):
  BENCH_REPLICAS          tasks of the service [3]
  BENCH_DURATION          wrk duration of the update variants, seconds [25]
  BENCH_KILL_DURATION     wrk duration of the kill variant, seconds [20]
  BENCH_KILL_AT           seconds into the load at which a task is killed [5]
                          (Swarm restarts it after its restart delay, 5 s)
  BENCH_WARMUP            seconds of load before the update [3]
  BENCH_SIGTERM_DELAY_MS  how long the tasks keep serving after SIGTERM [0: they exit at once]
  BENCH_THREADS           wrk -t [1]
  BENCH_CONNECTIONS       wrk -c [32]
  BENCH_WRK_TIMEOUT       wrk --timeout (slower responses count as timeout errors) [2s]
  BENCH_ROUTE_TIMEOUT     longest wait for tasks to run or be ready, and for the update, s [60]
  BENCH_HEALTH_INTERVAL   hawser health_check.interval [1s]
  HAWSER_BIN              use this hawser binary instead of 'cargo build --release'
  RUST_LOG                hawser's log filter [info,hawser=debug]
EOF
}

VARIANTS=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        stop-first | start-first | kill) VARIANTS+=("$arg") ;;
        *) echo "$0: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done
((${#VARIANTS[@]})) || VARIANTS=(stop-first start-first kill)

REPLICAS=${BENCH_REPLICAS:-3}
DURATION=${BENCH_DURATION:-25}
KILL_DURATION=${BENCH_KILL_DURATION:-20}
KILL_AT=${BENCH_KILL_AT:-5}
WARMUP=${BENCH_WARMUP:-3}
SIGTERM_DELAY_MS=${BENCH_SIGTERM_DELAY_MS:-0}
THREADS=${BENCH_THREADS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WRK_TIMEOUT=${BENCH_WRK_TIMEOUT:-2s}
ROUTE_TIMEOUT=${BENCH_ROUTE_TIMEOUT:-60}
HEALTH_INTERVAL=${BENCH_HEALTH_INTERVAL:-1s}
HOST_HEADER=bench.test

for v in REPLICAS DURATION KILL_DURATION KILL_AT WARMUP SIGTERM_DELAY_MS THREADS CONNECTIONS ROUTE_TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$0: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
((KILL_AT < KILL_DURATION)) || { echo "$0: BENCH_KILL_AT must be below BENCH_KILL_DURATION" >&2; exit 2; }
((REPLICAS >= 2)) || { echo "$0: BENCH_REPLICAS must be >= 2" >&2; exit 2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T_START=$EPOCHREALTIME

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh" # note, die, ms_since, secs_since, free_port, at, load_running, bench_* (see there)

# --- cleanup, prerequisites, hawser binary, backend image, swarm ---------------------------
SWARM_CREATED=0
SVC=""
cleanup() { bench_cleanup_wrk_hawser $?; }
bench_wrk_hawser_setup sru
IMAGE_ID=$(bench_image_id)
bench_swarm_join
note "hawser label prefix $PREFIX"

# --- hawser -------------------------------------------------------------------------------
PORT=0
bench_start_hawser "info,hawser=debug" "with no service yet" "mode: swarm"

# --- helpers for a variant ----------------------------------------------------------------
# The admin API's backends of $SVC, one "name state" line each, sorted.
backend_states() { bench_backend_states | grep -F "$SVC." | sort || true; }

# Waits until hawser has exactly BENCH_REPLICAS backends of $SVC, SVC.1 .. SVC.N, all ready.
wait_all_ready() { # what
    local t0=$EPOCHREALTIME want have i
    want=$(for ((i = 1; i <= REPLICAS; i++)); do echo "$SVC.$i ready"; done | sort)
    while :; do
        kill -0 "$HAWSER_PID" 2>/dev/null || die "hawser exited (log: $HAWSER_LOG)"
        have=$(backend_states)
        [[ $have != "$want" ]] || return 0
        if (($(ms_since "$t0") > ROUTE_TIMEOUT * 1000)); then
            docker service ps --no-trunc "$SVC" 2>&1 | sed 's/^/#   /' >&2
            die "variant $VARIANT, $1: hawser's backends are '$(tr '\n' ' ' <<<"$have")' after ${ROUTE_TIMEOUT} s (log: $HAWSER_LOG)"
        fi
        sleep 0.05
    done
}

# The service's update state (updating, completed, paused, rollback_*), empty before any.
update_state() { docker service inspect -f '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$SVC" </dev/null 2>/dev/null; }

create_service() {
    local t=$EPOCHREALTIME
    SVC="${PREFIX}-${VARIANT}"
    timeout 60 docker service create -d -q --name "$SVC" \
        --label "${RUN_LABEL}=${RUN_ID}" --container-label "${RUN_LABEL}=${RUN_ID}" \
        --label "${PREFIX}.enable=true" --label "${PREFIX}.host=${HOST_HEADER}" \
        --endpoint-mode dnsrr --publish mode=host,target=80 --replicas "$REPLICAS" \
        --update-parallelism 1 --update-delay 0s --stop-grace-period 10s \
        -e "SIGTERM_DELAY_MS=$SIGTERM_DELAY_MS" \
        "$IMAGE_ID" </dev/null >/dev/null 2>"$TMP/service.err" \
        || { cat "$TMP/service.err" >&2; die "docker service create $SVC failed"; }
    wait_all_ready "service create"
    note "service $SVC: $REPLICAS tasks ready in hawser ($(secs_since "$t") s)"
}

remove_service() {
    bench_service_rm "$SVC"
    SVC=""
}

MISSED=()

# --- variants -----------------------------------------------------------------------------
variant_update() { # order
    VARIANT=$1
    local name="swarm-$1" t state vt0=$EPOCHREALTIME
    note "=== variant $name"
    create_service
    bench_wrk_start "$DURATION"
    sleep "$WARMUP" # load before the update: pacing, not synchronisation
    t=$EPOCHREALTIME
    timeout 60 docker service update -d -q --force --update-order "$1" "$SVC" </dev/null >/dev/null \
        || die "docker service update $SVC failed"
    at "docker service update --force --update-order $1 returned ($(secs_since "$t") s)"
    while state=$(update_state) && [[ $state != completed ]]; do
        [[ $state != paused && $state != rollback_* ]] || die "variant $name: the update is $state"
        (($(ms_since "$t") < ROUTE_TIMEOUT * 1000)) || die "variant $name: the update not completed after ${ROUTE_TIMEOUT} s (state '$state')"
        load_running || break
        sleep 0.1
    done
    at "update ${state:-not started} ($(secs_since "$t") s)"
    wait_all_ready "after the update"
    at "all $REPLICAS new tasks ready in hawser ($(secs_since "$t") s after the update began); waiting for wrk"
    bench_wrk_finish "$name" "raise the duration"
    note "hawser's log on $SVC: $(grep -F "$SVC." "$HAWSER_LOG" | grep -c 'leaving: its task is being shut down' || true) tasks marked leaving by a poll, $(grep -F "$SVC." "$HAWSER_LOG" | grep -c 'Draining (signal' || true) draining by their kill event"
    remove_service
    note "variant $name took $(secs_since "$vt0") s"
}

variant_kill() {
    VARIANT=kill
    local name=swarm-kill t victim vt0=$EPOCHREALTIME
    note "=== variant $name"
    create_service
    bench_wrk_start "$KILL_DURATION"
    sleep "$KILL_AT" # pacing
    victim=$(docker ps -q --filter "label=com.docker.swarm.service.name=$SVC" </dev/null | head -n1)
    [[ -n $victim ]] || die "variant $name: no task container of $SVC"
    t=$EPOCHREALTIME
    load_running && docker kill "$victim" >/dev/null </dev/null
    at "docker kill $victim returned ($(secs_since "$t") s)"
    # The replacement's container running (the names stay: it takes the killed task's slot).
    while [[ $(docker ps -q --filter "label=com.docker.swarm.service.name=$SVC" </dev/null | grep -vc "^$victim" || true) != "$REPLICAS" ]]; do
        (($(ms_since "$t") < ROUTE_TIMEOUT * 1000)) || die "variant $name: no replacement task running after ${ROUTE_TIMEOUT} s"
        sleep 0.1
    done
    wait_all_ready "after the kill"
    at "the replacement task ready in hawser ($(secs_since "$t") s after the kill); waiting for wrk"
    bench_wrk_finish "$name" "raise the duration"
    remove_service
    note "variant $name took $(secs_since "$vt0") s"
}

for v in "${VARIANTS[@]}"; do
    case "$v" in
        stop-first | start-first) variant_update "$v" ;;
        kill) variant_kill ;;
    esac
done

# Context from hawser's log (task names blanked), then exit 3 when a variant missed.
bench_warnings_summary 's/'"$PREFIX"'-[a-z-]+\.[0-9]+/<task>/g'
bench_exit_missed
