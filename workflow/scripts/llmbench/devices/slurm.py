"""Which GPUs SLURM gave a job. Under profiles/slurm a job's `gpu` resource becomes `sbatch --gpus=N`, and SLURM,
not the job's own file locks (gpu_slots), decides which devices it holds: other users' jobs on the node never
see those locks. SLURM names the devices in SLURM_JOB_GPUS (the node's GPU indices, batch step) or
SLURM_STEP_GPUS (inside an srun step, as the plugin runs jobs); CUDA_VISIBLE_DEVICES it sets to the same
devices as CUDA will number them.

Where the node fences devices with cgroups (ConstrainDevices=yes), NVML inside the job sees only the job's GPUs,
numbered from 0; otherwise NVML sees every GPU of the node and the job's are SLURM's indices. Both cases are
told apart by how many GPUs NVML sees.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def slurm_gpu_indices(environ: Mapping[str, str] | None = None) -> list[int] | None:
    """The node's GPU indices SLURM allocated to this job or step, or None outside a SLURM job with GPUs."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return None
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = env.get(var, "").strip()
        if value:
            try:
                return sorted(int(i) for i in value.split(","))
            except ValueError:
                raise ValueError(f"{var}={value!r} is not a comma-separated list of GPU indices; "
                                 "check the node's gres.conf (Name=gpu ... File=/dev/nvidia*)") from None
    return None


def slurm_nvml_ids(nvml_count: int, environ: Mapping[str, str] | None = None) -> list[int] | None:
    """The NVML indices of this job's SLURM GPUs (what gpu_slots should hold instead of choosing by lock), or
    None outside a SLURM job with GPUs."""
    allocated = slurm_gpu_indices(environ)
    if allocated is None:
        return None
    if nvml_count == len(allocated):  # fenced by cgroups: the job sees its own GPUs only, numbered from 0
        return list(range(nvml_count))
    beyond = [i for i in allocated if i >= nvml_count]
    if beyond:
        raise ValueError(f"SLURM allocated GPUs {allocated} but NVML sees only {nvml_count}; "
                         "the node's gres.conf names devices that are not there")
    return allocated
