"""What else ran on the machine while a window was measured: the CPU time of every process outside the job's own
process tree (the job and its engine), from the kernel's counters (/proc/stat and each process's times, read
through psutil).

Two studies at once on one machine (two Snakemake runs, a build beside a bench job) make every engine slower while
each row still looks fine: 89 tok/s fell to 0.56–8.6 in one such case. The machine-wide locks of gpu_slots keep the
study's own jobs apart; this watch sees the rest, so that a row measured beside another load is flagged, with the
reason, and left out of the statistics instead of passing as a measurement of the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

# Other processes may use this share of one core on average over a window before it counts as contended: a
# desktop's or a VM's background stays far below it, a second study or a build uses one core or more.
CONTENDED_CORES = 0.5
# ... and at least this much CPU time in all [s]: the kernel counts CPU time in ticks (10 ms), so a window of a
# few ticks cannot tell 0.5 cores from rounding.
CONTENDED_MIN_S = 0.1


@dataclass(frozen=True)
class CpuSample:
    busy_s: float  # CPU time all processes of the machine spent since boot [s] (user, nice, system)
    own_s: dict[int, float]  # CPU time [s] of each live process of the job's tree (itself and its descendants)


def cpu_sample(pid: int | None = None) -> CpuSample:
    """The machine's busy CPU time and each live process's of the tree of ``pid`` (default: this process), now.

    Per process, not the kernel's sum of reaped children: a child reaped inside a window would bring its whole
    life's CPU time into it."""
    import psutil

    t = psutil.cpu_times()
    # Interrupt time is no process's, and much of it is the job's own loopback traffic to its engine: left out of
    # both sides. (The default study on a 2-core VM saw at most 0.22 cores of others' time per window with it.)
    busy = t.user + t.nice + t.system
    root = psutil.Process(pid or os.getpid())
    own = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            c = p.cpu_times()
        except psutil.Error:  # ended between the listing and the read
            continue
        own[p.pid] = c.user + c.system
    return CpuSample(busy, own)


@dataclass(frozen=True)
class Contention:
    """Other processes' CPU time over a window [s] and, where it is more than the window allows, why the window is
    left out (``contended``); ``other_cpu_s`` None where the kernel's counters could not be read (``reason`` then
    says so, ``contended`` stays False)."""

    other_cpu_s: float | None
    window_s: float
    contended: bool
    reason: str | None

    def columns(self, prefix: str = "") -> dict:
        return {f"{prefix}other_cpu_s": self.other_cpu_s, f"{prefix}contended": self.contended,
                f"{prefix}contention_reason": self.reason}


def judge(start: CpuSample, end: CpuSample, window_s: float, cores: int | None = None) -> Contention:
    """Contention over a window from its two samples: others' CPU time is the machine's busy time less the job's
    own (each process alive at the end, from its time at the start or from 0 where it started inside the window;
    one that ended inside it counts as others', the rare case that errs towards flagging), never below 0 (the two
    counters tick apart); contended above CONTENDED_CORES on average and CONTENDED_MIN_S in all."""
    own = sum(t - start.own_s.get(pid, 0.0) for pid, t in end.own_s.items())
    other = max(0.0, (end.busy_s - start.busy_s) - own)
    if window_s > 0 and other >= max(CONTENDED_CORES * window_s, CONTENDED_MIN_S):
        cores = cores or os.cpu_count() or 1
        return Contention(other, window_s, True, (
            f"measured under contention: other processes used {other:.2f} s of CPU over the {window_s:.2f} s "
            f"window ({other / window_s:.2f} of this machine's {cores} cores on average, more than "
            f"{CONTENDED_CORES:g}): another run or program shared the machine, so this generation is left out of "
            "the statistics; run the study alone to measure it"))
    return Contention(other, window_s, False, None)


class CpuWatch:
    """``begin(name)`` / ``end(name, window_s)`` around a window, as the energy meter's; ``sample`` reads the
    counters (a test may give its own)."""

    def __init__(self, sample: Callable[[], CpuSample] = cpu_sample, flag: bool = True):
        self._sample = sample
        self.flag = flag  # False: record others' CPU time, never flag (GPU jobs may share the host by design)
        self._open: dict[str, CpuSample | str] = {}

    def _read(self) -> CpuSample | str:
        try:
            return self._sample()
        except Exception as e:  # psutil absent or /proc unreadable (a sandbox): the window says it was not watched
            return f"not watched: the kernel's CPU counters could not be read ({type(e).__name__}: {e})"

    def begin(self, name: str) -> None:
        self._open[name] = self._read()

    def end(self, name: str, window_s: float) -> Contention:
        start, end = self._open.pop(name, "not watched: the window was never begun"), self._read()
        if isinstance(start, str) or isinstance(end, str):
            return Contention(None, window_s, False, start if isinstance(start, str) else end)
        found = judge(start, end, window_s)
        return found if self.flag else Contention(found.other_cpu_s, window_s, False, None)
