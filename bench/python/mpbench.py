#!/usr/bin/env python3
"""Python side of multiproc's benchmark harness (bench/ in this repository).

usage: mpbench.py CONTENDER WORKLOAD PARAMS_JSON

CONTENDER  mp       multiprocessing.Pool (fork start method)
           ppe      concurrent.futures.ProcessPoolExecutor (fork context)
           threads  multiprocessing.pool.ThreadPool (for T1 and T3)
WORKLOAD   W1..W10, T1, T3, Q1, P1, or PEAK (the parent's peak RSS during W2's map)
PARAMS     the counts for this run, as JSON, from the Rust harness

Prints one JSON object on stdout:
  {"figures": [{"id": "W1", "value": 141.2, "status": "ok", "note": null}, ...]}
Units are fixed per figure id by the harness (µs, items/s, ms, MiB, ...).
"""

import json
import multiprocessing as mp
import os
import signal
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.pool import ThreadPool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procfs  # noqa: E402

CTX = mp.get_context("fork")
TIMEOUTS = (mp.TimeoutError, FutureTimeout, TimeoutError)


# --- tasks -------------------------------------------------------------------

def inc(x):
    return x + 1


def noop(_x):
    pass


def boom(x):
    raise ValueError(f"boom {x}")


def spin(n):
    x = 1
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    return x


def checksum(buf):
    return zlib.adler32(buf)


def getpid(_x):
    return os.getpid()


