"""The server processes the benchmark starts: their memory and CPU time from /proc, and stopping them."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
from pathlib import Path
from typing import IO


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS), in MiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) / 1024
    return figures


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of the process and all its threads so far."""
    # The command name (field 2) may hold spaces; utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores of the machine have spent busy since boot: every process, the kernel's
    interrupt work included (/proc/stat's user, nice, system, irq and softirq; not idle, iowait or
    the hypervisor's steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User and system CPU time of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuClocks:
    """The machine's busy CPU and the ended children's CPU, from one moment on: wrapped around a
    load generator's run, the second is that generator's own CPU."""

    def __init__(self) -> None:
        self._machine = machine_busy_seconds()
        self._children = children_cpu_seconds()

    def spent(self) -> tuple[float, float]:
        """Seconds of CPU since the start: (the whole machine, ended children)."""
        return machine_busy_seconds() - self._machine, children_cpu_seconds() - self._children


class Server:
    """A server process the benchmark started (`process`), writing into its open log (`_log`)."""

    process: subprocess.Popen
    _log: IO[bytes]

    def memory_mib(self) -> dict[str, float]:
        return memory_mib(self.process.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def after_load(self) -> dict[str, float]:
        """The memory figures read at the end of the load: RSS now, and the peak so far."""
        figures = self.memory_mib()
        return {"after_load": figures["VmRSS"], "peak": figures["VmHWM"]}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
