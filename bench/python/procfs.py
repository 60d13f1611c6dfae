"""Reading /proc without psutil: children of a process, a process's memory."""

import os


def children(ppid):
    """Pids of the live processes whose parent is `ppid`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        state, parent = fields[0], int(fields[1])
        if parent == ppid and state != "Z":
            out.append(int(name))
    return sorted(out)


def rss_uss_kib(pid):
    """(RSS, USS) of `pid` in KiB from smaps_rollup; USS is its private pages."""
    rss = private = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key == "Rss":
                rss = int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty", "Private_Hugetlb"):
                private += int(rest.split()[0])
    return rss, private


def status_kib(field, pid="self"):
    """A `kB` field of /proc/<pid>/status, such as VmHWM or VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)
