#!/usr/bin/env bash
# End-to-end load benchmark: swr-gate versus a plain nginx reverse proxy, both in front of
# the same stand-in for SWR (an nginx answering 201 '{}'), all on 127.0.0.1.
#
# Usage:
#   bash bench/load.sh
#   DURATION=30s CONNECTIONS=64 bash bench/load.sh
#
# Environment (all optional):
#   DURATION     measured run per target, as wrk takes it: 10s, 1m ...      (default 10s)
#   CONNECTIONS  concurrent keep-alive connections wrk holds open           (default 32)
#   LATENCY_CONNECTIONS  connections of the second, unsaturated run that measures the
#                latency a proxy adds to one request, without queueing       (default 1)
#   LATENCY_DURATION     that run's length per target                       (default 5s)
#   WARMUP       unmeasured run before each measured one                    (default 2s)
#   AUDIT_FSYNC  swr-gate's [audit] fsync: always, batch or never           (default batch)
#   VARY_REPOSITORY  1: every request names a repository of its own (app-<n>), so
#                swr-gate remembers no policy decision: its worst case     (default 0)
#   PIN          auto: wrk on one CPU, the servers on another (needs 2 CPUs
#                and taskset); 0: no pinning                                (default auto)
#   SKIP_BUILD   1: use target/release/swr-gate as it is, without cargo build
#   KEEP_TMP     1: keep the temp dir (configs, logs, raw wrk output, audit trail)
#
# The same request goes to each target: POST /v2/manage/namespaces/team-a/repos/app/access
# with a JSON grant and an X-Api-Key header (see bench/post.lua). Targets: direct to the
# stand-in, through nginx, through swr-gate, and through bare-hyper (examples/bare_proxy.rs:
# the HTTP stack swr-gate is built on with none of its checks, so a run also shows how much
# of the distance to nginx is the stack's). Each target is run twice: saturated
# (CONNECTIONS), for requests/s, p50 and p99 and the throughput ratio swr-gate/nginx
# (target >= 0.8x); then unsaturated (LATENCY_CONNECTIONS), for the latency each proxy adds
# to a request over going direct (target for swr-gate: p99 under 1 ms added).
#
# Exits non-zero only when the set-up fails (tools, build, start-up, sanity request);
# missing a target is reported, not failed: this is a measurement, not a test.
# Needs: bash >= 4.4, curl, cargo, nginx and wrk (installed with apt-get when run as root).

set -euo pipefail
# Numbers with a decimal point, whatever the caller's locale.
export LC_ALL=C

readonly DURATION="${DURATION:-10s}"
readonly CONNECTIONS="${CONNECTIONS:-32}"
readonly LATENCY_CONNECTIONS="${LATENCY_CONNECTIONS:-1}"
readonly LATENCY_DURATION="${LATENCY_DURATION:-5s}"
readonly WARMUP="${WARMUP:-2s}"
readonly PIN="${PIN:-auto}"
readonly AUDIT_FSYNC="${AUDIT_FSYNC:-batch}"
readonly VARY_REPOSITORY="${VARY_REPOSITORY:-0}"

readonly REQUEST_PATH="/v2/manage/namespaces/team-a/repos/app/access"
readonly BODY='[{"user_id":"fb3f175c1fd146ab8cdae3272be6107b","user_name":"user01","auth":7}]'

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$BENCH_DIR/.." && pwd -P)"
readonly BENCH_DIR ROOT
readonly LUA="$BENCH_DIR/post.lua"

die() {
    printf 'load.sh: error: %s\n' "$*" >&2
    exit 1
}

note() {
    printf '%s\n' "$*" >&2
}

# wrk time argument ("10s", "2m", "1h", bare seconds) -> whole seconds, for timeouts.
seconds_of() {
    local value=$1
    [[ $value =~ ^([0-9]+)([smh]?)$ ]] || die "not a duration like 10s or 1m: '$value'"
    local n=${BASH_REMATCH[1]}
    case ${BASH_REMATCH[2]} in
        m) echo $((n * 60)) ;;
        h) echo $((n * 3600)) ;;
        *) echo "$n" ;;
    esac
}

