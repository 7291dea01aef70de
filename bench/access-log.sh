#!/usr/bin/env bash
# What the access log costs: three hawser processes in front of the same backend container,
# one per access_log format (off, text, json; the log goes to a file), driven in turn by the
# same wrk load, interleaved (off text json, off text json, ...) so that drift hits all alike.
# Prints per format: requests/s and hawser's CPU time per request, user and system apart (utime, stime from /proc over
# the runs / requests), then the ratio to `off`.
#
#   bench/access-log.sh            # 3 rounds of 5 s per format, about 1 minute
#   ROUNDS=5 SECONDS_PER_RUN=10 bench/access-log.sh
#
# Bounded: loopback and the one container it starts; everything is removed on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
CONNECTIONS=${CONNECTIONS:-32}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_ID="al$$${RANDOM}"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/hawser-access-log.XXXXXX")
IMAGE="hawser-bench-backend:${RUN_ID}"
NAME="hawser-bench-${RUN_ID}"
PIDS=()

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    docker rm -f "$NAME" >/dev/null 2>&1
    docker rmi -f "$IMAGE" >/dev/null 2>&1
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v cmake >/dev/null || need+=(cmake)
dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q 'ok installed' || need+=(libc6-dev)
if ((${#need[@]})); then
    SUDO=()
    [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

(cd "$REPO" && cargo build --release --bin hawser >&2)
HAWSER="$REPO/target/release/hawser"
mkdir -p "$TMP/ctx"
rustc --edition 2021 -O -C target-feature=+crt-static "$REPO/tests/support/backend.rs" -o "$TMP/ctx/backend"
printf 'FROM scratch\nCOPY backend /backend\nEXPOSE 80\nENTRYPOINT ["/backend"]\n' >"$TMP/ctx/Dockerfile"
docker build -q -t "$IMAGE" "$TMP/ctx" >/dev/null 2>&1
docker run -d --name "$NAME" -e NAME=b1 \
    --label "${RUN_ID}.enable=true" --label "${RUN_ID}.host=bench.test" "$IMAGE" >/dev/null

declare -A PORT PID
base=$((20000 + RANDOM % 30000))
i=0
for fmt in off text json; do
    PORT[$fmt]=$((base + i))
    cat >"$TMP/$fmt.yaml" <<EOF
listen: ["127.0.0.1:${PORT[$fmt]}"]
admin: {listen: "127.0.0.1:$((base + 10 + i))"}
docker: {label_prefix: $RUN_ID}
access_log: $fmt
EOF
    RUST_LOG=warn "$HAWSER" -c "$TMP/$fmt.yaml" >"$TMP/$fmt.access" 2>"$TMP/$fmt.err" </dev/null &
    PID[$fmt]=$!
    PIDS+=("$!")
    i=$((i + 1))
done
for fmt in off text json; do
    for _ in $(seq 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://127.0.0.1:${PORT[$fmt]}/") == 200 ]] && continue 2
        sleep 0.1
    done
    echo "hawser ($fmt) never routed the backend; its log:" >&2
    cat "$TMP/$fmt.err" >&2
    exit 1
done

cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime
declare -A REQS UTICKS STICKS SECS
for fmt in off text json; do REQS[$fmt]=0; UTICKS[$fmt]=0; STICKS[$fmt]=0; SECS[$fmt]=0; done
for round in $(seq "$ROUNDS"); do
    for fmt in off text json; do
        read -r u0 s0 <<<"$(cpu_ticks "${PID[$fmt]}")"
        out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -H 'Host: bench.test' "http://127.0.0.1:${PORT[$fmt]}/")
        read -r u1 s1 <<<"$(cpu_ticks "${PID[$fmt]}")"
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        [[ -z "$bad" ]] || { echo "$fmt: $bad non-2xx answers" >&2; exit 1; }
        REQS[$fmt]=$((REQS[$fmt] + n))
        UTICKS[$fmt]=$((UTICKS[$fmt] + u1 - u0))
        STICKS[$fmt]=$((STICKS[$fmt] + s1 - s0))
        SECS[$fmt]=$((SECS[$fmt] + SECONDS_PER_RUN))
        echo "# round $round $fmt: $n requests" >&2
    done
done

hz=$(getconf CLK_TCK)
for fmt in off text json; do
    lines=$(wc -l <"$TMP/$fmt.access")
    awk -v f="$fmt" -v r="${REQS[$fmt]}" -v u="${UTICKS[$fmt]}" -v k="${STICKS[$fmt]}" -v s="${SECS[$fmt]}" -v hz="$hz" \
        -v r0="${REQS[off]}" -v t0="$((UTICKS[off] + STICKS[off]))" -v lines="$lines" 'BEGIN {
        uu = u / hz * 1e6 / r; ku = k / hz * 1e6 / r; us = uu + ku; us0 = t0 / hz * 1e6 / r0
        printf "access_log=%s requests_per_s=%.0f cpu_us_per_request=%.1f user_us=%.1f sys_us=%.1f vs_off_rps=%.3f vs_off_cpu=%.3f log_lines=%d\n",
            f, r / s, us, uu, ku, r / r0, us / us0, lines
    }'
done
