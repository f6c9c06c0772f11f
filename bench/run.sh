#!/usr/bin/env bash
# Side-by-side benchmark: Prosody and Rookery, the same load, the same machine, one after the other.
#
#   bench/run.sh                       # 1,000 connections, 200 messaging clients, 10 s phases, 2,000 msg/s
#   N=5000 CLIENTS=400 DURATION=20 REPEAT=3 bench/run.sh
#   ONLY=prosody bench/run.sh          # or ONLY=rookery
#   ONLY=rookery MOBILE=both bench/run.sh   # Rookery without, then with, stream management + carbons
#
# Each server is pinned to CPU $SERVER_CPU (default 1) and the load generator to $CLIENT_CPU (default 0).
# Every measured run gets a freshly started server (RSS per connection is only meaningful on a fresh
# process: neither Lua nor CPython gives freed memory back to the OS). Results: bench/.results/*.json and
# a summary table at the end. See docs/performance.md.
#
# Environment: PY (stdlib Python for the tools, default python3), ROOKERY_PY (a Python with Rookery's
# dependencies; default: the first of .venv/bin/python, python3 that can import rookery.cli),
# PROSODY_VARIANTS (default "default generational": Debian's Prosody configuration as shipped, which
# uses Lua's incremental GC, and the same with gc = { mode = "generational" }, which is ~4x faster on
# messages and ~3x on logins but pauses longer), PROSODY_EXTRA (one more Prosody config line for every
# variant, e.g. 'network_settings = { nagle = false }'), QUIET_WAIT (see below), MOBILE ("" or "off":
# plain sessions; "on": every Rookery session enables XEP-0198 stream management and XEP-0280 carbons,
# xmppload --sm --carbons, labelled rookery-mobile; "both": one run of each, each on a fresh server),
# ROOKERY_PORT (default 25222, the port of bench/rookery-bench*.toml; another one runs a copy).
set -uo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
CLIENTS=${CLIENTS:-200}
DURATION=${DURATION:-10}
RATE=${RATE:-2000}
REPEAT=${REPEAT:-1}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
ONLY=${ONLY:-}
PROSODY_VARIANTS=${PROSODY_VARIANTS:-default generational}
PY=${PY:-python3}
OUT=bench/.results
PROSODY_PORT=15222
ROOKERY_PORT=${ROOKERY_PORT:-25222}   # another port: run on a copy of the config listening there
mkdir -p "$OUT"

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# $(date -Is)  load average: $(cut -d' ' -f1-3 /proc/loadavg)  cpus: $(nproc)" >&2
echo "# N=$N CLIENTS=$CLIENTS DURATION=$DURATION RATE=$RATE REPEAT=$REPEAT server cpu $SERVER_CPU, client cpu $CLIENT_CPU" >&2

LOAD=(taskset -c "$CLIENT_CPU" "$PY" bench/xmppload.py --host 127.0.0.1 --domain localhost
      --user 'bench{n}' --password secret --connections "$N" --clients "$CLIENTS"
      --duration "$DURATION" --rate "$RATE" --scram-cache bench/.scram-cache.json --timeout 900)

ROOKERY_PID=""
cleanup() {
    "$PY" bench/prosody.py stop >/dev/null 2>&1
    if [ -n "$ROOKERY_PID" ] && kill -0 "$ROOKERY_PID" 2>/dev/null; then
        kill "$ROOKERY_PID"
        for _ in $(seq 1 100); do kill -0 "$ROOKERY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$ROOKERY_PID" 2>/dev/null && kill -9 "$ROOKERY_PID"
    fi
    ROOKERY_PID=""
}
trap cleanup EXIT INT TERM

wait_port() {  # wait_port PORT PID: up to 30 s for 127.0.0.1:PORT to accept, while PID lives
    for _ in $(seq 1 300); do
        kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# QUIET_WAIT=S: before each measured run, wait up to S seconds for a 2-second window in which the host's
# processes use < 15% of one CPU (shared machines: other people's tests disturb every figure).
QUIET_WAIT=${QUIET_WAIT:-0}
wait_quiet() {
    [ "$QUIET_WAIT" != 0 ] || return 0
    "$PY" - "$QUIET_WAIT" <<'EOF2'
import os, sys, time
def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[7]
tck, deadline = os.sysconf("SC_CLK_TCK"), time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    b0 = busy(); time.sleep(2); pct = 100 * (busy() - b0) / tck / 2
    if pct < 15:
        sys.exit(0)
print(f"# host still busy ({pct:.0f}% CPU) after {sys.argv[1]} s; measuring anyway", file=sys.stderr)
EOF2
}

results=()

# ---------------------------------------------------------------------------------------------- Prosody
if [ -z "$ONLY" ] || [ "$ONLY" = prosody ]; then
    for variant in $PROSODY_VARIANTS; do
        case $variant in
            default) extra=() ;;
            generational) extra=(--extra 'gc = { mode = "generational" }') ;;
            *) echo "unknown Prosody variant $variant (default, generational)" >&2; continue ;;
        esac
        [ -n "${PROSODY_EXTRA:-}" ] && extra+=(--extra "$PROSODY_EXTRA")
        label=prosody; [ "$variant" = default ] || label=prosody-$variant
        for r in $(seq 1 "$REPEAT"); do
            "$PY" bench/prosody.py stop >/dev/null 2>&1
            if ! pid=$("$PY" bench/prosody.py start --port "$PROSODY_PORT" --users "$N" --cpu "$SERVER_CPU" "${extra[@]}"); then
                echo "prosody did not start (see bench/.prosody/prosody.out)" >&2
                break
            fi
            echo "# $label pid $pid, run $r/$REPEAT" >&2
            wait_quiet
            "${LOAD[@]}" --port "$PROSODY_PORT" --server-pid "$pid" --label "$label" --json "$OUT/$label-$r.json" >/dev/null
            results+=("$OUT/$label-$r.json")
            "$PY" bench/prosody.py stop >/dev/null 2>&1
        done
    done
