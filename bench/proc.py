"""What /proc says about a server process: its memory and the CPU time it has used."""

from __future__ import annotations

import os
from pathlib import Path


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
