"""What a set of processes listens on: the TCP sockets in LISTEN state, read from the kernel through psutil."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # the command line's first word (Ray's workers and agents rename themselves: ray::IDLE)
    ip: str
    port: int

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.ip)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # [::ffff:127.0.0.1], as an IPv6 socket bound to 127.0.0.1 shows it
        return ip.is_loopback

    def __str__(self) -> str:
        return f"{self.ip}:{self.port} ({self.process}, pid {self.pid})"


def with_descendants(pids) -> set[int]:
    """The processes and everything they started, still running."""
    import ray  # noqa: F401  Ray ships psutil (ray/thirdparty_files) and puts it on the path on import
    import psutil

    out = set()
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out |= {pid} | {c.pid for c in proc.children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return out


def listeners(pids) -> list[Listener]:
    """Every TCP socket in LISTEN state that one of `pids` holds."""
    import ray  # noqa: F401
    import psutil

    out = []
    for pid in sorted(set(pids)):
        try:
            proc = psutil.Process(pid)
            name = (proc.cmdline() or [proc.name()])[0].split()[0].rsplit("/", 1)[-1]
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        out += [Listener(pid, name, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out
