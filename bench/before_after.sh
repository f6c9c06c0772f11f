#!/usr/bin/env bash
# Before/after benchmark of Rookery against itself: runs the Rookery-only half of bench/run.sh
# alternately in two checkouts (base, new, base, new, ...), each from its own directory with its own
# .venv, copies every run's result aside, and prints a side-by-side min-max table.
#
#   bench/before_after.sh                                  # BASE=../rookery-before NEW=. REPEAT=2
#   REPEAT=3 QUIET_WAIT=120 bench/before_after.sh
#   BASE=. NEW=. REPEAT=1 bench/before_after.sh   # self-test (A/A)
#   bench/before_after.sh --table-only [OUT]               # only re-print the table of an earlier session
#
# Environment:
#   BASE, NEW    checkouts (each needs bench/run.sh and .venv/bin/python able to import rookery)
#   REPEAT       runs per side (default 2); the order is base,new,base,new,...
#   OUT          where results go (default bench/.before_after/<timestamp> of the checkout it runs from); each run in <side>-<i>/
#   BASE_PY, NEW_PY   override each side's Python (default <checkout>/.venv/bin/python)
#   N CLIENTS DURATION RATE QUIET_WAIT SERVER_CPU CLIENT_CPU PY   passed through to bench/run.sh
#   FORCE=1      go on despite failed pre-flight checks (differing bench/ tools, import failures)
#   REPEAT=0     pre-flight checks only (reads the checkouts, runs nothing, writes nothing into them)
#
# Each checkout writes its own gitignored state: bench/.results/, bench/.rookery-data/ (the SQLite DB
# with the 1,000 bench accounts, created on the first run, ~20 s) and bench/.scram-cache.json.
# Loopback only (127.0.0.1:25222, from bench/rookery-bench.toml); both sides use the same port, so
# runs are strictly sequential and the port must be free before each one.
set -uo pipefail
export GIT_OPTIONAL_LOCKS=0   # git status must not refresh/lock the index of a checkout someone is working in

BASE=${BASE:?set BASE to the checkout to compare against (git worktree add ../rookery-before <rev>)}
NEW=${NEW:-.}
BASE=$(cd "$BASE" && pwd) || exit 2
NEW=$(cd "$NEW" && pwd) || exit 2
REPEAT=${REPEAT:-2}
BASE_PY=${BASE_PY:-$BASE/.venv/bin/python}
NEW_PY=${NEW_PY:-$NEW/.venv/bin/python}
PORT=25222

table() {  # table OUTDIR
    python3 - "$1" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
sides = {}
for side in ("base", "new"):
    rows = []
    for d in sorted(glob.glob(os.path.join(out, f"{side}-*")), key=lambda p: int(p.rsplit("-", 1)[1])):
        for f in sorted(glob.glob(os.path.join(d, "rookery-*.json"))):
            with open(f) as fh:
                rows.append(json.load(fh))
    sides[side] = rows
meta = {}
for side in ("base", "new"):
    p = os.path.join(out, f"{side}.checkout")
    meta[side] = open(p).read().strip() if os.path.exists(p) else "?"
keys = [
    ("logins_per_s", "logins/s", 0, True),
    ("login_per_server_cpu_s", "logins/server-CPU-s", 0, True),
    ("kib_per_connection", "KiB per idle conn", 2, False),
    ("msgs_per_s", "messages/s", 0, True),
    ("msgs_per_server_cpu_s", "msgs/server-CPU-s", 0, True),
    ("p50_ms", "p50 ms @ rate", 3, False),
    ("p99_ms", "p99 ms @ rate", 3, False),
    ("max_ms", "max ms @ rate", 2, False),
    ("errors", "errors", 0, False),
    ("max_other_cpu_pct", "other CPU % (noise)", 1, False),
]
def rng(vals, nd):
    vals = [v for v in vals if isinstance(v, (int, float))]
    if not vals:
        return "-", None
    lo, hi = min(vals), max(vals)
    f = (lambda x: f"{x:,.{nd}f}")
    return (f(lo) if lo == hi else f"{f(lo)} - {f(hi)}"), (lo + hi) / 2
nb, nn = len(sides["base"]), len(sides["new"])
print(f"\nbase: {meta['base']}\nnew:  {meta['new']}")
print(f"results: {out}\n")
hdr = f"{'':22}{'base (' + str(nb) + ' runs) min - max':>30}{'new (' + str(nn) + ' runs) min - max':>30}{'new/base (mid)':>16}"
print(hdr)
print("-" * len(hdr))
for k, label, nd, higher_better in keys:
    b, bm = rng([r.get(k) for r in sides["base"]], nd)
    n, nm = rng([r.get(k) for r in sides["new"]], nd)
    ratio = f"{nm / bm:.2f}x" if bm and nm is not None and k not in ("errors", "max_other_cpu_pct") else ""
    print(f"{label:22}{b:>30}{n:>30}{ratio:>16}")
print("\n(higher is better: logins, messages; lower is better: KiB, latency. "
      "'other CPU %' above ~10 means the host disturbed the figures.)")
EOF
}

if [ "${1:-}" = "--table-only" ]; then
    table "${2:-${OUT:-$(ls -d bench/.before_after/*/ 2>/dev/null | sort | tail -1)}}"
    exit $?
fi

