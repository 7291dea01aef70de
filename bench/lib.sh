# shellcheck shell=bash
# Shared by the bench/*.sh scripts, which source it after setting REPO; not run on its own.
# Every function reports on stderr, in the scripts' style: context lines start with '#'.
#
#   bench_names TAG         sets this run's names: RUN_ID (TAG + time + pid + random),
#                           RUN_LABEL (label key on everything the run creates, for cleanup),
#                           PREFIX (hawser label prefix no other container carries), NET, IMAGE
#   note TEXT...            a context line on stderr
#   die TEXT...             "ERROR: TEXT" on stderr, exit 1 (the caller's cleanup trap runs)
#   ms_since T / secs_since T    time since T, an $EPOCHREALTIME value: "1234" / "1.234"
#   bench_build_needs       appends to the caller's `need` array what building hawser (unless
#                           HAWSER_BIN is set) and the static test backend need
#   bench_apt_install PKG...     apt-get install (sudo -n when not root), dies on failure
#   bench_hawser_binary     sets HAWSER: $HAWSER_BIN, else `cargo build --release` of REPO
#   bench_backend_image     compiles tests/support/backend.rs statically into a FROM-scratch
#                           image $IMAGE labelled $RUN_LABEL=$RUN_ID, in $TMP/ctx; sets
#                           IMAGE_BUILT=1 first, so that cleanup removes a half-built one too
#   bench_grpc_backend_image     the same for the gRPC test backend (tests/support/grpc-backend,
#                           an HTTP/2 server on port 80), built as tests/common/grpc.rs builds
#                           it: cargo, static, in the tests' target dir (target/tmp/
#                           grpc-backend-target), so that a tested checkout builds nothing
#   bench_backends [LABEL=VALUE...]   builds the backend image (BACKEND_KIND=grpc: the gRPC
#                           one), creates network $NET and starts $BACKENDS containers on it
#                           that join hawser's service ${BACKEND_SERVICE:-app} (plus the given
#                           extra labels, unprefixed keys); sets NAMES and IPS
#   bench_wait_ready PX URL [CURL_ARG...]   waits until proxy PX (pid ${PID[PX]}) has answered
#                           200 at URL from all $BACKENDS backends (X-Backend names), at most
#                           $READY_TIMEOUT s; dies when it exits or the time is up
#   nginx_pids              "${PID[nginx]} and its worker pids", space-separated
#   bench_nginx_pidset      sets PIDSET_NGINX: ${PID[nginx]} and its worker processes; dies
#                           unless there are $WORKERS workers
#   bench_traps             runs the caller's `cleanup` on exit; INT and TERM exit 130 and 143
#                           (through it)
#   stop_pid PID SIG SECS   sends SIG to a process of this script, gives it SECS to exit, then
#                           KILL; reaps it. Nothing when it is gone already
#   bench_remove_docker     removes this run's containers (label $RUN_LABEL=$RUN_ID), and its
#                           network and image when NET_CREATED / IMAGE_BUILT say they exist
#   free_port VAR           sets VAR (e.g. PORT or 'PORT[nginx]') to a free loopback TCP port
#                           below the ephemeral range, never the same one twice in a run (a
#                           variable rather than output: $(...) would forget what it handed out)
#   run_load WHAT CMD...    runs a load client in the background until it ends, with its pid in
#                           LOAD_PID meanwhile (for the caller's cleanup to stop); its output is
#                           in $TMP/load.out; dies naming WHAT when it fails
#   to_ms V / to_secs V     a duration as wrk prints it ("612.00us", "1.23ms", "2.00s", "1.00m")
#                           in milliseconds / seconds
#   wrk_figures FILE        reads the output of `wrk --latency`; sets REQS, SECS_RUN, P50, P99
#                           (ms) and BAD (answers >= 400 plus socket errors)
#   h2load_figures FILE LOG reads h2load's output and its --log-file; sets the same variables
#                           (BAD: failed or errored requests plus 3xx-5xx answers)
#   proc_cpu_ticks PID...   "USER SYSTEM": utime and stime (/proc/PID/stat, in 1/CLK_TCK)
#                           summed over the pids; dies when one is gone
#   machine_facts           CPU model, CPU count, kernel and load average, one "key: value" a line
#   bench_swarm_join        makes the engine a single-node swarm manager (`docker swarm init
#                           --advertise-addr 127.0.0.1`) unless it is in a swarm already; sets
#                           SWARM_CREATED=1 first when it inits one; dies on a worker node
#   bench_swarm_leave       only when SWARM_CREATED=1: `docker swarm leave --force` and the
#                           docker_gwbridge network that leaving leaves behind
#   bench_service_rm NAME...     `docker service rm`, then waits (at most 30 s) until no
#                           container of this run (label $RUN_LABEL=$RUN_ID) is left, so that
#                           bench_remove_docker can remove the network and image next
#   bench_image_id          the id (sha256:...) of $IMAGE: services are created from the id,
#                           as a node skips the registry pull only for an id
#   bench_prereqs TOOL...   apt-installs the missing TOOLs (timeout: coreutils) and what
#                           bench_build_needs names (sets `need`), then dies unless the TOOLs,
#                           the docker CLI, a Docker engine and rustc are there
#   bench_wrk_hawser_setup TAG   the start of rolling-restart and swarm-rolling-update: bench_names
#                           TAG, their state (TMP, HAWSER_PID, WRK_PID, NET_CREATED, IMAGE_BUILT,
#                           HAWSER_LOG=${TMPDIR:-/tmp}/hawser-bench-$RUN_ID.log), bench_traps (the
#                           caller defines `cleanup` first), bench_prereqs wrk curl, TMP (a new temp
#                           dir), bench_hawser_binary, bench_backend_image
#   bench_cleanup_wrk_hawser RC  the cleanup of rolling-restart and swarm-rolling-update, for
#                           their EXIT/INT/TERM trap: stops wrk (WRK_PID), removes the service
#                           $SVC when set, this run's containers, network and image and the swarm
#                           it made (bench_swarm_leave), stops hawser (HAWSER_PID), then
#                           bench_end_hawser_log RC
#   bench_end_hawser_log RC the end of a cleanup whose hawser log is $HAWSER_LOG: removes $TMP,
#                           shows the log's last 40 lines when RC != 0, says where it is kept
#                           and the total runtime, exits RC
#   bench_end_tmp_log RC KEPT    the same for a hawser log in $TMP/hawser.log: its last 30 lines
#                           unless RC is 0 or 3, a copy kept as KEPT; $TMP removed unless
#                           BENCH_KEEP_DATA is set
#   bench_http_status       the status of GET http://127.0.0.1:$PORT/ with Host $HOST_HEADER
#                           (000 when nothing answers)
#   bench_start_hawser RUST_LOG_DEFAULT WHAT [DOCKER_LINE...]   picks free ports PORT and
#                           ADMIN_PORT, writes $TMP/hawser.yaml (label prefix $PREFIX, nothing
#                           exposed by default, the DOCKER_LINEs added to its docker: section, HTTP
#                           health checks on /healthz every $HEALTH_INTERVAL, rise and fall 2),
#                           checks it (-t) and starts hawser with it, logging to $HAWSER_LOG
#                           (RUST_LOG defaulting to RUST_LOG_DEFAULT unless that is empty); waits
#                           at most 15 s until it answers ("answers (<status> WHAT)"); a port
#                           taken meanwhile: other ports, 5 tries. Sets HAWSER_PID
#   bench_access_log_setup TAG   the start of discovery-latency and discovery-latency-swarm after
#                           their state: bench_traps (the caller defines `cleanup` first),
#                           bench_prereqs wrk curl python3 timeout, TMP (a new temp dir
#                           hawser-TAG.*), the load average as context
#   bench_start_hawser_access_log DOCKER_YAML    picks PORT and ADMIN_PORT and starts hawser
#                           with `docker: DOCKER_YAML`, `access_log: json` (its stdout, into
#                           $TMP/access.jsonl) and HTTP health checks every $HEALTH_INTERVAL;
#                           log $TMP/hawser.log, RUST_LOG [info]. Sets HAWSER_PID
#   bench_wait_http_200 T0 WHERE    waits until hawser answers 200 (bench_http_status), at most
#                           $ROUTE_TIMEOUT s from T0 ("does not answer 200 WHERE"); dies when it exits
#   bench_backend_states    hawser's backends as its admin API ($ADMIN_PORT) lists them, one
#                           "container_name state" line each
#   bench_wrk_start SECS    wrk --latency -t$THREADS -c$CONNECTIONS --timeout $WRK_TIMEOUT, Host
#                           $HOST_HEADER, on $PORT for SECS s in the background; output in
#                           $TMP/wrk-$VARIANT.out (WRK_OUT); sets WRK_PID and LOAD_T0
#   at TEXT...              a context line stamped with the time since LOAD_T0
#   load_running            true while wrk (WRK_PID) runs
#   bench_wrk_finish NAME HINT [NOTE]    waits for wrk (a warning ending in HINT when it ended
#                           before the sequence), prints its figures as context, then NOTE
#                           unless empty, then "variant=NAME requests=<n> non2xx=<n> errors=<n>"
#                           on stdout; adds NAME to MISSED unless non2xx and errors are 0
#   bench_wrk_paced         wrk -t1 -c$CONNECTIONS -d$MAX_SECONDS with a random delay() of
#                           0..2*$PACE_MS ms between a response and the next request; output in
#                           $TMP/wrk.out; sets WRK_PID
#   bench_wrk_collect       after the paced load stopped: sets DROPPED (hawser's dropped access
#                           log lines, /metrics) and WRK_BAD (wrk's non-2xx and socket errors),
#                           prints wrk's figures, waits until $TMP/access.jsonl stops growing
#   bench_listening_time ID WHAT     sets LISTENING to the time in the test backend's
#                           "listening on ... (unix time S)" line of container ID's log; dies
#                           naming WHAT without one
#   sleep_ms MS             sleeps MS milliseconds (pacing)
#   BENCH_PY_ACCESS_LOG     Python for the front of an analysis script over hawser's JSON access
#                           log: imports calendar, json, sys; note(*a) (a context line on stderr),
#                           pct(values, p) (nearest rank), epoch(ts) (a log time in seconds, the
#                           middle of its millisecond), access_log(path) ((line, entry) of each
#                           whole line)
#   bench_warnings_summary SED   hawser's warnings and errors in $HAWSER_LOG as context, grouped
#                           (timestamps, addresses and what the sed expression SED matches
#                           blanked), most frequent first, at most 12
#   bench_exit_missed       exits 3 with "goal missed (non-2xx or errors) in: ..." on stderr
#                           when MISSED names a variant

