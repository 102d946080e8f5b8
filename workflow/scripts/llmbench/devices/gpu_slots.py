"""Which GPUs a job gets: Snakemake's `--resources gpu=N` only counts GPUs, it never names a device, so two
one-GPU jobs running side by side on a two-GPU machine would both land on GPU 0. Each job therefore takes its
devices here, by an exclusive flock on one file per GPU, and hands them to its engine as CUDA_VISIBLE_DEVICES.

The devices it may take are those the user left visible: CUDA_VISIBLE_DEVICES as indices or UUIDs (or SLURM's
allocation) is read before it is replaced, and mapped to NVML's devices by UUID, since NVML numbers every GPU of
the machine whatever CUDA_VISIBLE_DEVICES says (pynvml#28, codecarbon#567). The engine and the energy meter then
use the same physical GPUs, and the job's provenance names them by UUID.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llmbench.devices.nvml import NvmlUnavailable, close_nvml, open_nvml
from llmbench.devices.slurm import slurm_nvml_ids


@dataclass(frozen=True)
class NvmlDevice:
    index: int  # NVML's, in PCI bus order: nvidia-smi's numbering
    uuid: str  # GPU-xxxxxxxx-…, as nvidia-smi -L and CUDA_VISIBLE_DEVICES write it
    name: str


def nvml_devices() -> tuple[list[NvmlDevice], str | None]:
    """Every GPU NVML sees, by index; ([], why) where there is none to see."""
    try:
        pynvml = open_nvml()
    except NvmlUnavailable as e:
        return [], str(e)
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid, name = pynvml.nvmlDeviceGetUUID(handle), pynvml.nvmlDeviceGetName(handle)
            devices.append(NvmlDevice(i, _text(uuid), _text(name)))
    except pynvml.NVMLError as e:
        return [], f"NVML cannot list the GPUs ({e})"
    finally:
        close_nvml(pynvml)
    return devices, None if devices else "NVML started but found no GPU"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def gpu_count() -> tuple[int, str | None]:
    """How many GPUs NVML sees; (0, why) where there is none to see."""
    devices, why = nvml_devices()
    return len(devices), why


def _listing(devices: list[NvmlDevice]) -> str:
    return ", ".join(f"{d.index}: {d.name} ({d.uuid})" for d in devices)


def user_visible(devices: list[NvmlDevice], environ: Mapping[str, str] | None = None) -> tuple[list[int], str]:
    """The NVML indices of the GPUs the user left visible to CUDA, and how that was decided (for provenance).

    CUDA_VISIBLE_DEVICES unset: every GPU. Otherwise its comma-separated entries, each an index or a GPU UUID (or
    a unique prefix of one, as CUDA accepts), matched to ``devices`` by UUID; an empty value leaves none (CUDA's
    rule). An index is read as nvidia-smi's (PCI bus order): CUDA counts the same way under
    CUDA_DEVICE_ORDER=PCI_BUS_ID, and fastest first otherwise, which on GPUs of different models may be another
    order; that case is said in the record. Raises ValueError naming an entry that is no GPU of this machine, a MIG
    instance (NVML's energy counter is per physical GPU) or a GPU named twice, with the GPUs there are.
    """
    env = os.environ if environ is None else environ
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [d.index for d in devices], "every GPU (CUDA_VISIBLE_DEVICES unset)"
    ids: list[int] = []
    indices_given = False
    for entry in (e.strip() for e in value.split(",") if e.strip()):
        if entry.lstrip("-").isdigit():
            i = int(entry)
            if i < 0:
                break  # CUDA stops at the first negative index: CUDA_VISIBLE_DEVICES=-1 hides every GPU
            match = [d for d in devices if d.index == i]
            indices_given = True
        elif entry.startswith("MIG-"):
            raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r} names a MIG instance ({entry}): NVML measures energy "
                             "per physical GPU, so a MIG slice's energy cannot be told apart; give the whole GPU's "
                             f"index or UUID (nvidia-smi -L). GPUs here: {_listing(devices)}")
        else:
            match = [d for d in devices if d.uuid.startswith(entry if entry.startswith("GPU-") else f"GPU-{entry}")]
        if len(match) != 1:
            what = "names no GPU of this machine" if not match else "matches more than one GPU"
            raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r}: {entry!r} {what}; name the GPUs the study may use "
                             f"by nvidia-smi index or UUID (nvidia-smi -L). GPUs here: {_listing(devices)}")
        if match[0].index in ids:
            raise ValueError(f"CUDA_VISIBLE_DEVICES={value!r} names GPU {match[0].index} ({match[0].uuid}) twice; "
                             f"name each GPU once. GPUs here: {_listing(devices)}")
        ids.append(match[0].index)
    how = f"CUDA_VISIBLE_DEVICES={value!r} (the user's)"
    names = {d.name for d in devices}
    if indices_given and len(names) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        how += (", its indices read in nvidia-smi's order (PCI bus): CUDA_DEVICE_ORDER is not PCI_BUS_ID and the "
                "GPUs differ, so other CUDA programs may count them fastest first; name them by UUID to be sure")
    return ids, how


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
                 poll_s: float = 0.2, *, exclusive: bool = False, job: str | None = None,
                 candidates: list[int] | None = None, chosen_by: str | None = None):
        # candidates: the GPUs the user left visible (user_visible), by NVML index; every GPU by default
        self.candidates = sorted(candidates) if candidates is not None else list(range(total))
        if n > len(self.candidates):
            where = (f"{chosen_by} leaves {len(self.candidates)} of its {total} visible" if chosen_by else
                     f"this machine has {total}")
            raise ValueError(f"the job asks for {n} GPUs but {where}; lower the tool's gpus in the config"
                             + (" or make more GPUs visible" if chosen_by else ""))
        # exclusive: every GPU it may use, so no other GPU job runs beside this one and its numbers are the cleanest
        self.n = len(self.candidates) if exclusive else n
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
        for k, i in enumerate(self.candidates):
            if len(self.ids) == self.n or len(self.ids) + len(self.candidates) - k < self.n:
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
                among = "" if self.candidates == list(range(self.total)) else f" (those visible: {self.candidates})"
                raise TimeoutError(f"{self.job}: no {self.n} of {len(self.candidates)} GPUs{among} free after "
                                   f"{self.timeout_s}s; "
                                   f"held by {held}")
            # jitter, so that jobs which collided do not retry in lockstep and collide again
            time.sleep(self.poll_s * random.uniform(0.5, 1.5))
        self.ids.sort()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()


# Where a job replaced CUDA_VISIBLE_DEVICES, the user's own value (JSON: null where it was unset), so that what
# the job runs (a child, another hold in the same process) still chooses among the user's GPUs, not the job's.
USER_VALUE = "LLMBENCH_USER_CUDA_VISIBLE_DEVICES"


def user_environment() -> dict[str, str]:
    """os.environ with CUDA_VISIBLE_DEVICES as the user set it, before any job of this study replaced it."""
    env = dict(os.environ)
    if USER_VALUE in env:
        original = json.loads(env.pop(USER_VALUE))
        env.pop("CUDA_VISIBLE_DEVICES", None)
        if original is not None:
            env["CUDA_VISIBLE_DEVICES"] = original
    return env


class MachineLock:
    """``with MachineLock(exclusive, …):`` runs its body holding the machine's measurement lock: exclusive for a
    job that measures on the CPU, shared for a GPU job (GPU jobs on distinct GPUs may run side by side; none runs
    beside a CPU measurement). One flock file in the lock folder, so a second Snakemake run, from this checkout or
    another, waits for it; after ``timeout_s`` the job is refused, naming who holds the lock. The kernel drops the
    lock when the job ends, however it ends."""

    NAME = "measure.lock"

    def __init__(self, exclusive: bool, lock_dir: Path | None = None, timeout_s: float = 3600, poll_s: float = 0.2,
                 job: str | None = None):
        self.exclusive, self.timeout_s, self.poll_s = exclusive, timeout_s, poll_s
        self.lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
        self.job = job or Path(sys.argv[0]).name or "python"
        self._fd: int | None = None

    def holders(self) -> str:
        try:
            text = (self.lock_dir / self.NAME).read_text().strip()
        except OSError:
            text = ""
        return text or "unknown"

    def __enter__(self) -> MachineLock:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_dir / self.NAME, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o666)
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(
                        f"{self.job}: another measurement held this machine for {self.timeout_s:.0f} s (held by "
                        f"{self.holders()}): two studies measured at once would share the CPU and both be wrong; "
                        "wait for the other run to end, or stop it, then run this one again") from None
                time.sleep(self.poll_s * random.uniform(0.5, 1.5))
        if self.exclusive:  # for humans and the message above: who measures now
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} job {self.job}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            if self.exclusive:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class HeldGpus(list):
    """The NVML indices a job holds (a list, as before), with ``record``: which physical GPUs they are (by
    UUID) and how they were chosen, for the job's provenance."""

    def __init__(self, ids: list[int], record: dict | None = None):
        super().__init__(ids)
        self.record = record or {}


@contextlib.contextmanager
def hold_gpus(n: int, *, exclusive: bool = False, job: str | None = None):
    """A job's GPUs, by NVML index (HeldGpus), and the machine's measurement lock (MachineLock: exclusive for a job
    on the CPU, shared for a GPU job): GPUs among those the user left visible (user_visible), locked for the job
    and made the only ones CUDA shows its engine (set before the engine starts or is imported, so both child
    processes and in-process engines see them). A CPU job, or a machine where NVML sees no GPU, gets [] and leaves
    the environment alone: its tool then says why it cannot run.
    """
    devices, _ = nvml_devices() if n or exclusive else ([], None)
    with contextlib.ExitStack() as stack:
        # The machine's measurement lock first, GPUs second, in every job: the same order everywhere cannot
        # deadlock. A job that runs on no GPU measures the CPU: it holds the machine alone.
        on_gpus = bool(devices) and n > 0
        stack.enter_context(MachineLock(exclusive=not on_gpus, job=job))
        if not devices:
            yield HeldGpus([])
            return
        # Under SLURM the scheduler chose the job's GPUs and fences them from other users' jobs, which never
        # see this machine's lock files: hold what SLURM gave, no lock.
        user_env = user_environment()  # CUDA_VISIBLE_DEVICES as the user set it, read once
        ids = slurm_nvml_ids(len(devices))
        if ids is not None:
            chosen_by = "SLURM's allocation (SLURM_STEP_GPUS / SLURM_JOB_GPUS)"
            if len(ids) < n:
                raise RuntimeError(f"SLURM gave this job {len(ids)} GPU(s) ({ids}) but it needs {n}: "
                                   "its rule's gpu resource must reach sbatch --gpus (use profiles/slurm)")
        else:
            visible, chosen_by = user_visible(devices, user_env)
            ids = stack.enter_context(GpuSlots(n, len(devices), exclusive=exclusive, job=job, candidates=visible,
                                               chosen_by=chosen_by)).ids
        by_index = {d.index: d for d in devices}
        user_value = user_env.get("CUDA_VISIBLE_DEVICES")
        record = {"chosen_by": chosen_by, "user_cuda_visible_devices": user_value,
                  "held": [{"nvml_index": i, "uuid": by_index[i].uuid, "name": by_index[i].name} for i in ids]}
        env = {**visible_devices_env(ids), USER_VALUE: json.dumps(user_value)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield HeldGpus(ids, record)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
