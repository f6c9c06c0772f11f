#!/usr/bin/env bash
# Rookery over plain TCP, STARTTLS and direct TLS (XEP-0368), on asyncio's event loop and on uvloop:
# the same load (bench/xmppload.py) against a fresh server per run, server pinned to $SERVER_CPU,
# load generator to $CLIENT_CPU; medians over REPEAT runs.  docs/performance.md, "TLS".
#
#   bench/tls.sh                                  # N=1000 CLIENTS=200 DURATION=10 REPEAT=3
#   LOOPS="uvloop" MODES="tcp direct" REPEAT=1 bench/tls.sh
#   USABLE=1 MECH=SCRAM-SHA-256 DURATION=0 bench/tls.sh   # logins only, clock stopped at "usable"
#
# Environment: N CLIENTS DURATION RATE REPEAT LOOPS ("asyncio uvloop") MODES ("tcp starttls direct")
# HOLD (seconds the sessions stay idle after the RSS reading: the server's idle CPU) PINGS (XEP-0199 pings timed
# during the hold, from one more client, every PING_INTERVAL s) KEEPALIVE ([c2s] keepalive_interval for the run)
# TAG (a prefix for labels and result files) USABLE (1: --usable) MECH (SASL preference, default SCRAM-SHA-256,SCRAM-SHA-1) CONFIG (default
# bench/rookery-bench.toml) ROOKERY_PY (default .venv/bin/python) PY (the load generator's Python).
# Results: bench/.results/tls-<loop>-<mode>-<i>.json and a median table on stderr.
set -uo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}; CLIENTS=${CLIENTS:-200}; DURATION=${DURATION:-10}; RATE=${RATE:-2000}; REPEAT=${REPEAT:-3}
LOOPS=${LOOPS:-asyncio uvloop}; MODES=${MODES:-tcp starttls direct}
SERVER_CPU=${SERVER_CPU:-1}; CLIENT_CPU=${CLIENT_CPU:-0}
MECH=${MECH:-SCRAM-SHA-256,SCRAM-SHA-1}
CONFIG=${CONFIG:-bench/rookery-bench.toml}
RPY=${ROOKERY_PY:-.venv/bin/python}; PY=${PY:-python3}
SRC=${SRC:-src}   # the server's source tree (a copy lets you edit src/ while a long run goes on)
OUT=bench/.results; mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# $(date -Is) load average: $(cut -d' ' -f1-3 /proc/loadavg) N=$N CLIENTS=$CLIENTS DURATION=$DURATION REPEAT=$REPEAT USABLE=${USABLE:-0} MECH=$MECH" >&2
PYTHONPATH="$SRC" "$RPY" bench/rookery_users.py --config "$CONFIG" --users "$N" || exit 1
# ports: C2S_PORT / DIRECT_PORT (default 27222 / 27223, not run.sh's 25222: two benchmarks on one machine
# must not measure each other's server)
C2S=${C2S_PORT:-27222}; DIRECT=${DIRECT_PORT:-27223}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
SPID=""
stop() {
    if [ -n "$SPID" ] && kill -0 "$SPID" 2>/dev/null; then
        kill "$SPID"
        for _ in $(seq 1 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$SPID" 2>/dev/null && kill -9 "$SPID"
    fi
    SPID=""
}
trap stop EXIT INT TERM
results=()
for r in $(seq 1 "$REPEAT"); do
  for loop in $LOOPS; do
    cfg=$(mktemp --suffix=.toml)
    { echo "event_loop = \"$loop\""; sed -E -e "s/^listen = \[\"127\.0\.0\.1:[0-9]+\"\]/listen = [\"127.0.0.1:$C2S\"]/" \
        -e "s/^direct_tls_listen = \[[^]]*\]/direct_tls_listen = [\"127.0.0.1:$DIRECT\"]/" \
        -e "s/^\[c2s\]$/[c2s]${KEEPALIVE:+\\nkeepalive_interval = $KEEPALIVE}/" "$CONFIG"; } > "$cfg"
    for mode in $MODES; do
        if port_busy "$C2S" || port_busy "$DIRECT"; then
            echo "!! 127.0.0.1:$C2S or :$DIRECT is in use (another server?): $loop $mode run $r skipped" >&2
            continue
        fi
        PYTHONPATH="$SRC" taskset -c "$SERVER_CPU" "$RPY" -m rookery --config "$cfg" serve >>bench/.rookery-data/serve.log 2>&1 &
        SPID=$!
        ok=0
        for _ in $(seq 1 300); do
            kill -0 "$SPID" 2>/dev/null || break
            if (exec 3<>"/dev/tcp/127.0.0.1/$C2S") 2>/dev/null; then ok=1; break; fi
            sleep 0.1
        done
        sleep 0.2
        if [ $ok != 1 ] || ! kill -0 "$SPID" 2>/dev/null; then
            echo "!! server did not start (bench/.rookery-data/serve.log)" >&2; stop; continue
        fi
        case $mode in
            tcp) extra=(--port "$C2S") ;;
            starttls) extra=(--port "$C2S" --tls) ;;
            direct) extra=(--port "$DIRECT" --direct-tls) ;;
        esac
        [ "${USABLE:-0}" = 1 ] && extra+=(--usable)
        [ -n "${HOLD:-}" ] && extra+=(--hold "$HOLD")
        [ -n "${PINGS:-}" ] && extra+=(--pings "$PINGS")
        [ -n "${PING_INTERVAL:-}" ] && extra+=(--ping-interval "$PING_INTERVAL")
        f=$OUT/tls-${TAG:-}$loop-$mode-$r.json
        echo "# run $r/$REPEAT $loop $mode (server pid $SPID, load $(cut -d' ' -f1 /proc/loadavg))" >&2
        taskset -c "$CLIENT_CPU" "$PY" bench/xmppload.py --host 127.0.0.1 --domain localhost --user 'bench{n}' \
            --password secret --connections "$N" --clients "$CLIENTS" --duration "$DURATION" --rate "$RATE" \
            --mechanisms "$MECH" --scram-cache bench/.scram-cache.json --timeout 600 --quiet \
            --server-pid "$SPID" --label "rookery-${TAG:-}$loop-$mode" --json "$f" "${extra[@]}" >/dev/null
        results+=("$f")
        stop
    done
    rm -f "$cfg"
  done
