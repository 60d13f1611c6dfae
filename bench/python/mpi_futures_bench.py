"""mpi4py.futures side of bench/src/bin/mpi_bench.rs.

Run by the driver as `mpirun -n 4 python3 -m mpi4py.futures THIS REPS`:
rank 0 runs this script, ranks 1-3 are the executor's workers. Prints
`RESULT mpi4py <workload> <seconds>` lines, each the median of REPS runs.
"""
import statistics
import sys
import time

from mpi4py.futures import MPIPoolExecutor

ITEMS = 10_000
APPLIES = 2_000


def noop(x):
    return x


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with MPIPoolExecutor() as ex:
        list(ex.map(noop, range(ITEMS), chunksize=1))  # warm-up
        for chunksize in (1, 100):
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                out = list(ex.map(noop, range(ITEMS), chunksize=chunksize))
                times.append(time.perf_counter() - t)
                assert len(out) == ITEMS
            print(f"RESULT mpi4py map-chunksize-{chunksize} {statistics.median(times):.9f}")
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(APPLIES):
                ex.submit(noop, i).result()
            times.append((time.perf_counter() - t) / APPLIES)
        print(f"RESULT mpi4py apply {statistics.median(times):.9f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
