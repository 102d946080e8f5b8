"""Which GPUs a job gets: Snakemake's `--resources gpu=N` only counts GPUs, it never names a device, so two
one-GPU jobs running side by side on a two-GPU machine would both land on GPU 0. Each job therefore takes its
devices here, by an exclusive flock on one file per GPU, and hands them to its engine as CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import sys
import time
from pathlib import Path

from llmbench.nvml import NvmlUnavailable, close_nvml, open_nvml
from llmbench.slurm import slurm_nvml_ids


def gpu_count() -> tuple[int, str | None]:
    """How many GPUs NVML sees; (0, why) where there is none to see."""
    try:
        pynvml = open_nvml()
    except NvmlUnavailable as e:
        return 0, str(e)
    try:
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as e:
        return 0, f"NVML cannot count the GPUs ({e})"
    finally:
        close_nvml(pynvml)
    return count, None if count else "NVML started but found no GPU"


def default_lock_dir() -> Path:
    """$LLMBENCH_GPU_LOCK_DIR or /tmp/llmbench-gpu-locks: one folder per machine, shared by all its users."""
    d = Path(os.environ.get("LLMBENCH_GPU_LOCK_DIR") or "/tmp/llmbench-gpu-locks")
    if not d.is_dir():
        d.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(PermissionError):  # mkdir's mode is cut by the umask; other users' jobs lock here too
            d.chmod(0o777)
    return d


def visible_devices_env(ids: list[int]) -> dict[str, str]:
    """The child's environment for these GPUs. The ids are NVML's, which count in PCI bus order; CUDA counts
    fastest first unless told otherwise, so without CUDA_DEVICE_ORDER a job could run on another GPU than
    the one it locked and the one its energy meter reads."""
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in sorted(ids))}


class GpuSlots:
    """`with GpuSlots(1, 2, lock_dir) as s:` runs its body holding s.ids, GPUs no other job of this machine holds.

    The locks are flock()s, which the kernel drops when the last descriptor of the lock file closes: on exit
    here, and just the same when the job dies, even by SIGKILL or the OOM killer, so a crashed job never leaves
    a GPU taken. Python opens files non-inheritable, so an engine started as a child does not keep the lock."""

    def __init__(self, n: int, total: int, lock_dir: Path | None = None, timeout_s: float = 3600,
                 poll_s: float = 0.2, *, exclusive: bool = False, job: str | None = None):
        if n > total:
            raise ValueError(f"the job asks for {n} GPUs but this machine has {total}; "
                             f"lower the tool's gpus in the config")
        # exclusive: every GPU, so no other GPU job runs beside this one and its numbers are the cleanest
        self.n = total if exclusive else n
        self.total, self.timeout_s, self.poll_s = total, timeout_s, poll_s
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.job = job or Path(sys.argv[0]).name or "python"
        self.ids: list[int] = []
        self._fds: list[int] = []

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(str(i) for i in self.ids)

    def _open(self, i: int) -> int:
        fd = os.open(self.lock_dir / f"gpu-{i}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(PermissionError):  # the umask again; a file another user made is theirs to open
            os.fchmod(fd, 0o666)
        return fd

    def _try_take(self) -> bool:
        """Take n free GPUs at once or none: holding some while waiting for more could deadlock two jobs."""
        for i in range(self.total):
            if len(self.ids) == self.n or len(self.ids) + self.total - i < self.n:
                break  # enough, or too few left to try: lock no more than this job can use
            fd = self._open(i)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)  # for humans (and the timeout message): who holds this GPU
            os.pwrite(fd, f"pid {os.getpid()} job {self.job}\n".encode(), 0)
            self._fds.append(fd)
            self.ids.append(i)
        if len(self.ids) == self.n:
            return True
        self._release()
        return False

    def _release(self) -> None:
        for fd in self._fds:
            os.ftruncate(fd, 0)  # a free GPU's file names nobody
            os.close(fd)  # closing the only descriptor drops the flock
        self._fds, self.ids = [], []

    def holders(self) -> dict[int, str]:
        """GPU id -> who holds it, as its lock file says, for the GPUs that are locked now."""
        held = {}
        for i in range(self.total):
            fd = self._open(i)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free (the file may still name a killed job)
            except BlockingIOError:
                held[i] = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
        return held

    def __enter__(self) -> GpuSlots:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        while not self._try_take():
            if time.monotonic() >= deadline:
                held = "; ".join(f"GPU {i}: {who}" for i, who in self.holders().items()) or "none (retry)"
                raise TimeoutError(f"{self.job}: no {self.n} of {self.total} GPUs free after {self.timeout_s}s; "
                                   f"held by {held}")
            # jitter, so that jobs which collided do not retry in lockstep and collide again
            time.sleep(self.poll_s * random.uniform(0.5, 1.5))
        self.ids.sort()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()


@contextlib.contextmanager
def hold_gpus(n: int, *, exclusive: bool = False, job: str | None = None):
    """A job's GPUs, by NVML index: locked for the job and made the only ones CUDA shows its engine (set before
    the engine starts or is imported, so both child processes and in-process engines see them). A CPU job, or a
    machine where NVML sees no GPU, gets [] and leaves the environment alone: its tool then says why it cannot run.
    """
    total = gpu_count()[0] if n or exclusive else 0
    if total == 0:
        yield []
        return
    with contextlib.ExitStack() as stack:
        # Under SLURM the scheduler chose the job's GPUs and fences them from other users' jobs, which never
        # see this machine's lock files: hold what SLURM gave, no lock.
        ids = slurm_nvml_ids(total)
        if ids is None:
            ids = stack.enter_context(GpuSlots(n, total, exclusive=exclusive, job=job)).ids
        elif len(ids) < n:
            raise RuntimeError(f"SLURM gave this job {len(ids)} GPU(s) ({ids}) but it needs {n}: "
                               "its rule's gpu resource must reach sbatch --gpus (use profiles/slurm)")
        env = visible_devices_env(ids)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield ids
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
