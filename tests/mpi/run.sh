#!/usr/bin/env bash
# The MPI scenarios (tests/mpi/check.rs) under mpirun with 3 and 5 ranks, the
# build-mismatch refusal (ranks of another executable), the example, and a
# check that no rank outlived its job. Each mpirun has a hard time bound.
# Needs the `mpi` feature's system packages (see .ci/run).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Open MPI spins in its progress loop; ours polls and sleeps instead, so this
# only matters for the library's own waits (init, finalize).
export OMPI_MCA_mpi_yield_when_idle=1
profile=${MPI_PROFILE:-debug}
flag=(); [ "$profile" = release ] && flag=(--release)
cargo build "${flag[@]}" -p multiproc --features mpi --example mpi_check --example mpi_pool
bin=target/$profile/examples
run() { timeout --kill-after=10 120 mpirun --oversubscribe "$@"; }
fails=0
for n in 3 5; do
  echo "--- mpirun -n $n mpi_check"
  run -n "$n" "$bin/mpi_check" || { echo "FAILED: mpirun -n $n mpi_check"; fails=$((fails + 1)); }
done
echo "--- build mismatch: rank 0 is mpi_check, ranks 1-2 are mpi_pool"
run -n 1 "$bin/mpi_check" mismatch : -n 2 "$bin/mpi_pool" \
  || { echo "FAILED: build mismatch"; fails=$((fails + 1)); }
echo "--- a task kills its whole rank (isolate(false)): the job ends, nothing hangs"
start=$(date +%s)
set +e
timeout --kill-after=5 60 mpirun --oversubscribe -n 3 "$bin/mpi_check" rank-dies >/dev/null 2>&1
rc=$?
set -e
took=$(( $(date +%s) - start ))
if [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] || [ "$took" -ge 25 ]; then
  echo "FAILED: rank death: exit code $rc after ${took}s (want a non-zero exit from mpirun, soon)"
  fails=$((fails + 1))
else
  echo "the job ended with code $rc after ${took}s"
fi
echo "--- example: mpirun -n 4 mpi_pool"
run -n 4 "$bin/mpi_pool" || { echo "FAILED: example"; fails=$((fails + 1)); }
echo "--- not launched by MPI: world() fails with a clear error"
if out=$("$bin/mpi_pool" 2>&1); then
  echo "FAILED: mpi_pool ran without mpirun"; fails=$((fails + 1))
else
  echo "$out" | grep -q "not started by an MPI launcher" \
    || { echo "FAILED: unclear error: $out"; fails=$((fails + 1)); }
fi
sleep 1
left=$(pgrep -f "$bin/mpi_(check|pool)" || true)
if [ -n "$left" ]; then
  echo "FAILED: processes of the MPI runs are still running:"; ps -fp $left || true
  kill -9 $left 2>/dev/null || true
  fails=$((fails + 1))
fi
if [ "$fails" -gt 0 ]; then
  echo "MPI tests: $fails step(s) failed"
  exit 1
fi
echo "MPI tests: all steps passed"