OUT=${OUT:-$(pwd)/bench/.before_after/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
fail=0

# ------------------------------------------------------------------------------------------ pre-flight
describe() {  # describe DIR: commit + working-tree state, to see whether a checkout changed between runs
    local d=$1
    printf '%s @ %s' "$d" "$(git -C "$d" rev-parse --short HEAD 2>/dev/null || echo '?')"
    local dirty
    dirty=$( { git -C "$d" diff HEAD 2>/dev/null; git -C "$d" ls-files -o --exclude-standard 2>/dev/null \
              | while read -r f; do echo "$f"; cat "$d/$f" 2>/dev/null; done; } | sha1sum | cut -c1-10)
    if [ -n "$(git -C "$d" status --porcelain 2>/dev/null)" ]; then
        printf ' + uncommitted changes (tree hash %s: %s)' "$dirty" \
            "$(git -C "$d" status --porcelain 2>/dev/null | awk '{print $2}' | tr '\n' ' ')"
    fi
}

for side in base new; do
    if [ $side = base ]; then dir=$BASE; py=$BASE_PY; else dir=$NEW; py=$NEW_PY; fi
    if [ ! -f "$dir/bench/run.sh" ]; then echo "!! $side: $dir/bench/run.sh missing" >&2; exit 2; fi
    if [ ! -x "$py" ]; then
        echo "!! $side: $py missing: (cd $dir && make .venv/.installed-\$(cksum pyproject.toml | cut -d' ' -f1))" >&2
        exit 2
    fi
    # What run.sh and bench/rookery_users.py import, checked without writing bytecode into the checkout.
    # If rookery_users.py cannot run, run.sh silently falls back to one `rookery adduser` per user (~20 min).
    if ! (cd "$dir" && PYTHONPATH=src "$py" -B -c '
import os, sys, rookery, rookery.cli
from rookery.config import load_config
from rookery.storage.sql import make_storage
from rookery.streams.sasl import make_credentials
src = os.path.realpath("src/rookery")
if os.path.realpath(os.path.dirname(rookery.__file__)) != src:
    sys.exit(f"rookery is imported from {rookery.__file__}, not from {src}")
'); then
        echo "!! $side: $py cannot import rookery (or bench/rookery_users.py's imports) from $dir/src" >&2
        fail=1
    fi
    describe "$dir" > "$OUT/$side.checkout"; echo >> "$OUT/$side.checkout"
    echo "# $side: $(cat "$OUT/$side.checkout")  python: $py" >&2
done
if [ "$(realpath "$BASE")" != "$(realpath "$NEW")" ]; then
    # Each side runs its own load generator: they must be the same, or the comparison measures the tool.
    if ! diff -q "$BASE/bench/run.sh" "$NEW/bench/run.sh" >/dev/null \
       || ! diff -q "$BASE/bench/xmppload.py" "$NEW/bench/xmppload.py" >/dev/null \
       || ! diff -q "$BASE/bench/rookery-bench.toml" "$NEW/bench/rookery-bench.toml" >/dev/null \
       || ! diff -q "$BASE/bench/rookery_users.py" "$NEW/bench/rookery_users.py" >/dev/null; then
        echo "!! bench/{run.sh,xmppload.py,rookery-bench.toml,rookery_users.py} differ between $BASE and $NEW" >&2
        fail=1
    fi
fi
if [ "$fail" != 0 ] && [ "${FORCE:-0}" != 1 ]; then echo "!! pre-flight failed (FORCE=1 to go on)" >&2; exit 2; fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# ------------------------------------------------------------------------------------------ the runs
echo "# $(date -Is) REPEAT=$REPEAT N=${N:-1000} CLIENTS=${CLIENTS:-200} DURATION=${DURATION:-10} RATE=${RATE:-2000} -> $OUT" >&2
t_all=$SECONDS
for i in $(seq 1 "$REPEAT"); do
    for side in base new; do
        if [ $side = base ]; then dir=$BASE; py=$BASE_PY; else dir=$NEW; py=$NEW_PY; fi
        run=$OUT/$side-$i
        mkdir -p "$run"
        if port_busy; then
            echo "!! 127.0.0.1:$PORT is already in use (a leftover server?): $side run $i skipped" >&2
            echo "port $PORT busy" > "$run/FAILED"
            continue
        fi
        describe "$dir" > "$run/checkout"; echo >> "$run/checkout"
        if ! cmp -s "$run/checkout" "$OUT/$side.checkout"; then
            echo "!! $side checkout changed since the start: $(cat "$run/checkout")" >&2
        fi
        echo "# ---- $side run $i/$REPEAT in $dir" >&2
        marker=$(mktemp); t0=$SECONDS
        (cd "$dir" && ONLY=rookery REPEAT=1 ROOKERY_PY="$py" bash bench/run.sh) >"$run/stdout" 2>"$run/stderr"
        rc=$?
        echo "$((SECONDS - t0))" > "$run/wall_s"
        # run.sh with REPEAT=1 writes bench/.results/rookery-1.json; take it only if this run wrote it.
        res=$dir/bench/.results/rookery-1.json
        if [ "$rc" = 0 ] && [ -f "$res" ] && [ "$res" -nt "$marker" ]; then
            cp "$res" "$run/rookery-1.json"
            python3 - "$run/rookery-1.json" <<'EOF2' >&2
import json, sys
r = json.load(open(sys.argv[1]))
print("#      %s logins/s, %s KiB/conn, %s msgs/s, p50 %s / p99 %s ms, other CPU %s %%" % tuple(
    r.get(k) for k in ("logins_per_s", "kib_per_connection", "msgs_per_s", "p50_ms", "p99_ms", "max_other_cpu_pct")))
EOF2
        else
            echo "!! $side run $i failed (rc $rc, no fresh result); see $run/stderr" >&2
            echo "rc $rc" > "$run/FAILED"
        fi
        rm -f "$marker"
        tail -n 50 "$dir/bench/.rookery-data/serve.log" > "$run/serve.log.tail" 2>/dev/null
        echo "#      $(cat "$run/wall_s") s" >&2
    done
done
echo "# total $((SECONDS - t_all)) s" >&2
table "$OUT"