DURATION_S="$(seconds_of "$DURATION")"
LATENCY_DURATION_S="$(seconds_of "$LATENCY_DURATION")"
WARMUP_S="$(seconds_of "$WARMUP")"
readonly DURATION_S WARMUP_S LATENCY_DURATION_S
((DURATION_S >= 1)) || die "DURATION must be at least 1s"
((WARMUP_S >= 1)) || die "WARMUP must be at least 1s"
[[ $CONNECTIONS =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer, not '$CONNECTIONS'"
[[ $LATENCY_CONNECTIONS =~ ^[1-9][0-9]*$ ]] ||
    die "LATENCY_CONNECTIONS must be a positive integer, not '$LATENCY_CONNECTIONS'"
((LATENCY_DURATION_S >= 1)) || die "LATENCY_DURATION must be at least 1s"
[[ $AUDIT_FSYNC =~ ^(always|batch|never)$ ]] || die "AUDIT_FSYNC must be always, batch or never"
[[ $VARY_REPOSITORY =~ ^[01]$ ]] || die "VARY_REPOSITORY must be 0 or 1"
export BENCH_VARY_REPOSITORY=$VARY_REPOSITORY

# --- 1. tools -----------------------------------------------------------------------------

find_nginx() {
    # /usr/sbin is not on every non-root PATH.
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true
}

ensure_tools() {
    local missing=()
    [[ -n "$(find_nginx)" ]] || missing+=(nginx)
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    if ((${#missing[@]} > 0)); then
        if ((EUID != 0)); then
            die "missing ${missing[*]}: install them (Debian: apt-get install nginx-light wrk) or run as root"
        fi
        command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
        note "installing ${missing[*]} with apt-get ..."
        apt-get update -qq
        # Older Debian ships the binary in nginx-light; newer makes that a variant of nginx.
        local nginx_pkg=nginx
        if apt-cache show nginx-light >/dev/null 2>&1; then
            nginx_pkg=nginx-light
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$nginx_pkg" wrk >/dev/null
    fi
    NGINX="$(find_nginx)"
    [[ -n $NGINX ]] || die "nginx is still missing after installation"
    local tool
    for tool in wrk curl cargo sha256sum timeout; do
        command -v "$tool" >/dev/null 2>&1 || die "$tool is required but not found on PATH"
    done
}

ensure_tools
readonly NGINX

# --- 2. build -------------------------------------------------------------------------------

readonly GATE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/swr-gate"
readonly BARE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/bare_proxy"
if [[ ${SKIP_BUILD:-0} == 1 ]]; then
    note "SKIP_BUILD=1: using $GATE_BIN as it is"
else
    note "building swr-gate and examples/bare_proxy (cargo build --release) ..."
    (cd "$ROOT" && cargo build --release --bin swr-gate --example bare_proxy) ||
        die "cargo build --release failed (src/ mid-edit?); SKIP_BUILD=1 benchmarks the last built binary"
fi
[[ -x $GATE_BIN ]] || die "no gateway binary at $GATE_BIN"
# The stack-only baseline is worth having, not worth failing for (SKIP_BUILD with an old tree).
if [[ ! -x $BARE_BIN ]]; then
    note "no $BARE_BIN: the bare-hyper target is left out"
fi

# --- 3. processes, temp dir, cleanup --------------------------------------------------------

WORK="$(mktemp -d "${TMPDIR:-/tmp}/swr-gate-bench.XXXXXX")"
readonly WORK
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # swr-gate drains and nginx stops its workers on TERM; force whatever is still there.
    for pid in "${PIDS[@]}"; do
        local tries=0
        while kill -0 "$pid" 2>/dev/null && ((tries < 30)); do
            sleep 0.1
            tries=$((tries + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            # A killed nginx master would leave its workers holding the port.
            pkill -KILL -P "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        note "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Raise the open-files limit to the hard limit so many connections do not hit EMFILE.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# CPUs this process may use, from taskset's "0,1" or "0-3,6" affinity list.
allowed_cpus() {
    local list part
    list="$(taskset -cp $$ | sed 's/.*: *//')"
    local IFS=,
    for part in $list; do
        if [[ $part == *-* ]]; then
            seq "${part%-*}" "${part#*-}"
        else
            echo "$part"
        fi
    done
}

# Pinning keeps wrk from stealing the servers' CPU: one core drives, the other serves.
CLIENT_PIN=()
SERVER_PIN=()
PINNING="off"
if [[ $PIN != 0 ]] && command -v taskset >/dev/null 2>&1; then
    mapfile -t cpus < <(allowed_cpus)
    if ((${#cpus[@]} >= 2)); then
        CLIENT_PIN=(taskset -c "${cpus[0]}")
        SERVER_PIN=(taskset -c "${cpus[1]}")
        PINNING="wrk on CPU ${cpus[0]}, nginx/swr-gate on CPU ${cpus[1]}"
    else
        PINNING="off (fewer than 2 CPUs allowed)"
    fi
elif [[ $PIN == 0 ]]; then
    PINNING="off (PIN=0)"
else
    PINNING="off (no taskset)"
fi
readonly PINNING

# Set variable $1 to a port below the kernel's ephemeral range (so no outgoing connection
# holds it) that nothing answers on and that this run has not handed out yet. Not run in
# $(...), so that USED_PORTS keeps what it hands out.
USED_PORTS=" "
free_port() {
    local port tries
    for tries in $(seq 1 200); do
        port=$((20000 + (RANDOM + tries) % 12000))
        [[ $USED_PORTS == *" $port "* ]] && continue
        if ! (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS+="$port "
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    die "no free port found on 127.0.0.1"
}

# Wait until a started process accepts connections; show its log if it died instead.
wait_for_port() {
    local name=$1 pid=$2 port=$3 log=$4 tries
    for tries in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            note "--- $log"
            cat "$log" >&2 || true
            die "$name exited during start-up"
        fi
        if (: <>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$name did not accept connections on 127.0.0.1:$port within ${tries}00 ms"
}

free_port UPSTREAM_PORT
free_port PROXY_PORT
free_port GATE_PORT
free_port BARE_PORT
readonly UPSTREAM_PORT PROXY_PORT GATE_PORT BARE_PORT

# The parts both nginx configs share: everything inside the temp dir, nothing from
# /etc/nginx or /var/lib/nginx, so no system config and no root needed.
nginx_conf() {
    local name=$1 server_block=$2 user_line=""
    # As root the master would drop workers to a user that may not exist; keep ours.
    if ((EUID == 0)); then
        user_line="user $(id -un) $(id -gn);"
    fi
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name.conf" <<EOF
$user_line
worker_processes 1;
pid $WORK/$name.pid;
error_log $WORK/$name.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/$name/body;
    proxy_temp_path $WORK/$name/proxy;
    fastcgi_temp_path $WORK/$name/fastcgi;
    uwsgi_temp_path $WORK/$name/uwsgi;
    scgi_temp_path $WORK/$name/scgi;
    # nginx closes a keep-alive connection after 1000 requests by default; lifting that
    # keeps reconnects out of what is measured, for every target alike.
    keepalive_requests 1000000;
$server_block
}
EOF
}

start_nginx() {
    local name=$1 port=$2
    "${SERVER_PIN[@]}" "$NGINX" -p "$WORK" -e "$WORK/$name.error.log" \
        -c "$WORK/$name.conf" -g 'daemon off;' >"$WORK/$name.out" 2>&1 &
    PIDS+=("$!")
    wait_for_port "nginx ($name)" "$!" "$port" "$WORK/$name.error.log"
}

# UPSTREAM: the stand-in for SWR.
nginx_conf upstream "    server {
        listen 127.0.0.1:$UPSTREAM_PORT;
        default_type application/json;
        location / { return 201 '{}'; }
    }"
start_nginx upstream "$UPSTREAM_PORT"
readonly UPSTREAM_PID="${PIDS[-1]}"

# NGINX PROXY: the baseline, a reverse proxy that checks nothing.
nginx_conf proxy "    upstream swr {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT;
        location / {
            proxy_pass http://swr;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
start_nginx proxy "$PROXY_PORT"
readonly PROXY_PID="${PIDS[-1]}"

# SWR-GATE, with a fresh API key whose hash goes in the config.
BENCH_API_KEY="bench_$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export BENCH_API_KEY
KEY_SHA256="$(printf %s "$BENCH_API_KEY" | sha256sum | cut -d' ' -f1)"
readonly KEY_SHA256

toml_string() {
    local text=${1//\\/\\\\}
    printf '"%s"' "${text//\"/\\\"}"
}

cat >"$WORK/gate.toml" <<EOF
[server]
listen = "127.0.0.1:$GATE_PORT"

[upstream]
url = "http://127.0.0.1:$UPSTREAM_PORT"

[iam]
method = "token_env"
token_env = "SWR_GATE_TOKEN"

[policy]
dir = $(toml_string "$ROOT/policies")

[audit]
path = $(toml_string "$WORK/audit.jsonl")
fsync = "$AUDIT_FSYNC"

[[clients]]
id = "bench"
groups = ["admins"]   # the shipped policies let admins grant manage (auth 7)
api_key_sha256 = "$KEY_SHA256"
EOF

SWR_GATE_TOKEN=bench-token RUST_LOG=warn \
    "${SERVER_PIN[@]}" "$GATE_BIN" serve --config "$WORK/gate.toml" >"$WORK/gate.log" 2>&1 &
PIDS+=("$!")
wait_for_port swr-gate "$!" "$GATE_PORT" "$WORK/gate.log"
readonly GATE_PID="${PIDS[-1]}"

# BARE-HYPER: swr-gate's HTTP stack alone, same pinning.
BARE_PID=""
if [[ -x $BARE_BIN ]]; then
    "${SERVER_PIN[@]}" "$BARE_BIN" "127.0.0.1:$BARE_PORT" "http://127.0.0.1:$UPSTREAM_PORT" \
        >"$WORK/bare.log" 2>&1 &
    PIDS+=("$!")
    wait_for_port bare-hyper "$!" "$BARE_PORT" "$WORK/bare.log"
    BARE_PID="${PIDS[-1]}"
fi
readonly BARE_PID

# --- 4. sanity: one request through each must come back 201 ---------------------------------

sanity() {
    local name=$1 url=$2 code
    # --noproxy: a proxy from the environment must never see this traffic.
    code="$(curl --noproxy '*' -sS --max-time 5 -o "$WORK/sanity-$name.body" -w '%{http_code}' \
        -X POST -H 'Content-Type: application/json' -H "X-Api-Key: $BENCH_API_KEY" \
        --data-binary "$BODY" "$url")" || code="(curl failed)"
    if [[ $code != 201 ]]; then
        note "--- answer body from $name:"
        cat "$WORK/sanity-$name.body" >&2 2>/dev/null || true
        note ""
        die "sanity request through $name answered $code, expected 201"
    fi
}

readonly DIRECT_URL="http://127.0.0.1:$UPSTREAM_PORT$REQUEST_PATH"
readonly PROXY_URL="http://127.0.0.1:$PROXY_PORT$REQUEST_PATH"
readonly GATE_URL="http://127.0.0.1:$GATE_PORT$REQUEST_PATH"
readonly BARE_URL="http://127.0.0.1:$BARE_PORT$REQUEST_PATH"
sanity direct "$DIRECT_URL"
sanity nginx "$PROXY_URL"
sanity swr-gate "$GATE_URL"
if [[ -n $BARE_PID ]]; then
    sanity bare-hyper "$BARE_URL"
fi

# --- 5. load --------------------------------------------------------------------------------

# Other work on this machine (a cargo build, say) skews every number; say so up front.
busy="$(pgrep -x 'cargo|rustc' | wc -l || true)"
read -r load1 _ </proc/loadavg
note "targets: direct :$UPSTREAM_PORT, nginx :$PROXY_PORT, swr-gate :$GATE_PORT, bare-hyper :$BARE_PORT"
note "pinning: $PINNING"
HOST_INFO="host: $(nproc) CPUs, load average $load1 at start, cargo/rustc processes running: $busy"
readonly HOST_INFO
note "$HOST_INFO"

# Arithmetic in awk, for the non-integer numbers bash cannot handle.
calc() {
    awk "BEGIN { $1 }"
}

# wrk -t1 -cN -dT --latency; never longer than its duration plus a margin. N is
# CONNECTIONS unless given as the fifth argument.
run_wrk() {
    local duration=$1 seconds=$2 url=$3 out=$4 connections=${5:-$CONNECTIONS}
    timeout --kill-after=5 $((seconds + 30)) "${CLIENT_PIN[@]}" \
        wrk -t1 -c"$connections" -d"$duration" --latency -s "$LUA" "$url" >"$out" 2>&1 ||
        { cat "$out" >&2; die "wrk failed against $url"; }
}

# One line from wrk's output: req/s, p50 ms, p99 ms, completed requests, non-2xx,
# socket errors (sum), socket errors (wrk's own words, may be empty).
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/) return v * 60000
            if (v ~ /h$/) return v * 3600000
            return v * 1000
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        / requests in / { requests = $1 }
        /Non-2xx or 3xx responses:/ { non2xx = $NF }
        /Socket errors:/ {
            line = $0
            sub(/^ *Socket errors: */, "", line)
            n = split(line, parts, ",")
            for (i = 1; i <= n; i++) { split(parts[i], kv, " "); errors += kv[2] }
            detail = line
        }
        END {
            printf "%s %.3f %.3f %d %d %d %s\n", rps, p50, p99, requests, non2xx, errors, detail
        }
    ' "$1"
}

# Where the CPU went during each measured run, so that a number skewed by other work on
# this small machine (a cargo build, a test run) shows as such. All in clock ticks.
HZ="$(getconf CLK_TCK)"
readonly HZ

# Busy ticks of the whole machine: user, nice, system, irq, softirq, and steal.
machine_ticks() {
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat
}

# Ticks of the given processes and their children (an nginx master's workers); a
# process's own figures cover all its threads.
ticks_of() {
    local pid pids=()
    for pid in "$@"; do
        pids+=("$pid")
        mapfile -t -O "${#pids[@]}" pids < <(pgrep -P "$pid" || true)
    done
    # Fields after the "(comm)" one: utime and stime are then the 12th and 13th.
    for pid in "${pids[@]}"; do
        sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null || true
    done | awk '{ t += $12 + $13 } END { print t + 0 }'
}

# The kernel's softirq threads carry loopback traffic under load: count them as ours.
softirq_ticks() {
    local pids
    mapfile -t pids < <(pgrep '^ksoftirqd/' || true)
    ticks_of "${pids[@]}"
}

# Set variable $1 to the ticks of this shell's finished children, wrk among them. Never
# call it in $(...) or a pipeline: a forked subshell starts with its children's times at 0.
child_ticks() {
    times >"$WORK/times.txt"
    local ticks
    ticks="$(awk -v hz="$HZ" '
        function sec(v, parts) { split(v, parts, "m"); return parts[1] * 60 + parts[2] }
        NR == 2 { printf "%d\n", (sec($1) + sec($2)) * hz + 0.5 }
    ' "$WORK/times.txt")"
    printf -v "$1" '%s' "$ticks"
}

bare_ticks() {
    if [[ -n $BARE_PID ]]; then ticks_of "$BARE_PID"; else echo 0; fi
}

declare -A CPU_START
cpu_mark() {
    CPU_START=([machine]="$(machine_ticks)" [upstream]="$(ticks_of "$UPSTREAM_PID")"
        [proxy]="$(ticks_of "$PROXY_PID")" [gate]="$(ticks_of "$GATE_PID")"
        [bare]="$(bare_ticks)"
        [softirq]="$(softirq_ticks)" [wall]="$EPOCHREALTIME")
    child_ticks 'CPU_START[children]'
}

# Record for target $1 the share of one CPU, in percent, that the upstream, the proxy
# under test (none for direct), wrk, and everything else on the machine used since cpu_mark.
cpu_since_mark() {
    local target=$1 machine upstream proxy gate bare softirq children wall tested
    child_ticks children
    children=$((children - CPU_START[children]))
    machine=$(($(machine_ticks) - CPU_START[machine]))
    upstream=$(($(ticks_of "$UPSTREAM_PID") - CPU_START[upstream]))
    proxy=$(($(ticks_of "$PROXY_PID") - CPU_START[proxy]))
    gate=$(($(ticks_of "$GATE_PID") - CPU_START[gate]))
    bare=$(($(bare_ticks) - CPU_START[bare]))
    softirq=$(($(softirq_ticks) - CPU_START[softirq]))
    wall="$(calc "print $EPOCHREALTIME - ${CPU_START[wall]}")"
    case $target in
        nginx) tested=$proxy ;;
        swr-gate) tested=$gate ;;
        bare-hyper) tested=$bare ;;
        *) tested=-1 ;;
    esac
    read -r CPU_UP["$target"] CPU_TESTED["$target"] CPU_WRK["$target"] CPU_OTHER["$target"] < <(
        calc "w = $wall * $HZ / 100
            o = $machine - $upstream - $proxy - $gate - $bare - $softirq - $children
            printf \"%.0f %.0f %.0f %.0f\\n\", $upstream / w, ($tested < 0 ? -1 : $tested / w),
                $children / w, (o < 0 ? 0 : o / w)")
}

declare -A RPS P50 P99 REQS NON2XX SOCKERR SOCKDETAIL WARM_REQS CPU_UP CPU_TESTED CPU_WRK CPU_OTHER
TARGETS=(direct nginx swr-gate)
if [[ -n $BARE_PID ]]; then
    TARGETS+=(bare-hyper)
fi
declare -A URL=([direct]="$DIRECT_URL" [nginx]="$PROXY_URL" [swr-gate]="$GATE_URL"
    [bare-hyper]="$BARE_URL")

for target in "${TARGETS[@]}"; do
    note "wrk against $target: ${WARMUP} warm-up, then ${DURATION} measured, ${CONNECTIONS} connections ..."
    run_wrk "$WARMUP" "$WARMUP_S" "${URL[$target]}" "$WORK/wrk-$target-warmup.txt"
    cpu_mark
    run_wrk "$DURATION" "$DURATION_S" "${URL[$target]}" "$WORK/wrk-$target.txt"
    cpu_since_mark "$target"
    read -r rps p50 p99 reqs non2xx sockerr detail < <(parse_wrk "$WORK/wrk-$target.txt")
    [[ -n $rps ]] || { cat "$WORK/wrk-$target.txt" >&2; die "could not read wrk's output for $target"; }
    RPS[$target]=$rps P50[$target]=$p50 P99[$target]=$p99 REQS[$target]=$reqs
    NON2XX[$target]=$non2xx SOCKERR[$target]=$sockerr SOCKDETAIL[$target]=$detail
    read -r _ _ _ warm _ < <(parse_wrk "$WORK/wrk-$target-warmup.txt")
    WARM_REQS[$target]=$warm
done

# Under saturation a request's latency is mostly its wait in the queue, which the
# throughput ratio already tells. The latency a proxy adds to a request is measured
# without queueing: few connections, after the warm-up above.
declare -A LAT_P50 LAT_P99 LAT_REQS LAT_FAILED
for target in "${TARGETS[@]}"; do
    note "wrk against $target: ${LATENCY_DURATION} measured, ${LATENCY_CONNECTIONS} connection(s) ..."
    run_wrk "$LATENCY_DURATION" "$LATENCY_DURATION_S" "${URL[$target]}" \
        "$WORK/wrk-$target-latency.txt" "$LATENCY_CONNECTIONS"
    read -r _ p50 p99 reqs non2xx sockerr _ < <(parse_wrk "$WORK/wrk-$target-latency.txt")
    LAT_P50[$target]=$p50 LAT_P99[$target]=$p99 LAT_REQS[$target]=$reqs
    LAT_FAILED[$target]=$((non2xx + sockerr))
done

# --- 6. summary -----------------------------------------------------------------------------

echo
echo "swr-gate load benchmark: POST $REQUEST_PATH, wrk -t1 -c$CONNECTIONS -d$DURATION," \
    "audit fsync = $AUDIT_FSYNC, a new repository per request: $([[ $VARY_REPOSITORY == 1 ]] && echo yes || echo no)"
echo "pinning: $PINNING"
echo "$HOST_INFO"
printf '%-10s %9s %8s %8s %9s %7s %8s | %8s %8s %8s %8s\n' target "req/s" "p50 ms" "p99 ms" \
    requests non-2xx "sock err" upstream proxy wrk other
for target in "${TARGETS[@]}"; do
    tested="${CPU_TESTED[$target]}%"
    [[ $tested != -1% ]] || tested="-"
    printf '%-10s %9.0f %8.3f %8.3f %9d %7d %8d | %7d%% %8s %7d%% %7d%%\n' "$target" "${RPS[$target]}" \
        "${P50[$target]}" "${P99[$target]}" "${REQS[$target]}" "${NON2XX[$target]}" \
        "${SOCKERR[$target]}" "${CPU_UP[$target]}" "$tested" "${CPU_WRK[$target]}" "${CPU_OTHER[$target]}"
done
echo "(right of |: CPU use during the measured run, in % of one CPU: the stand-in upstream, the"
echo " proxy under test, wrk, and all other work on the machine, which should stay near 0)"
for target in "${TARGETS[@]}"; do
    if ((CPU_OTHER[$target] >= 10)); then
        echo "warning: other work used ${CPU_OTHER[$target]}% of a CPU while $target was measured: its numbers are skewed"
    fi
done
echo

ratio="$(calc "r = ${RPS[nginx]} > 0 ? ${RPS[swr-gate]} / ${RPS[nginx]} : 0; printf \"%.2f\", r")"
verdict="$(calc "print ($ratio >= 0.8) ? \"met\" : \"MISSED\"")"
echo "throughput ratio swr-gate / nginx = ${ratio}x (target >= 0.8x: $verdict)"
if [[ -n $BARE_PID ]]; then
    echo "  the stack alone, bare-hyper / nginx = $(calc "printf \"%.2f\", ${RPS[bare-hyper]} / ${RPS[nginx]}")x;" \
        "swr-gate's checks keep $(calc "printf \"%.2f\", ${RPS[swr-gate]} / ${RPS[bare-hyper]}")x of the stack's throughput"
fi

# Added latency: proxy minus direct, of the p50 or p99 in array $1.
added() {
    local -n of=$1
    calc "printf \"%+.3f\", ${of[$2]} - ${of[direct]}"
}
echo "added latency over direct, ${LATENCY_CONNECTIONS} connection(s), no queueing:" \
    "swr-gate p50 $(added LAT_P50 swr-gate) ms, p99 $(added LAT_P99 swr-gate) ms;" \
    "nginx p50 $(added LAT_P50 nginx) ms, p99 $(added LAT_P99 nginx) ms"
printf '  (p50/p99 ms: direct %.3f/%.3f, nginx %.3f/%.3f, swr-gate %.3f/%.3f)\n' \
    "${LAT_P50[direct]}" "${LAT_P99[direct]}" "${LAT_P50[nginx]}" "${LAT_P99[nginx]}" \
    "${LAT_P50[swr-gate]}" "${LAT_P99[swr-gate]}"
if [[ -n $BARE_PID ]]; then
    echo "  bare-hyper p50 $(added LAT_P50 bare-hyper) ms, p99 $(added LAT_P99 bare-hyper) ms"
fi
verdict="$(calc "print (${LAT_P99[swr-gate]} - ${LAT_P99[direct]} < 1) ? \"met\" : \"MISSED\"")"
echo "  target swr-gate p99 < +1 ms: $verdict"
echo "added latency over direct at $CONNECTIONS connections (saturated, mostly queueing):" \
    "swr-gate p50 $(added P50 swr-gate) ms, p99 $(added P99 swr-gate) ms;" \
    "nginx p50 $(added P50 nginx) ms, p99 $(added P99 nginx) ms"
for of in P50 P99 LAT_P50 LAT_P99; do
    if [[ "$(added $of nginx)$(added $of swr-gate)" == *-* ]]; then
        echo "warning: a proxy looks faster than direct: the direct run was disturbed; rerun on a quiet machine"
        break
    fi
done

echo "non-2xx responses: direct ${NON2XX[direct]}, nginx ${NON2XX[nginx]}, swr-gate ${NON2XX[swr-gate]} (expected 0)"
echo "non-2xx answers and socket errors in the ${LATENCY_CONNECTIONS}-connection runs:" \
    "direct ${LAT_FAILED[direct]}, nginx ${LAT_FAILED[nginx]}, swr-gate ${LAT_FAILED[swr-gate]} (expected 0)"
for target in "${TARGETS[@]}"; do
    if [[ -n ${SOCKDETAIL[$target]} ]]; then
        echo "socket errors against $target: ${SOCKDETAIL[$target]}"
    fi
done

# Audit: each forwarded request leaves a "decided" and a "completed" record. Requests wrk
# abandoned at the end of a run may have left records without being counted, so allow
# up to two records per connection per wrk run on top.
sleep 0.5
audit_lines="$(wc -l <"$WORK/audit.jsonl")"
forwarded=$((1 + WARM_REQS[swr-gate] + REQS[swr-gate] + LAT_REQS[swr-gate]))
low=$((2 * forwarded))
high=$((low + 2 * (2 * CONNECTIONS + LATENCY_CONNECTIONS)))
if ((audit_lines >= low && audit_lines <= high)); then
    plausible="plausible"
else
    plausible="NOT plausible"
fi
echo "audit trail: $audit_lines records for $forwarded requests wrk and curl saw answered" \
    "(expected $low..$high, 2 per request): $plausible"
# The completed records carry the status each client got: the exact codes, if any failed.
statuses="$(grep -oE '"status":[0-9]+' "$WORK/audit.jsonl" | sort | uniq -c |
    awk '{ sub(/"status":/, "", $2); printf "%s%s x%s", sep, $2, $1; sep = ", " }')"
echo "swr-gate answers by status (from the audit trail): ${statuses:-none}"
# One refused or failed exchange in full, if any: the record says who refused and why.
failed="$(grep '"stage":"completed"' "$WORK/audit.jsonl" | grep -v -m1 '"status":2[0-9][0-9]' || true)"
if [[ -n $failed ]]; then
    echo "first non-2xx audit record: ${failed:0:800}"
fi
if [[ -s $WORK/gate.log ]]; then
    echo "swr-gate logged $(wc -l <"$WORK/gate.log") warn/error lines; first ones:"
    head -n 5 "$WORK/gate.log" | sed 's/^/  /'
fi
