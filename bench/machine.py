"""What the numbers came from: the machine and the software versions."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "not installed"
    return out.splitlines()[0].strip() if out else "unknown"


def _field(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.partition(":" if ":" in line else "=")[2].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def machine_facts() -> dict[str, Any]:
    mem_kb = _field("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpu": _field("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else None,
        "os": _field("/etc/os-release", "PRETTY_NAME"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ovs": _first_line(["ovs-vswitchd", "--version"]),
        "ovn": _first_line(["ovn-nbctl", "--version"]),
    }
