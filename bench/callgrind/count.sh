#!/usr/bin/env bash
# Instructions per task on multiproc's hot paths, parent and workers, under
# callgrind. Each workload of the `hotpath` binary runs at two counts; the
# difference between them, divided by the difference in tasks, is the cost
# of one task (start-up, warm-up and shutdown cancel). Each count runs REPS
# times and the smallest total is kept: the parent's pool threads poll in
# loops whose length depends on scheduling, which only ever adds
# instructions. Workers' counts are the sum over every worker process.
#
#   bench/callgrind/count.sh            # every workload, about a minute
#   bench/callgrind/count.sh w1 w3      # a subset
#   REPS=5 bench/callgrind/count.sh     # more runs per count (default 3)
#   HOTPATH=path/to/hotpath bench/callgrind/count.sh   # skip the build
#
# Needs valgrind (3.19 works: multiproc falls back when pidfd_open is ENOSYS
# and spawns workers from the program's path when /proc/self/exe is the tool).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
reps=${REPS:-3}
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "REPS must be a positive number" >&2; exit 2; }

# workload, low count, high count, what a unit is
table="w1 200 2200 task
w3 1000 11000 task
w2 10000 110000 item
t1 200 2200 task
t3 1000 11000 task"

if [[ $# -gt 0 ]]; then
    wanted=" $* "
    table=$(echo "$table" | while read -r w lo hi unit; do
        if [[ $wanted == *" $w "* ]]; then echo "$w $lo $hi $unit"; fi
    done)
    [[ -n $table ]] || { echo "usage: $0 [w1 w3 w2 t1 t3 ...]" >&2; exit 2; }
fi

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
if [[ -z ${HOTPATH:-} ]]; then
    (cd "$root" && cargo build --release -q -p multiproc-bench --bin hotpath)
    target=${CARGO_TARGET_DIR:-$root/target}
    HOTPATH=$target/release/hotpath
fi
[[ -x $HOTPATH ]] || { echo "no hotpath binary at $HOTPATH" >&2; exit 1; }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/multiproc-callgrind.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# run WORKLOAD N: prints "PARENT_IR WORKERS_IR WORKER_PROCESSES"
run() {
    local dir=$scratch/$1-$2-$RANDOM
    mkdir "$dir"
    valgrind --tool=callgrind --trace-children=yes --callgrind-out-file="$dir/cg.%p" \
        "$HOTPATH" "$1" "$2" >"$dir/out" 2>"$dir/log" &
    local pid=$!
    if ! wait "$pid"; then
        echo "hotpath $1 $2 failed under valgrind; its log:" >&2
        grep -v '^==' "$dir/log" | tail -20 >&2
        exit 1
    fi
    local f parent="" workers=0 procs=0 ir
    for f in "$dir"/cg.*; do
        ir=$(awk '/^summary:/ {print $2; exit}' "$f")
        if [[ -z $ir ]]; then
            # A process killed before callgrind wrote its totals: the count
            # would be short, so it is no count at all.
            echo "hotpath $1 $2: ${f##*/} has no totals (killed before it exited?)" >&2
            exit 1
        fi
        if [[ $f == "$dir/cg.$pid" ]]; then
            parent=$ir
        else
            workers=$((workers + ir))
            procs=$((procs + 1))
        fi
    done
    [[ -n $parent ]] || { echo "hotpath $1 $2: no parent profile" >&2; exit 1; }
    rm -rf "$dir"
    echo "$parent $workers $procs"
}

# min of the first field / of the second field over lines on stdin
mins() { awk 'NR == 1 || $1 < p {p = $1} NR == 1 || $2 < w {w = $2} END {print p, w}'; }
maxp() { awk '$1 > p {p = $1} END {print p}'; }

printf '%-4s %-13s %16s %16s %9s  %s\n' "" "counts" "parent Ir/unit" "workers Ir/unit" "workers" \
    "parent Ir at the high count, min..max"
echo "$table" | while read -r w lo hi unit; do
    low="" high=""
    for ((i = 0; i < reps; i++)); do
        low+=$(run "$w" "$lo")$'\n'
        high+=$(run "$w" "$hi")$'\n'
    done
    read -r plo wlo < <(printf '%s' "$low" | mins)
    read -r phi whi < <(printf '%s' "$high" | mins)
    pmax=$(printf '%s' "$high" | maxp)
    procs=$(printf '%s' "$high" | awk '{print $3; exit}')
    awk -v w="$w" -v lo="$lo" -v hi="$hi" -v unit="$unit" -v plo="$plo" -v phi="$phi" \
        -v wlo="$wlo" -v whi="$whi" -v pmax="$pmax" -v procs="$procs" 'BEGIN {
        d = hi - lo
        printf "%-4s %-13s %16.0f %16.0f %9d  %d..%d (+%.1f%%)  per %s\n", w, lo "/" hi,
            (phi - plo) / d, (whi - wlo) / d, procs, phi, pmax, 100 * (pmax - phi) / phi, unit
    }'
done
