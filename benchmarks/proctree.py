"""Run a command and sample the memory of its whole process tree (Linux /proc), for the benchmarks.

Memory is the sum of PSS (proportional set size) over the command and all its descendants: with a
local Ray started in-process that is the driver, the GCS, the raylet (which maps the object store's
shared memory), every worker and actor. PSS splits a shared page among the processes mapping it,
so the object store's pages count once. Sampled every `interval` seconds; a peak shorter than that
can be missed.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(name))
    return kids


def tree(root: int) -> list[int]:
    """root and all its descendants."""
    kids, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples a process tree in a thread: peak of the tree's summed PSS and of the root's own PSS."""

    def __init__(self, root: int, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.peak_tree = self.peak_root = self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.root)
            per = {pid: pss_bytes(pid) for pid in pids}
            self.peak_tree = max(self.peak_tree, sum(per.values()))
            self.peak_root = max(self.peak_root, per.get(self.root, 0))
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list[str], env: dict | None = None, log_path: str | None = None, timeout: float | None = None) -> dict:
    """Run `cmd` to completion; returns rc, wall seconds, peak tree PSS, peak root PSS (bytes), peak process count."""
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeMemory(proc.pid) as mem:
            rc = proc.wait(timeout=timeout)
    finally:
        if log_path:
            out.close()
    return {"rc": rc, "wall": time.perf_counter() - t0, "peak_tree": mem.peak_tree, "peak_root": mem.peak_root,
            "peak_procs": mem.peak_procs}


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class ProcessPeaks:
    """Samples a process tree in a thread: each process's peak RSS (VmHWM), its peak private memory
    (RssAnon) and what it was (its title).

    Ray names its worker processes by what they run (`ray::RayTrainWorker...`, `ray::MapWorker(...)`),
    so the peaks can be reported per role. VmHWM is the kernel's own high-water mark: a process's peak
    is exact even between samples, as long as one sample sees the process alive. It counts every page
    the process has mapped, the object store's shared memory included: a Ray worker that reads many
    blocks over its life touches much of the store, whose size Ray bounds for the whole node. RssAnon
    is the process's own (anonymous, private) memory: what grows with what the process holds. It has
    no kernel high-water mark, so its peak is sampled (every `interval` seconds; a shorter spike can
    be missed).
    """

    def __init__(self, root: int, interval: float = 0.25):
        self.root, self.interval = root, interval
        self.peak: dict[int, int] = {}  # pid -> peak RSS bytes
        self.private: dict[int, int] = {}  # pid -> peak RssAnon bytes (sampled)
        self.titles: dict[int, str] = {}
        self.root_timeline: list[tuple[float, int]] = []  # (time.time(), RssAnon bytes) of the root, each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in tree(self.root):
                hwm = _status_kib(pid, "VmHWM") * 1024
                if hwm:
                    self.peak[pid] = max(self.peak.get(pid, 0), hwm)
                    self.private[pid] = max(self.private.get(pid, 0), _status_kib(pid, "RssAnon") * 1024)
                    title = _title(pid)
                    if title and (pid not in self.titles or title.startswith("ray::")):
                        self.titles[pid] = title
                    if pid == self.root:
                        self.root_timeline.append((time.time(), _status_kib(pid, "RssAnon") * 1024))
            self._stop.wait(self.interval)

    def __enter__(self) -> "ProcessPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def root_peak_between(self, start: float, end: float) -> int:
        """The root's peak private memory (RssAnon) sampled between two wall-clock times (time.time())."""
        return max((b for t, b in self.root_timeline if start <= t <= end), default=0)

    def by_role(self, roles: dict[str, str], private: bool = False) -> dict[str, list[int]]:
        """{role: [peak RSS bytes (`private`: peak RssAnon) of each process whose title contains the role's
        pattern]}; "driver" is the root."""
        peaks = self.private if private else self.peak
        out: dict[str, list[int]] = {"driver": [peaks.get(self.root, 0)]}
        for pid, title in self.titles.items():
            for role, pattern in roles.items():
                if pid != self.root and pattern in title:
                    out.setdefault(role, []).append(peaks[pid])
                    break
        return out