fi

# ---------------------------------------------------------------------------------------------- Rookery
if [ -z "$ONLY" ] || [ "$ONLY" = rookery ]; then
    RPY=${ROOKERY_PY:-}
    if [ -z "$RPY" ]; then
        for cand in .venv/bin/python python3; do
            if PYTHONPATH=src "$cand" -c 'import rookery.cli' 2>/dev/null; then RPY=$cand; break; fi
        done
    fi
    if [ -z "$RPY" ] || ! PYTHONPATH=src "$RPY" -c 'import rookery.cli' 2>/dev/null; then
        echo "# rookery is not importable (set ROOKERY_PY to a Python with its dependencies): skipped" >&2
    else
        # Accounts: in one process through Rookery's storage API (rookery adduser costs ~1 s per user).
        if ! PYTHONPATH=src "$RPY" bench/rookery_users.py --config bench/rookery-bench.toml --users "$N"; then
            echo "# bulk account creation failed; falling back to rookery adduser, one process per user (slow)" >&2
            for i in $(seq 0 $((N - 1))); do
                PYTHONPATH=src timeout 60 "$RPY" -m rookery --config bench/rookery-bench.toml \
                    adduser "bench$i@localhost" --password secret >/dev/null 2>&1
            done
        fi
        RCONF=bench/rookery-bench.toml
        case ${MOBILE:-off} in on|both) RCONF=bench/rookery-bench-mobile.toml ;; esac
        case ${MOBILE:-off} in
            on) variants=(mobile) ;;
            both) variants=(plain mobile) ;;
            *) variants=(plain) ;;
        esac
        if [ "$ROOKERY_PORT" != 25222 ]; then  # e.g. someone else's benchmark holds 25222
            sed "s/127.0.0.1:25222/127.0.0.1:$ROOKERY_PORT/" "$RCONF" >"$OUT/rookery-$ROOKERY_PORT.toml"
            RCONF=$OUT/rookery-$ROOKERY_PORT.toml
        fi
        for r in $(seq 1 "$REPEAT"); do  # variants alternate: shared machines drift
        for variant in "${variants[@]}"; do
        label=rookery; mobile=()
        if [ "$variant" = mobile ]; then label=rookery-mobile; mobile=(--sm --carbons); fi
            PYTHONPATH=src taskset -c "$SERVER_CPU" "$RPY" -m rookery --config "$RCONF" serve \
                >>bench/.rookery-data/serve.log 2>&1 &
            ROOKERY_PID=$!   # taskset execs python: this is the server's own PID
            if ! wait_port "$ROOKERY_PORT" "$ROOKERY_PID"; then
                echo "rookery did not listen on $ROOKERY_PORT (see bench/.rookery-data/serve.log)" >&2
                cleanup
                break
            fi
            echo "# $label pid $ROOKERY_PID, run $r/$REPEAT" >&2
            wait_quiet
            "${LOAD[@]}" "${mobile[@]}" --port "$ROOKERY_PORT" --server-pid "$ROOKERY_PID" --label "$label" \
                --json "$OUT/$label-$r.json" >/dev/null
            results+=("$OUT/$label-$r.json")
            cleanup
        done
        done
    fi
fi

# ---------------------------------------------------------------------------------------------- summary
[ ${#results[@]} -gt 0 ] || exit 1
"$PY" - "${results[@]}" <<'EOF'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
for r in rows:
    print(json.dumps(r))
keys = [("logins_per_s", "logins/s"), ("login_per_server_cpu_s", "logins/server-cpu-s"),
        ("kib_per_connection", "KiB/conn"), ("msgs_per_s", "msgs/s"),
        ("msgs_per_server_cpu_s", "msgs/server-cpu-s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
        ("max_ms", "max ms"), ("errors", "errors"), ("max_other_cpu_pct", "other CPU % (noise)")]
print(f"\n{'':24}" + "".join(f"{r['server']:>22}" for r in rows), file=sys.stderr)
for k, label in keys:
    print(f"{label:24}" + "".join(f"{str(r.get(k)):>22}" for r in rows), file=sys.stderr)
EOF