done
[ ${#results[@]} -gt 0 ] || exit 1
"$PY" - "${results[@]}" <<'EOF2'
import json, statistics, sys
rows = {}
for p in sys.argv[1:]:
    r = json.load(open(p))
    rows.setdefault(r["server"], []).append(r)
keys = [("logins_per_s", "logins/s"), ("login_per_server_cpu_s", "logins/server-cpu-s"),
        ("login_p50_ms", "login p50 ms"), ("kib_per_connection", "KiB/conn"), ("msgs_per_s", "msgs/s"),
        ("msgs_per_server_cpu_s", "msgs/server-cpu-s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"),
        ("errors", "errors"), ("max_other_cpu_pct", "other CPU %"), ("idle_cpu_us_per_conn_s", "idle us/conn/s"),
        ("ping_p50_ms", "ping p50 ms"), ("ping_max_ms", "ping max ms")]
def med(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return round(statistics.median(vals), 2) if vals else None
names = list(rows)
print(f"\n{'median of runs':22}" + "".join(f"{n.removeprefix('rookery-'):>18}" for n in names), file=sys.stderr)
print(f"{'runs':22}" + "".join(f"{len(rows[n]):>18}" for n in names), file=sys.stderr)
for k, label in keys:
    print(f"{label:22}" + "".join(f"{str(med([r.get(k) for r in rows[n]])):>18}" for n in names), file=sys.stderr)
summary = {n: {k: med([r.get(k) for r in rows[n]]) for k, _ in keys} for n in names}
print(json.dumps(summary))
EOF2