# shellcheck disable=SC2034 # the callers use them
bench_names() {
    RUN_ID="$1$(date +%H%M%S)$$${RANDOM}"
    RUN_LABEL="hawser-bench"
    PREFIX="hb${RUN_ID}"
    NET="hawser-bench-${RUN_ID}"
    IMAGE="hawser-bench-backend:${RUN_ID}"
}

note() { echo "# $*" >&2; }
die() {
    echo "ERROR: $*" >&2
    exit 1
}
ms_since() {
    local now=${EPOCHREALTIME/./} then=${1/./}
    echo $(((10#$now - 10#$then) / 1000))
}
secs_since() {
    local ms
    ms=$(ms_since "$1")
    printf '%d.%03d' $((ms / 1000)) $((ms % 1000))
}

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

bench_build_needs() {
    if [[ -z "${HAWSER_BIN:-}" ]]; then
        command -v cmake >/dev/null 2>&1 || need+=(cmake)
        command -v cc >/dev/null 2>&1 || need+=(build-essential)
    fi
    # The backend links glibc statically (+crt-static): it needs libc.a.
    dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q 'ok installed' || need+=(libc6-dev)
}

bench_apt_install() {
    (($#)) || return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    note "installing: $*"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q </dev/null >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" </dev/null >&2 \
        || die "apt-get install $* failed"
}

bench_hawser_binary() {
    local t=$EPOCHREALTIME
    if [[ -n "${HAWSER_BIN:-}" ]]; then
        [[ -x "$HAWSER_BIN" ]] || die "HAWSER_BIN=$HAWSER_BIN is not executable"
        HAWSER=$HAWSER_BIN
    else
        command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"
        note "cargo build --release (may wait on the build lock of another build)"
        (cd "$REPO" && cargo build --release --bin hawser </dev/null >&2) || die "cargo build --release failed"
        HAWSER="$REPO/target/release/hawser"
    fi
    note "hawser binary $HAWSER ($(secs_since "$t") s)"
}

bench_backend_image() {
    local t=$EPOCHREALTIME
    mkdir -p "$TMP/ctx"
    rustc --edition 2021 -O -C target-feature=+crt-static "$REPO/tests/support/backend.rs" \
        -o "$TMP/ctx/backend" </dev/null >&2 || die "compiling tests/support/backend.rs failed"
    bench_image_from_ctx "$t"
}

bench_grpc_backend_image() {
    local t=$EPOCHREALTIME host target_dir
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"
    host=$(rustc -vV </dev/null | sed -n 's/^host: //p')
    [[ -n $host ]] || die "rustc -vV names no host triple"
    target_dir="${CARGO_TARGET_DIR:-$REPO/target}/tmp/grpc-backend-target"
    note "cargo build of the gRPC test backend (may wait on the build lock of another build)"
    # --target: the static flag then applies to the binary only, not to build scripts.
    (cd "$REPO" && env -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --locked --quiet --target "$host" \
        --manifest-path tests/support/grpc-backend/Cargo.toml --target-dir "$target_dir" </dev/null >&2) \
        || die "building the gRPC test backend (tests/support/grpc-backend) failed"
    mkdir -p "$TMP/ctx"
    cp "$target_dir/$host/release/hawser-grpc-backend" "$TMP/ctx/backend" \
        || die "the gRPC test backend's binary is not where cargo builds it ($target_dir)"
    bench_image_from_ctx "$t"
}

# The FROM-scratch image $IMAGE of $TMP/ctx/backend; T: when building it began.
bench_image_from_ctx() {
    printf 'FROM scratch\nCOPY backend /backend\nEXPOSE 80\nENTRYPOINT ["/backend"]\n' >"$TMP/ctx/Dockerfile"
    # shellcheck disable=SC2034 # read by the caller's cleanup
    IMAGE_BUILT=1
    docker build -q --label "${RUN_LABEL}=${RUN_ID}" -t "$IMAGE" "$TMP/ctx" </dev/null >"$TMP/build.log" 2>&1 \
        || { cat "$TMP/build.log" >&2; die "docker build of the backend image failed"; }
    note "backend image $IMAGE ($(secs_since "$1") s)"
}

bench_backends() {
    local t=$EPOCHREALTIME i name ip kv
    local -a extra=()
    for kv in "$@"; do extra+=(--label "${PREFIX}.${kv}"); done
    if [[ ${BACKEND_KIND:-http} == grpc ]]; then bench_grpc_backend_image; else bench_backend_image; fi
    # shellcheck disable=SC2034 # read by the caller's cleanup
    NET_CREATED=1
    docker network create --label "${RUN_LABEL}=${RUN_ID}" "$NET" >/dev/null </dev/null \
        || die "docker network create $NET failed"
    NAMES=()
    IPS=()
    for ((i = 1; i <= BACKENDS; i++)); do
        name="${PREFIX}-b${i}"
        docker run -d --name "$name" --network "$NET" --label "${RUN_LABEL}=${RUN_ID}" \
            --label "${PREFIX}.enable=true" --label "${PREFIX}.service=${BACKEND_SERVICE:-app}" "${extra[@]}" \
            -e "NAME=$name" "$IMAGE" </dev/null >/dev/null || die "docker run $name failed"
        NAMES+=("$name")
    done
    for name in "${NAMES[@]}"; do
        ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$name" </dev/null) \
            || die "docker inspect $name failed"
        [[ $ip =~ ^[0-9]+(\.[0-9]+){3}$ ]] || die "no IP for $name on $NET (got '$ip')"
        IPS+=("$ip")
    done
    note "$BACKENDS backends (image $IMAGE, network $NET): ${IPS[*]} ($(secs_since "$t") s)"
}

bench_wait_ready() {
    local px=$1 url=$2 t0=$EPOCHREALTIME head code b
    shift 2
    local -A seen=()
    while ((${#seen[@]} < BACKENDS)); do
        kill -0 "${PID[$px]}" 2>/dev/null || die "$px exited at start"
        (($(ms_since "$t0") < READY_TIMEOUT * 1000)) \
            || die "$px did not reach all $BACKENDS backends at $url within ${READY_TIMEOUT} s (reached: ${!seen[*]})"
        head=$(curl -s -o /dev/null -D - --max-time 2 "$@" "$url" 2>/dev/null | tr -d '\r') || true
        code=$(awk 'NR==1 {print $2}' <<<"$head")
        b=$(awk -F': *' 'tolower($1)=="x-backend" {print $2}' <<<"$head")
        if [[ $code == 200 && -n $b ]]; then
            seen[$b]=1
        else
            sleep 0.05
        fi
    done
    note "$px pid ${PID[$px]} on $url: 200 from all $BACKENDS backends after $(secs_since "$t0") s"
}

nginx_pids() {
    local w
    w=$(ps -o pid= --ppid "${PID[nginx]}" 2>/dev/null | tr -s ' \n' ' ')
    echo "${PID[nginx]} $w"
}

bench_nginx_pidset() {
    local -a all
    PIDSET_NGINX=$(nginx_pids)
    read -r -a all <<<"$PIDSET_NGINX"
    ((${#all[@]} == WORKERS + 1)) || die "expected 1 nginx master and $WORKERS workers, found pids: $PIDSET_NGINX"
}

bench_traps() {
    trap cleanup EXIT
    trap 'echo "interrupted" >&2; exit 130' INT
    trap 'echo "terminated" >&2; exit 143' TERM
}

stop_pid() {
    local p=$1 sig=$2 secs=$3 i
    kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null || true; return 0; }
    kill -"$sig" "$p" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    wait "$p" 2>/dev/null || true
}

bench_remove_docker() {
    local ids=()
    mapfile -t ids < <(docker ps -aq --filter "label=${RUN_LABEL}=${RUN_ID}" 2>/dev/null)
    ((${#ids[@]} == 0)) || docker rm -f -v "${ids[@]}" >/dev/null 2>&1
    ((!NET_CREATED)) || docker network rm "$NET" >/dev/null 2>&1
    ((!IMAGE_BUILT)) || docker rmi -f "$IMAGE" >/dev/null 2>&1
    return 0
}

declare -A BENCH_TAKEN_PORTS=()
free_port() {
    local lo hi eph p tries
    read -r eph _ </proc/sys/net/ipv4/ip_local_port_range
    lo=10000 hi=$((eph - 1))
    ((hi - lo >= 1000)) || { lo=20000 hi=60000; }
    for ((tries = 0; tries < 200; tries++)); do
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        [[ -z "${BENCH_TAKEN_PORTS[$p]:-}" ]] || continue
        if command -v ss >/dev/null 2>&1; then
            [[ -z "$(ss -Hatn "sport = :$p" 2>/dev/null)" ]] || continue
        else
            ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || continue
        fi
        BENCH_TAKEN_PORTS[$p]=1
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "found no free port"
}

run_load() {
    local what=$1
    shift
    "$@" >"$TMP/load.out" 2>&1 </dev/null &
    LOAD_PID=$!
    wait "$LOAD_PID" || { LOAD_PID=""; cat "$TMP/load.out" >&2; die "$what failed"; }
    LOAD_PID=""
}

to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) ; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}
to_secs() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /ms$/) n /= 1000; else if (v ~ /m$/) n *= 60; else if (v ~ /h$/) n *= 3600
        printf "%.3f", n }'
}

# shellcheck disable=SC2034 # the callers use them
wrk_figures() {
    local out non2xx errs
    out=$(cat "$1")
    REQS=$(awk '/ requests in / {print $1}' <<<"$out")
    [[ $REQS =~ ^[0-9]+$ ]] || { echo "$out" >&2; die "cannot parse wrk's output"; }
    SECS_RUN=$(to_secs "$(awk '/ requests in / {sub(",", "", $4); print $4}' <<<"$out")")
    P50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    P99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    # wrk counts answers with a status above 399 as "Non-2xx or 3xx responses".
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' <<<"$out")
    errs=$(sed -nE 's/^ *Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+).*/\1+\2+\3+\4/p' <<<"$out")
    BAD=$((${non2xx:-0} + ${errs:-0}))
}

# shellcheck disable=SC2034 # the callers use them
h2load_figures() {
    local out failed non2xx
    out=$(cat "$1")
    # "requests: 123 total, 123 started, 123 done, 120 succeeded, 3 failed, 0 errored, 0 timeout"
    REQS=$(awk '/^requests:/ {print $8}' <<<"$out")
    [[ $REQS =~ ^[0-9]+$ ]] || { echo "$out" >&2; die "cannot parse h2load's output"; }
    # "finished in 3.00s, 41234.33 req/s, 1.23MB/s"
    SECS_RUN=$(to_secs "$(awk '/^finished in/ {sub(",", "", $3); print $3}' <<<"$out")")
    failed=$(awk '/^requests:/ {print $10 + $12 + $14}' <<<"$out")
    non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")
    BAD=$((${failed:-0} + ${non2xx:-0}))
    # The log's third column is each request's time in microseconds.
    read -r P50 P99 < <(awk '{print $3}' "$2" | sort -n | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "0 0"; exit }
        i50 = int(NR * 0.50 + 0.999999); i99 = int(NR * 0.99 + 0.999999)
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }')
}

proc_cpu_ticks() {
    local p f u=0 s=0
    local -a a
    for p in "$@"; do
        # The command name (field 2) may hold spaces and parentheses: cut up to its last ')'.
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || f=""
        [[ -n $f ]] || die "process $p vanished during the benchmark"
        read -r -a a <<<"$f"
        u=$((u + a[11])) s=$((s + a[12]))
    done
    echo "$u $s"
}

machine_facts() {
    local model
    model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null)
    [[ -n $model ]] || model=$(lscpu 2>/dev/null | awk -F': *' '/^Model name/ {print $2; exit}')
    echo "CPU: ${model:-unknown}"
    echo "CPUs (nproc): $(nproc)"
    echo "kernel: $(uname -srm)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
}

bench_swarm_join() {
    local state manager
    state=$(docker info -f '{{.Swarm.LocalNodeState}}' </dev/null) || die "docker info failed"
    if [[ $state == inactive ]]; then
        # shellcheck disable=SC2034 # read by bench_swarm_leave
        SWARM_CREATED=1
        docker swarm init --advertise-addr 127.0.0.1 </dev/null >/dev/null || die "docker swarm init failed"
        note "single-node swarm created (left again on exit)"
    else
        note "the engine is in a swarm already (state $state): using it, leaving it as it is"
    fi
    manager=$(docker info -f '{{.Swarm.ControlAvailable}}' </dev/null)
    [[ $manager == true ]] || die "this engine is not a swarm manager (swarm state $state)"
}

bench_swarm_leave() {
    ((${SWARM_CREATED:-0})) || return 0
    docker swarm leave --force </dev/null >/dev/null 2>&1
    docker network rm docker_gwbridge </dev/null >/dev/null 2>&1
    SWARM_CREATED=0
    return 0
}

bench_service_rm() {
    local t0=$EPOCHREALTIME
    (($#)) || return 0
    docker service rm "$@" </dev/null >/dev/null 2>&1
    while [[ -n $(docker ps -aq --filter "label=${RUN_LABEL}=${RUN_ID}" </dev/null 2>/dev/null) ]]; do
        (($(ms_since "$t0") < 30000)) || { note "containers of services $* still there after 30 s"; return 0; }
        sleep 0.2
    done
}

bench_image_id() {
    docker image inspect -f '{{.Id}}' "$IMAGE" </dev/null || die "docker image inspect $IMAGE failed"
}

# The cleanup of a bench that runs hawser and nginx side by side (tls-vs-nginx, grpc-vs-nginx),
# for its EXIT/INT/TERM trap: stops the load, both proxies (nginx's workers too) and the
# containers, shows the proxies' last log lines after a failure, removes $TMP, and exits with
# the status the trap saw. Uses the caller's LOAD_PID, PID[hawser], PID[nginx] and TMP.
bench_cleanup_hawser_nginx() {
    local rc=$1
    set +e
    trap - EXIT INT TERM
    [[ -n "$LOAD_PID" ]] && stop_pid "$LOAD_PID" TERM 2
    local workers="" w f
    # nginx's workers are the master's children; remember them in case the master must be killed.
    [[ -n "${PID[nginx]:-}" ]] && workers=$(ps -o pid= --ppid "${PID[nginx]}" 2>/dev/null)
    # SIGINT: pingora's fast shutdown; nginx stops at once on TERM.
    [[ -n "${PID[hawser]:-}" ]] && stop_pid "${PID[hawser]}" INT 10
    [[ -n "${PID[nginx]:-}" ]] && stop_pid "${PID[nginx]}" TERM 5
    for w in $workers; do kill -0 "$w" 2>/dev/null && kill -KILL "$w" 2>/dev/null; done
    bench_remove_docker
    if ((rc == 1)) && [[ -n "$TMP" ]]; then
        for f in "$TMP"/hawser.log "$TMP"/nginx/error.log; do
            [[ -s "$f" ]] || continue
            echo "--- last 20 lines of ${f#"$TMP"/} (backtrace frames left out):" >&2
            grep -vE '^ +([0-9]+: | *at )' "$f" | tail -n 20 >&2
        done
    fi
    [[ -n "$TMP" ]] && rm -rf "$TMP"
    note "total runtime $(secs_since "$T_START") s, exit code $rc"
    exit "$rc"
}

# The start of an nginx.conf for a bench, up to and including the upstream block: WORKERS
# worker processes, files under NGX, no access log, keep-alive without a request limit both
# ways (since nginx 1.19.7 keepalive_requests also bounds an HTTP/2 client connection, which
# h2load never reopens), and an upstream NAME of the caller's IPS (port 80) with KEEPALIVE
# idle connections. The caller writes the server blocks and the closing brace.
bench_nginx_conf_head() { # NGX WORKERS NAME KEEPALIVE
    local ngx=$1 workers=$2 name=$3 keepalive=$4 d ip
    echo "worker_processes $workers;"
    echo "pid $ngx/nginx.pid;"
    echo "error_log $ngx/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "    access_log off;"
    echo "    keepalive_requests 1000000;"
    for d in client_body proxy fastcgi uwsgi scgi; do echo "    ${d}_temp_path $ngx/$d;"; done
    echo "    upstream $name {"
    for ip in "${IPS[@]}"; do echo "        server $ip:80;"; done
    echo "        keepalive $keepalive;"
    echo "        keepalive_requests 1000000;"
    echo "    }"
}

# awk functions for the benches' tables, to put in front of an awk program:
# sum(s) of a space-separated list of numbers, and its median(s).
BENCH_AWK_STATS='
    function sum(s,   a, n, i, t) { n = split(s, a, " "); t = 0; for (i = 1; i <= n; i++) t += a[i]; return t }
    function median(s,   a, n, i, j, x) {
        n = split(s, a, " ")
        for (i = 2; i <= n; i++) { x = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
'

bench_prereqs() {
    local tool
    need=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 && continue
        if [[ $tool == timeout ]]; then need+=(coreutils); else need+=("$tool"); fi
    done
    bench_build_needs
    bench_apt_install "${need[@]}"
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || die "$tool not found"; done
    command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
    docker info --format '{{.ServerVersion}}' >/dev/null 2>&1 </dev/null || die "no Docker engine answers (docker info failed)"
    command -v rustc >/dev/null 2>&1 || die "rustc not found (install Rust: https://rustup.rs)"
}

# shellcheck disable=SC2034 # the callers and their cleanup use them
bench_wrk_hawser_setup() {
    bench_names "$1"
    TMP=""
    HAWSER_PID=""
    WRK_PID=""
    HAWSER_LOG="${TMPDIR:-/tmp}/hawser-bench-${RUN_ID}.log"
    NET_CREATED=0
    IMAGE_BUILT=0
    bench_traps
    bench_prereqs wrk curl
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-bench.XXXXXX")
    bench_hawser_binary
    bench_backend_image
}

bench_cleanup_wrk_hawser() {
    local rc=$1
    set +e
    trap - EXIT INT TERM
    [[ -n "$WRK_PID" ]] && stop_pid "$WRK_PID" TERM 5
    [[ -n "${SVC:-}" ]] && bench_service_rm "$SVC"
    bench_remove_docker
    bench_swarm_leave
    # SIGINT: pingora's fast shutdown (SIGTERM would wait out the 5 s grace period).
    [[ -n "$HAWSER_PID" ]] && stop_pid "$HAWSER_PID" INT 10
    bench_end_hawser_log "$rc"
}

bench_end_hawser_log() {
    local rc=$1
    [[ -n "$TMP" ]] && rm -rf "$TMP"
    if ((rc != 0)) && [[ -s "$HAWSER_LOG" ]]; then
        echo "--- last 40 lines of the hawser log ($HAWSER_LOG):" >&2
        tail -n 40 "$HAWSER_LOG" >&2
    fi
    [[ -e "$HAWSER_LOG" ]] && note "hawser log kept: $HAWSER_LOG"
    note "total runtime $(secs_since "$T_START") s, exit code $rc"
    exit "$rc"
}

bench_end_tmp_log() {
    local rc=$1 kept=$2
    if [[ -n "$TMP" && -s "$TMP/hawser.log" ]]; then
        if ((rc != 0 && rc != 3)); then
            echo "--- last 30 lines of hawser's log:" >&2
            tail -n 30 "$TMP/hawser.log" >&2
        fi
        cp "$TMP/hawser.log" "$kept" && note "hawser log kept: $kept"
    fi
    if [[ -n "$TMP" && -n "${BENCH_KEEP_DATA:-}" ]]; then
        note "raw data kept in $TMP (BENCH_KEEP_DATA is set)"
    elif [[ -n "$TMP" ]]; then
        rm -rf "$TMP"
    fi
    note "total runtime $(secs_since "$T_START") s, exit code $rc"
    exit "$rc"
}

bench_http_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Host: $HOST_HEADER" "http://127.0.0.1:$PORT/" 2>/dev/null || true
}

bench_start_hawser() {
    local rust_log=$1 what=$2 attempt t0 code line
    shift 2
    local -a env=()
    [[ -z $rust_log ]] || env=(env "RUST_LOG=${RUST_LOG:-$rust_log}")
    for attempt in 1 2 3 4 5; do
        free_port PORT
        free_port ADMIN_PORT
        {
            echo "listen: [\"127.0.0.1:$PORT\"]"
            echo "admin: {listen: \"127.0.0.1:$ADMIN_PORT\"}"
            echo "docker:"
            echo "  label_prefix: $PREFIX"
            echo "  exposed_by_default: false"
            for line in "$@"; do echo "  $line"; done
            echo "health_check:"
            echo "  type: http"
            echo "  path: /healthz"
            echo "  interval: $HEALTH_INTERVAL"
            echo "  timeout: 1s"
            echo "  rise: 2"
            echo "  fall: 2"
        } >"$TMP/hawser.yaml"
        { echo "--- $(date -u +%FT%TZ) config $TMP/hawser.yaml:"; cat "$TMP/hawser.yaml"; echo "---"; } >>"$HAWSER_LOG"
        "$HAWSER" -t -c "$TMP/hawser.yaml" >>"$HAWSER_LOG" 2>&1 \
            || die "hawser refused the generated configuration (see $HAWSER_LOG)"
        # env execs hawser: the pid is hawser's.
        "${env[@]}" "$HAWSER" -c "$TMP/hawser.yaml" >>"$HAWSER_LOG" 2>&1 </dev/null &
        HAWSER_PID=$!
        t0=$EPOCHREALTIME
        while (($(ms_since "$t0") < 15000)); do
            if ! kill -0 "$HAWSER_PID" 2>/dev/null; then
                wait "$HAWSER_PID" 2>/dev/null || true
                HAWSER_PID=""
                if grep -qi 'in use' "$HAWSER_LOG"; then
                    note "port $PORT taken meanwhile, trying another"
                    continue 2
                fi
                die "hawser exited at start (log: $HAWSER_LOG)"
            fi
            code=$(bench_http_status)
            if [[ $code != 000 ]]; then
                note "hawser pid $HAWSER_PID on 127.0.0.1:$PORT answers ($code $what), log $HAWSER_LOG"
                return 0
            fi
            sleep 0.1
        done
        die "hawser does not answer on 127.0.0.1:$PORT after 15 s (log: $HAWSER_LOG)"
    done
    die "found no free port for hawser"
}

bench_access_log_setup() {
    bench_traps
    bench_prereqs wrk curl python3 timeout
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-$1.XXXXXX")
    note "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (other heavy work skews every figure)"
}

bench_start_hawser_access_log() {
    free_port PORT
    free_port ADMIN_PORT
    printf '%s\n' "listen: [\"127.0.0.1:$PORT\"]" "admin: {listen: \"127.0.0.1:$ADMIN_PORT\"}" "docker: $1" \
        "access_log: json" "health_check: {type: http, path: /healthz, interval: $HEALTH_INTERVAL}" >"$TMP/hawser.yaml"
    "$HAWSER" -t -c "$TMP/hawser.yaml" >"$TMP/hawser.log" 2>&1 </dev/null || die "hawser refused $TMP/hawser.yaml"
    RUST_LOG=${RUST_LOG:-info} "$HAWSER" -c "$TMP/hawser.yaml" >"$TMP/access.jsonl" 2>>"$TMP/hawser.log" </dev/null &
    HAWSER_PID=$!
}

bench_wait_http_200() {
    local t0=$1
    until [[ $(bench_http_status) == 200 ]]; do
        kill -0 "$HAWSER_PID" 2>/dev/null || die "hawser exited at start"
        (($(ms_since "$t0") < ROUTE_TIMEOUT * 1000)) || die "hawser does not answer 200 $2 after ${ROUTE_TIMEOUT} s"
        sleep 0.05
    done
}

bench_backend_states() {
    curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/api/services" 2>/dev/null \
        | tr ',{}' '\n' | awk -F'"' '
            $2 == "container_name" { name = $4 }
            $2 == "state" && name != "" { print name, $4; name = "" }' || true
}

# shellcheck disable=SC2034 # the callers use them
bench_wrk_start() {
    WRK_OUT="$TMP/wrk-$VARIANT.out"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${1}s" --timeout "$WRK_TIMEOUT" --latency \
        -H "Host: $HOST_HEADER" "http://127.0.0.1:$PORT/" >"$WRK_OUT" 2>&1 </dev/null &
    WRK_PID=$!
    LOAD_T0=$EPOCHREALTIME
    note "wrk -t$THREADS -c$CONNECTIONS -d${1}s --timeout $WRK_TIMEOUT (pid $WRK_PID)"
}

at() { note "$(printf '%7s' "+$(secs_since "$LOAD_T0")s") $*"; }

load_running() { kill -0 "$WRK_PID" 2>/dev/null; }

bench_wrk_finish() {
    local name=$1 rc=0 out requests non2xx errors
    load_running || note "WARNING: the load ended before the sequence finished; $2"
    wait "$WRK_PID" || rc=$?
    WRK_PID=""
    ((rc == 0)) || { cat "$WRK_OUT" >&2; die "wrk exited with status $rc"; }
    out=$(cat "$WRK_OUT")
    requests=$(sed -nE 's/^ *([0-9]+) requests in .*/\1/p' <<<"$out")
    [[ -n "$requests" ]] || { echo "$out" >&2; die "cannot parse wrk's output"; }
    non2xx=$(sed -nE 's/^ *Non-2xx or 3xx responses: *([0-9]+).*/\1/p' <<<"$out")
    non2xx=${non2xx:-0}
    errors=$(sed -nE 's/^ *Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+).*/\1+\2+\3+\4/p' <<<"$out")
    errors=$((${errors:-0}))
    echo "$out" | grep -E '^ +Latency |requests in|Socket errors|Non-2xx|Requests/sec' \
        | sed -E 's/^ +/  /; s/^/# wrk: /' >&2
    echo "$out" | grep -E '^ +(50|99)%' | sed -E 's/^ +//' | paste -sd' ' | sed 's/^/# wrk latency percentiles: /' >&2
    [[ -z ${3:-} ]] || note "$3"
    echo "variant=$name requests=$requests non2xx=$non2xx errors=$errors"
    ((non2xx == 0 && errors == 0)) || MISSED+=("$name")
}

# A random delay (mean PACE_MS) keeps the connections from falling into step, so the
# requests are spread evenly in time rather than sent in clumps of CONNECTIONS.
bench_wrk_paced() {
    printf 'function delay()\n    return math.random(0, %d)\nend\n' "$((2 * PACE_MS))" >"$TMP/pace.lua"
    wrk -t1 -c"$CONNECTIONS" -d"${MAX_SECONDS}s" --timeout 2s -s "$TMP/pace.lua" -H "Host: $HOST_HEADER" \
        "http://127.0.0.1:$PORT/" >"$TMP/wrk.out" 2>&1 </dev/null &
    WRK_PID=$!
    note "wrk -t1 -c$CONNECTIONS, delay() 0-$((2 * PACE_MS)) ms per connection (pid $WRK_PID)"
}

# shellcheck disable=SC2034 # the callers use them
bench_wrk_collect() {
    local t prev size
    # A dropped access log line could hide a first or last request.
    DROPPED=$(curl -s --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" \
        | awk '$1 == "hawser_access_log_dropped_total" {print $2}')
    [[ -n $DROPPED ]] || die "hawser's /metrics has no hawser_access_log_dropped_total"
    ((${DROPPED%%.*} == 0)) || note "WARNING: hawser dropped $DROPPED access log lines: first/last requests may be wrong"
    note "wrk: $(grep -E 'requests in' "$TMP/wrk.out" | sed -E 's/^ +//')"
    grep -E 'Socket errors|Non-2xx' "$TMP/wrk.out" | sed -E 's/^ +/# wrk: /' >&2 || true
    WRK_BAD=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
        /Socket errors:/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$TMP/wrk.out")
    # The access log is written in batches every 50 ms: wait until it stops growing.
    t=$EPOCHREALTIME
    prev=-1
    while size=$(stat -c %s "$TMP/access.jsonl") && ((size != prev)); do
        (($(ms_since "$t") < 10000)) || die "hawser's access log keeps growing after the load stopped"
        prev=$size
        sleep 0.2
    done
}

bench_listening_time() {
    local line
    line=$(timeout 30 docker logs "$1" 2>&1 </dev/null | grep -m1 'listening on' || true)
    [[ $line =~ \(unix\ time\ ([0-9]+\.[0-9]+)\) ]] || die "$2: no 'listening on ... (unix time ...)' line in its log: $line"
    LISTENING=${BASH_REMATCH[1]}
}

sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

bench_warnings_summary() {
    local summary
    summary=$(grep -E '^\[[^ ]+ +(WARN|ERROR) ' "$HAWSER_LOG" \
        | sed -E 's/^\[[^ ]+ +//; s/[0-9]+(\.[0-9]+){3}(:[0-9]+)?/<addr>/g; '"$1" \
        | sort | uniq -c | sort -rn || true)
    if [[ -n "$summary" ]]; then
        note "hawser warnings/errors by kind (count, message):"
        awk 'NR <= 12 { print "#  " substr($0, 1, 300) }' <<<"$summary" >&2
    fi
}

bench_exit_missed() {
    if ((${#MISSED[@]})); then
        echo "goal missed (non-2xx or errors) in: ${MISSED[*]}" >&2
        exit 3
    fi
}

# || true: read returns 1 at the end of its input, which here is the point.
read -r -d '' BENCH_PY_ACCESS_LOG <<'PY' || true
import calendar, json, sys

def note(*a):
    print("#", *a, file=sys.stderr)

def pct(values, p):  # nearest rank
    v = sorted(values)
    return v[max(0, -(-len(v) * p // 100) - 1)]

seconds = {}
def epoch(ts):  # "2026-11-25T08:40:13.123Z" -> seconds, taken as the middle of the millisecond
    s = seconds.get(ts[:19])
    if s is None:
        s = seconds[ts[:19]] = calendar.timegm((int(ts[0:4]), int(ts[5:7]), int(ts[8:10]),
                                                int(ts[11:13]), int(ts[14:16]), int(ts[17:19])))
    return s + int(ts[20:23]) / 1e3 + 0.0005

def access_log(path):  # (line, entry) of each line of hawser's access log that is whole JSON
    for line in open(path):
        try:
            yield line, json.loads(line)
        except ValueError:
            continue
PY
