"""A real single-node SLURM cluster on this machine, for tests: munged, slurmctld and slurmd (Debian's slurm-wlm
and munge), every file they write under one folder, started and always stopped by the test that owns them.

The node is called "localhost". It declares one GPU as a GRES whose device file is /dev/null: a stand-in, so that
a job asking for `--gpus=1` is scheduled (and shows the request in `scontrol`) on a machine without a GPU; no
CUDA device stands behind it. Accounting is off (no slurmdbd), so `sacct` knows nothing: job states come from
`scontrol`, which keeps finished jobs for MinJobAge seconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Where SLURM commands look for their configuration when SLURM_CONF is unset. The plugin's job step runs srun
# with every SLURM_* variable removed (SLURM_CONF too), so the cluster's configuration is copied here while it
# runs: the test refuses to start where a SLURM is configured already, and removes its copy on the way out.
SYSTEM_CONF = "/etc/slurm/slurm.conf"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")


def missing_binaries() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def slurm_conf(root: Path, sockets: Path, cpus: int, memory_mb: int, gpus: int) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return "\n".join([
        "ClusterName=llmbench-test",
        "SlurmctldHost=localhost",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={sockets}/munge.socket",
        "CredType=cred/munge",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        # No cgroups: a container or CI runner rarely delegates them.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        # Finished jobs stay in scontrol for an hour: the only record of them without accounting.
        "MinJobAge=3600",
        "ReturnToService=2",
        *(["GresTypes=gpu"] if gpus else []),
        f"NodeName=localhost CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN",
        "PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class SlurmCluster:
    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 30) -> str:
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs()}")
        return proc.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller knows, finished ones included, as scontrol's KEY=VALUE fields."""
        out = self.run("scontrol", "show", "job", "--oneliner")
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line.strip()]

    def logs(self) -> str:
        tails = []
        for log in sorted((self.root / "log").glob("*")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(tails)


def wait_until(check, timeout_s: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}\n{cluster.logs()}")
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if check():
                return
        time.sleep(0.5)
    raise TimeoutError(f"no {what} after {timeout_s}s\n{cluster.logs()}")


def _start(cluster: SlurmCluster, name: str, *args: str) -> None:
    out = (cluster.root / "log" / f"{name}.out").open("w")
    cluster.procs[name] = subprocess.Popen(args, env=cluster.env, stdout=out, stderr=subprocess.STDOUT)


def _stop(cluster: SlurmCluster) -> None:
    # Jobs first (their processes are ours too), then the daemons in reverse order of starting.
    with contextlib.suppress(Exception):
        cluster.run("scancel", "--full", "--user", "root", timeout=10)
    for proc in reversed(cluster.procs.values()):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(cluster.procs.values()):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def single_node_slurm(root: Path, gpus: int = 1, ready_timeout_s: float = 60) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on this machine (as root), wait until the node is idle, yield the
    cluster (its env has SLURM_CONF, for sbatch and friends), stop everything on the way out, even on failure."""
    if os.geteuid() != 0:
        raise PermissionError("a test SLURM cluster runs its daemons as root (slurmd starts jobs as their user)")
    if Path(SYSTEM_CONF).exists():
        raise FileExistsError(f"{SYSTEM_CONF} exists: commands inside the test's jobs would read it rather than "
                              "the test cluster's configuration; run the test where no SLURM is configured")
    for sub in ("state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged refuses a socket whose every parent folder others cannot traverse (pytest's tmp folders are 0700).
    sockets = Path(tempfile.mkdtemp(prefix="llmbench-munge-"))
    sockets.chmod(0o755)
    key = root / "munge-key" / "munge.key"
    key.parent.mkdir(mode=0o700, exist_ok=True)
    if not key.exists():  # a fresh key known only to this cluster
        key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    cpus = os.cpu_count() or 1
    memory_mb = int(available_memory_mb() * 0.8)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(root, sockets, cpus, memory_mb, gpus))
    # gres.conf beside slurm.conf: the stand-in GPU's device file is /dev/null.
    (root / "gres.conf").write_text("NodeName=localhost Name=gpu File=/dev/null\n" if gpus else "")
    cluster = SlurmCluster(root, {**os.environ, "SLURM_CONF": str(conf)})
    try:
        Path(SYSTEM_CONF).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(conf, SYSTEM_CONF)
        _start(cluster, "munged", "munged", "--foreground", f"--key-file={key}", f"--socket={sockets}/munge.socket",
               f"--pid-file={sockets}/munged.pid", f"--log-file={root}/log/munged.log",
               f"--seed-file={key.parent}/munged.seed")
        wait_until(lambda: (sockets / "munge.socket").exists(), 15, "munge socket", cluster)
        _start(cluster, "slurmctld", "slurmctld", "-D", "-f", str(conf))
        _start(cluster, "slurmd", "slurmd", "-D", "-N", "localhost", "-f", str(conf))
        wait_until(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%T").split() == ["idle"], ready_timeout_s,
                   "idle node in sinfo", cluster)
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(sockets, ignore_errors=True)
        Path(SYSTEM_CONF).unlink(missing_ok=True)
