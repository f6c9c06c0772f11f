#!/usr/bin/env bash
# Group chat fan-out, side by side: Prosody's mod_muc and Rookery's muc, one room of N occupants each,
# the same load generator (bench/muc_bench.py), the same machine, one after the other.
#
#   bench/muc.sh                        # 10, 100 and 1,000 occupants, 10 s each
#   SIZES="100" DURATION=20 bench/muc.sh
#   ONLY=rookery bench/muc.sh           # or ONLY=prosody
#
# Each server is pinned to CPU $SERVER_CPU (default 1), the load generator to $CLIENT_CPU (default 0); every
# measurement gets a freshly started server. Results: bench/.results/muc-*.json and a table at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

SIZES=${SIZES:-10 100 1000}
DURATION=${DURATION:-10}
SENDERS=${SENDERS:-5}
WINDOW=${WINDOW:-10}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
ONLY=${ONLY:-}
PY=${PY:-python3}
OUT=bench/.results
PROSODY_PORT=${PROSODY_PORT:-15322}
ROOKERY_PORT=25222   # must match bench/rookery-bench.toml
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
MAXN=0; for n in $SIZES; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
echo "# $(date -Is)  load average: $(cut -d' ' -f1-3 /proc/loadavg)  cpus: $(nproc)  sizes: $SIZES" >&2

LOAD=(taskset -c "$CLIENT_CPU" "$PY" bench/muc_bench.py --host 127.0.0.1 --domain localhost --password secret
      --duration "$DURATION" --senders "$SENDERS" --window "$WINDOW" --scram-cache bench/.scram-cache.json
      --timeout 900)

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

wait_port() {
    for _ in $(seq 1 300); do
        kill -0 "$2" 2>/dev/null || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

results=()
for n in $SIZES; do
    if [ -z "$ONLY" ] || [ "$ONLY" = prosody ]; then
        "$PY" bench/prosody.py stop >/dev/null 2>&1
        if pid=$("$PY" bench/prosody.py start --muc --port "$PROSODY_PORT" --users "$MAXN" --cpu "$SERVER_CPU"); then
            "${LOAD[@]}" --port "$PROSODY_PORT" --server-pid "$pid" --label prosody --occupants "$n" \
                --json "$OUT/muc-prosody-$n.json" >/dev/null
            results+=("$OUT/muc-prosody-$n.json")
        else
            echo "prosody did not start (see bench/.prosody/prosody.out)" >&2
        fi
        "$PY" bench/prosody.py stop >/dev/null 2>&1
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = rookery ]; then
        RPY=${ROOKERY_PY:-.venv/bin/python}
        PYTHONPATH=src "$RPY" bench/rookery_users.py --config bench/rookery-bench.toml --users "$MAXN" >/dev/null || exit 1
        PYTHONPATH=src taskset -c "$SERVER_CPU" "$RPY" -m rookery --config bench/rookery-bench.toml serve \
            >>bench/.rookery-data/serve.log 2>&1 &
        ROOKERY_PID=$!
        if wait_port "$ROOKERY_PORT" "$ROOKERY_PID"; then
            "${LOAD[@]}" --port "$ROOKERY_PORT" --server-pid "$ROOKERY_PID" --label rookery --occupants "$n" \
                --room "bench$RANDOM" --json "$OUT/muc-rookery-$n.json" >/dev/null
            results+=("$OUT/muc-rookery-$n.json")
        else
            echo "rookery did not listen on $ROOKERY_PORT (see bench/.rookery-data/serve.log)" >&2
        fi
        cleanup
    fi
done

[ ${#results[@]} -gt 0 ] || exit 1
"$PY" - "${results[@]}" <<'EOF'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
print(f"{'server':>10} {'occupants':>10} {'room msgs/s':>12} {'delivered/s':>12} {'per server-cpu-s':>17} "
      f"{'p50 ms':>8} {'errors':>7} {'other CPU %':>12}", file=sys.stderr)
for r in rows:
    print(f"{r['server']:>10} {r.get('occupants')!s:>10} {r.get('room_msgs_per_s')!s:>12} "
          f"{r.get('delivered_per_s')!s:>12} {r.get('fanout_per_server_cpu_s')!s:>17} "
          f"{r.get('reflection_p50_ms')!s:>8} {r.get('errors')!s:>7} {r.get('max_other_cpu_pct')!s:>12}",
          file=sys.stderr)
EOF
