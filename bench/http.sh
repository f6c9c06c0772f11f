#!/usr/bin/env bash
# XMPP over HTTP, Rookery and Prosody side by side: N idle BOSH sessions (server RSS per session, CPU
# while idle) and WebSocket message throughput (PAIRS sender/receiver pairs), each server freshly
# started and pinned to CPU $SERVER_CPU, the load generator (bench/httpload.py) to $CLIENT_CPU.
#
#   bench/http.sh                      # N=1000 IDLE=10 PAIRS=50 DURATION=10
#   ONLY=rookery bench/http.sh         # or ONLY=prosody
#   PROSODY_EXTRA='network_settings = { nagle = false }' ONLY=prosody bench/http.sh
#
# Results: bench/.results/http-*.json and one line per server at the end.  See docs/performance.md.
set -uo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
IDLE=${IDLE:-10}
PAIRS=${PAIRS:-50}
DURATION=${DURATION:-10}
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
ONLY=${ONLY:-}
PROSODY_PORT=${PROSODY_PORT:-16222}        # c2s; HTTP on PROSODY_HTTP_PORT
PROSODY_HTTP_PORT=${PROSODY_HTTP_PORT:-16280}
ROOKERY_HTTP_PORT=26280                    # must match bench/rookery-http-bench.toml
PY=${PY:-python3}
RPY=${ROOKERY_PY:-.venv/bin/python}
OUT=bench/.results
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# $(date -Is)  load average: $(cut -d' ' -f1-3 /proc/loadavg)  N=$N IDLE=$IDLE PAIRS=$PAIRS DURATION=$DURATION" >&2

LOAD=(taskset -c "$CLIENT_CPU" "$RPY" bench/httpload.py --bosh "$N" --idle "$IDLE" --ws-pairs "$PAIRS"
      --ws-offset "$N" --duration "$DURATION")
USERS=$((N + 2 * PAIRS))
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

if [ -z "$ONLY" ] || [ "$ONLY" = prosody ]; then
    "$PY" bench/prosody.py stop >/dev/null 2>&1
    if pid=$("$PY" bench/prosody.py start --port "$PROSODY_PORT" --users "$USERS" --cpu "$SERVER_CPU" \
            --extra 'modules_enabled = { "roster"; "saslauth"; "tls"; "disco"; "ping"; "limits"; "bosh"; "websocket" }' \
            --extra "http_ports = { $PROSODY_HTTP_PORT }" --extra 'http_interfaces = { "127.0.0.1" }' \
            --extra 'consider_bosh_secure = true' --extra 'consider_websocket_secure = true' \
            ${PROSODY_EXTRA:+--extra "$PROSODY_EXTRA"}); then
        wait_port "$PROSODY_HTTP_PORT" "$pid"
        echo "# prosody pid $pid" >&2
        "${LOAD[@]}" --base "http://127.0.0.1:$PROSODY_HTTP_PORT" --ws-path /xmpp-websocket --server-pid "$pid" \
            --label prosody --json "$OUT/http-prosody.json" >/dev/null && results+=("$OUT/http-prosody.json")
        "$PY" bench/prosody.py stop >/dev/null 2>&1
    else
        echo "prosody did not start (see bench/.prosody/prosody.out)" >&2
    fi
fi

if [ -z "$ONLY" ] || [ "$ONLY" = rookery ]; then
    PYTHONPATH=src "$RPY" bench/rookery_users.py --config bench/rookery-http-bench.toml --users "$USERS" --scram-cache ''
    PYTHONPATH=src taskset -c "$SERVER_CPU" "$RPY" -m rookery --config bench/rookery-http-bench.toml serve \
        >>bench/.rookery-data/serve-http.log 2>&1 &
    ROOKERY_PID=$!
    if wait_port "$ROOKERY_HTTP_PORT" "$ROOKERY_PID"; then
        echo "# rookery pid $ROOKERY_PID" >&2
        "${LOAD[@]}" --base "http://127.0.0.1:$ROOKERY_HTTP_PORT" --server-pid "$ROOKERY_PID" --label rookery \
            --json "$OUT/http-rookery.json" >/dev/null && results+=("$OUT/http-rookery.json")
    else
        echo "rookery did not listen on $ROOKERY_HTTP_PORT (see bench/.rookery-data/serve-http.log)" >&2
    fi
    cleanup
fi

for r in "${results[@]}"; do
    "$PY" - "$r" <<'EOF2'
import json, sys
d = json.load(open(sys.argv[1]))
b, w = d.get("bosh", {}), d.get("websocket", {})
print(f"{d['label']:>10}: BOSH {b.get('sessions')} idle sessions {b.get('kib_per_session')} KiB/session, "
      f"{b.get('idle_cpu_pct')}% CPU idle (login {b.get('login_s')} s) | WebSocket {w.get('msg_per_s')} msg/s "
      f"({w.get('pairs')} pairs, server CPU {w.get('server_cpu_pct')}%)")
EOF2
done