def long_task(path):
    """Publishes this worker's pid in `path`, then sleeps far past any bound."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(60)
    return os.getpid()


# --- one API over the three pools --------------------------------------------

class Pool:
    """multiprocessing.Pool or its ThreadPool, seen through one small API."""

    def __init__(self, n, threads=False):
        self.p = ThreadPool(n) if threads else CTX.Pool(n)
        self.default_map_chunksize = None

    def apply(self, f, x):
        return self.p.apply(f, (x,))

    def submit(self, f, x):
        return self.p.apply_async(f, (x,))

    @staticmethod
    def get(handle, timeout=None):
        return handle.get(timeout)

    def map(self, f, items, chunksize=None):
        return self.p.map(f, items, chunksize)

    def close_join(self):
        self.p.close()
        self.p.join()

    def kill_all(self):
        self.p.terminate()
        self.p.join()


class Executor:
    """ProcessPoolExecutor with the same small API (its map's default chunksize is 1)."""

    def __init__(self, n):
        self.p = ProcessPoolExecutor(n, mp_context=CTX)
        self.default_map_chunksize = 1

    def apply(self, f, x):
        return self.p.submit(f, x).result()

    def submit(self, f, x):
        return self.p.submit(f, x)

    @staticmethod
    def get(handle, timeout=None):
        return handle.result(timeout)

    def map(self, f, items, chunksize=None):
        return list(self.p.map(f, items, chunksize=chunksize or 1))

    def close_join(self):
        self.p.shutdown(wait=True)

    def kill_all(self):
        for proc in list(getattr(self.p, "_processes", {}).values()):
            proc.kill()
        self.p.shutdown(wait=False, cancel_futures=True)


def make(contender, n):
    if contender == "mp":
        return Pool(n)
    if contender == "threads":
        return Pool(n, threads=True)
    if contender == "ppe":
        return Executor(n)
    raise SystemExit(f"unknown contender {contender}")


def warm(pool, n):
    """Runs a few tasks so that every worker is up before timing starts."""
    pool.map(inc, range(8 * n), 1)


def fig(fid, value, status="ok", note=None):
    return {"id": fid, "value": value, "status": status, "note": note}


def now():
    return time.perf_counter()


def quantile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# --- workloads ----------------------------------------------------------------

def w1(c, p, prefix):
    pool = make(c, 2)
    warm(pool, 2)
    lat = []
    for i in range(p["w1_calls"]):
        t = time.perf_counter_ns()
        pool.apply(inc, i)
        lat.append((time.perf_counter_ns() - t) / 1000)
    pool.close_join()
    lat.sort()
    return [fig(prefix, quantile(lat, 0.5)), fig(prefix + ".p99", quantile(lat, 0.99))]


def w3(c, p, prefix):
    pool = make(c, 2)
    warm(pool, 2)
    n = p["w3_tasks"]
    t = now()
    handles = [pool.submit(inc, i) for i in range(n)]
    total = sum(pool.get(h) for h in handles)
    secs = now() - t
    pool.close_join()
    assert total == n * (n + 1) // 2
    return [fig(prefix, n / secs)]


def w2(c, p):
    pool = make(c, 2)
    warm(pool, 2)
    out = []
    n = p["w2_items"]
    if c == "ppe":
        n_default = p["w2_ppe_default_items"]
        note = f"executor map's default chunksize is 1: measured over {n_default} items"
    else:
        n_default, note = n, "default chunksize (divmod(n, 4 * workers))"
    t = now()
    res = pool.map(inc, range(n_default))
    default_rate = n_default / (now() - t)
    out.append(fig("W2.default", default_rate, note=note))
    assert res[-1] == n_default
    best = (default_rate, "default")
    for cs in p["w2_chunksizes"]:
        t = now()
        res = pool.map(inc, range(n), cs)
        rate = n / (now() - t)
        assert res[-1] == n
        if rate > best[0]:
            best = (rate, cs)
    out.append(fig("W2.best", best[0], note=f"chunksize {best[1]}"))
    pool.close_join()
    return out


def peak(c, p):
    """The parent's peak RSS while mapping over W2's items, in this fresh interpreter."""
    base = procfs.status_kib("VmRSS")
    pool = make(c, 2)
    n = p["w2_items"]
    cs = None
    if c == "ppe":
        cs = -(-n // 8)  # the executor's default of 1 would take minutes
    res = pool.map(inc, range(n), cs)
    assert res[-1] == n
    hwm = procfs.status_kib("VmHWM")
    pool.close_join()
    note = f"VmHWM of a fresh interpreter; {base / 1024:.1f} MiB before the pool"
    if cs:
        note += f"; chunksize {cs}"
    return [fig("W2.peak_rss", hwm / 1024, note=note)]


def w4(c, p):
    samples = []
    for _ in range(p["w4_samples"]):
        t = now()
        pool = make(c, 4)
        pool.apply(inc, 1)
        samples.append((now() - t) * 1000)
        pool.kill_all()
    samples.sort()
    return [fig("W4", quantile(samples, 0.5), note=f"median of {len(samples)}")]


def w5(c, _p):
    pool = make(c, 1)
    pool.apply(inc, 1)
    time.sleep(0.3)
    kids = procfs.children(os.getpid())
    if len(kids) != 1:
        pool.kill_all()
        return [fig("W5.rss", None, "failed", f"expected 1 worker, found {kids}")]
    rss, uss = procfs.rss_uss_kib(kids[0])
    pool.close_join()
    return [fig("W5.rss", rss / 1024), fig("W5.uss", uss / 1024)]


def calibrate_spin(secs):
    n = 200_000
    best = min(_timed(spin, n) for _ in range(3))
    return max(1, int(n * secs / best))


def _timed(f, arg):
    t = now()
    f(arg)
    return now() - t


def w6(c, p):
    iters = calibrate_spin(p["w6_task_secs"])
    times = []
    for workers in (1, 2):
        pool = make(c, workers)
        warm(pool, workers)
        t = now()
        pool.map(spin, [iters] * p["w6_tasks"], 1)
        times.append(now() - t)
        pool.close_join()
    note = f"{p['w6_tasks']} tasks of {times[0] / p['w6_tasks']:.2f} s; 1 worker {times[0]:.2f} s"
    return [fig("W6", times[0] / times[1], note=note)]


def w7(c, p):
    n = p["w7_tasks"]
    t = now()
    pool = make(c, 5)
    pool.map(inc, range(n))
    pool.close_join()
    t_pool = now() - t
    out = [fig("W7.pool", t_pool)]
    if c == "mp":
        t = now()
        procs = [CTX.Process(target=noop, args=(i,)) for i in range(n)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        t_procs = now() - t
        bad = [proc.exitcode for proc in procs if proc.exitcode != 0]
        assert not bad, bad
        out += [fig("W7.procs", t_procs), fig("W7.ratio", t_procs / t_pool)]
    return out


def w8(c, p):
    size, count = p["w8_buf_bytes"], p["w8_buffers"]
    bufs = [os.urandom(size) for _ in range(count)]
    pool = make(c, 2)
    warm(pool, 2)
    t = now()
    sums = pool.map(checksum, bufs)
    secs = now() - t
    pool.close_join()
    assert sums == [checksum(b) for b in bufs]
    note = f"{count} x {size >> 20} MiB bytes pickled over pipes, adler32 in the worker"
    return [fig("W8", count * size / secs / 1e9, note=note)]


def w9(c, p):
    pool = make(c, 2)
    warm(pool, 2)
    before = procfs.children(os.getpid())
    n = p["w9_tasks"]
    t = now()
    handles = [pool.submit(boom, i) for i in range(n)]
    raised = 0
    for h in handles:
        try:
            pool.get(h)
        except ValueError:
            raised += 1
    secs = now() - t
    after = procfs.children(os.getpid())
    pool.close_join()
    survived = before == after and len(before) == 2
    note = f"{raised}/{n} raised ValueError; workers {before} -> {after}"
    return [fig("W9", secs / n * 1e6, note=note), fig("W9.survived", 1.0 if survived else 0.0)]


def _produce(q, n):
    for i in range(n):
        q.put(i)


def _send_mib(conn, n):
    buf = bytes(1 << 20)
    for _ in range(n):
        conn.send_bytes(buf)


def q1(_c, p):
    n = p["q1_items"]
    q = CTX.Queue()
    proc = CTX.Process(target=_produce, args=(q, n))
    proc.start()
    expect = q.get() + 1
    t = now()
    for _ in range(1, n):
        v = q.get()
        assert v == expect, (v, expect)
        expect += 1
    secs = now() - t
    proc.join()
    note = f"{n} int items, order checked, clock from the first item"
    return [fig("Q1", (n - 1) / secs, note=note)]


def p1(_c, p):
    n = p["p1_msgs"]
    rx, tx = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_send_mib, args=(tx, n))
    proc.start()
    tx.close()
    rx.recv_bytes()
    t = now()
    total = 0
    for _ in range(1, n):
        m = rx.recv_bytes()
        assert len(m) == 1 << 20, len(m)
        total += len(m)
    secs = now() - t
    proc.join()
    note = f"{n} x 1 MiB send_bytes/recv_bytes, clock from the first"
    return [fig("P1", total / secs / 1e9, note=note)]


def wait_for_pid_file(path, timeout=10.0):
    end = now() + timeout
    while now() < end:
        try:
            with open(path) as f:
                return int(f.read())
        except FileNotFoundError:
            time.sleep(0.001)
    raise RuntimeError(f"no worker started the long task ({path})")


def w10(c, p):
    bound = p["w10_timeout_s"]
    base = os.path.join(p["tmpdir"], f"py-{c}-{os.getpid()}")
    pool = make(c, 2)
    try:
        h1 = pool.submit(long_task, base + "-1")
        victim = wait_for_pid_file(base + "-1")
        pool.submit(long_task, base + "-2")
        other = wait_for_pid_file(base + "-2")
        t0 = now()
        os.kill(victim, signal.SIGKILL)
        fail_ms, fail_err = None, None
        try:
            y = pool.submit(getpid, 0)
        except Exception as e:  # the executor refuses work once broken
            y, fail_err = None, e
        try:
            pool.get(h1, bound)
            fail_status = "failed"
        except TIMEOUTS:
            fail_status = "hangs"
        except Exception as e:
            fail_ms, fail_status, fail_err = (now() - t0) * 1000, "ok", e
        ready_ms, ready_note = None, None
        if y is not None:
            try:
                ypid = pool.get(y, bound)
                ready_ms = (now() - t0) * 1000
                ready_note = f"a new task ran on pid {ypid} (victim {victim}, busy {other})"
            except TIMEOUTS:
                ready_note = f"a new task got no worker within {bound} s"
            except Exception as e:
                ready_note = f"a new task failed: {type(e).__name__}"
        else:
            ready_note = f"new work refused: {type(fail_err).__name__}"
    finally:
        pool.kill_all()
        for pid in procfs.children(os.getpid()):
            os.kill(pid, signal.SIGKILL)
    if fail_status == "hangs":
        note = f"the killed task's result never resolved (gave up after {bound} s); {ready_note}"
        return [fig("W10", None, "hangs", note), fig("W10.fail", None, "hangs", note)]
    err = type(fail_err).__name__
    if c == "ppe":
        note = f"{err}: the whole executor is broken, the other running task fails too; {ready_note}"
        return [fig("W10", None, "broken", note), fig("W10.fail", fail_ms, note=err)]
    if fail_ms is None or ready_ms is None:
        return [fig("W10", None, "failed", f"{fail_status}; {ready_note}")]
    return [fig("W10", max(fail_ms, ready_ms), note=ready_note), fig("W10.fail", fail_ms, note=err)]


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    contender, workload, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    table = {
        "W1": lambda: w1(contender, params, "W1"),
        "T1": lambda: w1(contender, params, "T1"),
        "W2": lambda: w2(contender, params),
        "PEAK": lambda: peak(contender, params),
        "W3": lambda: w3(contender, params, "W3"),
        "T3": lambda: w3(contender, params, "T3"),
        "W4": lambda: w4(contender, params),
        "W5": lambda: w5(contender, params),
        "W6": lambda: w6(contender, params),
        "W7": lambda: w7(contender, params),
        "W8": lambda: w8(contender, params),
        "W9": lambda: w9(contender, params),
        "W10": lambda: w10(contender, params),
        "Q1": lambda: q1(contender, params),
        "P1": lambda: p1(contender, params),
    }
    if workload not in table:
        raise SystemExit(f"unknown workload {workload}")
    print(json.dumps({"figures": table[workload]()}))


if __name__ == "__main__":
    main()
