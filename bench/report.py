"""What every benchmark prints besides its table: the machine load it ran under (absolute
timings on a shared machine are noisy; the ratios are the point) and one verdict line per target,
in one format a test can find: `verdict <target>: MET|MISSED (<measured>)`."""

from __future__ import annotations

import os


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def print_load(when: str = "") -> None:
    print(f"machine load average (1, 5, 15 min){' ' + when if when else ''}: {load_average()} "
          f"on {os.cpu_count()} cores")


def verdict(target: str, met: bool, measured: str) -> str:
    return f"verdict {target}: {'MET' if met else 'MISSED'} ({measured})"
