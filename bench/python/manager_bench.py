"""Python's multiprocessing.Manager on the two manager workloads, for
bench/src/bin/manager.rs to print next to multiproc's figures.

1. A proxy dict get+set round trip from a child process (us per get+set).
2. 10 processes x 1000 appends to a shared list (appends per second, from
   the first start to the last join).

Prints one JSON object: {"roundtrip_us": ..., "appends_per_s": ...}.
"""
import json
import multiprocessing as mp
import sys
import time


def roundtrip(d, n, out):
    d["k"] = 0
    t = time.perf_counter()
    for _ in range(n):
        v = d["k"]
        d["k"] = v + 1
    out.value = (time.perf_counter() - t) / n * 1e6


def appender(l, n):
    for i in range(n):
        l.append(i)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    per = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    mp.set_start_method("fork")
    with mp.Manager() as m:
        d = m.dict()
        out = m.Value("d", 0.0)
        p = mp.Process(target=roundtrip, args=(d, n, out))
        p.start()
        p.join()
        rt = out.value
        l = m.list()
        t = time.perf_counter()
        ps = [mp.Process(target=appender, args=(l, per)) for _ in range(10)]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
        el = time.perf_counter() - t
        assert len(l) == 10 * per
        print(json.dumps({"roundtrip_us": rt, "appends_per_s": 10 * per / el}))


if __name__ == "__main__":
    main()
