"""How a bench job's numbers were measured, as one JSON-able record written beside its results.

Every probe is fenced: what cannot be read is null with the reason beside it (an "errors" entry), never a guess and
never an exception out of collect(). Secrets never reach the record: values under secret-looking keys and the values
of secret-looking environment variables are redacted, and write() refuses text that still holds one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from llmbench.core.files import cached_sha256, write_text_atomically
from llmbench.core.secrets import redact_text
from llmbench.devices.nvml import NvmlUnavailable, close_nvml, open_nvml
from llmbench.modelfiles.models import CorruptModelError

# The study's own packages; each tool's come from its registry record (llmbench.engines.registry).
CORE_PACKAGES = ("snakemake", "polars", "altair", "vl-convert-python", "nvidia-ml-py", "huggingface-hub", "gguf")
# Only variables that change what is measured; the rest of the environment is nobody's business and may hold secrets.
ENVIRONMENT = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "OLLAMA_HOST", "LLAMA_CPP_LIB_PATH", "HF_HUB_OFFLINE",
               "OPENBLAS_CORETYPE")
GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
# Matched against whole name parts, so max_tokens or tokenizer stay readable while hf_token or OPENAI_API_KEY do not.
_SECRET_PART = re.compile(r"token|secrets?|passwords?|passwd|apikey|auth|authorization|credentials?", re.IGNORECASE)
_MIN_SECRET_LEN = 8  # shorter values ("1", "true") would redact half the record by accident
# nvmlGpuTopologyLevel_t by name (NVML_TOPOLOGY_CPU is an alias of NODE).
_TOPOLOGY = ("INTERNAL", "SINGLE", "MULTIPLE", "HOSTBRIDGE", "NODE", "SYSTEM")


def looks_secret(name: str) -> bool:
    """Whether a key or variable name names a secret: a part is token/secret/password/auth/..., or it ends in key."""
    parts = [p.lower() for p in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)]  # snake, kebab and camelCase
    joined = "_".join(parts)
    return (any(_SECRET_PART.fullmatch(p) for p in parts) or "api_key" in joined
            or (bool(parts) and parts[-1] == "key"))


def _secret_values(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    found = [(n, v) for n, v in environ.items() if looks_secret(n) and len(v) >= _MIN_SECRET_LEN]
    return sorted(found, key=lambda nv: -len(nv[1]))  # longest first, so a value inside another is not half-redacted


def redact(obj: Any, environ: Mapping[str, str] = os.environ) -> Any:
    """obj with secret-keyed values replaced by "[redacted]", secret env values inside strings by "[redacted:NAME]"
    and credentials of a known shape (a token pasted into a note or a URL: llmbench.core.secrets) by "[redacted:KIND]"."""
    secrets = _secret_values(environ)

    def scrub(s: str) -> str:
        for name, value in secrets:
            s = s.replace(value, f"[redacted:{name}]")
        return redact_text(s)

    def walk(o: Any) -> Any:
        if isinstance(o, Mapping):
            # None stays None: "no secret was configured" is itself worth knowing and reveals nothing.
            return {scrub(str(k)): "[redacted]" if looks_secret(str(k)) and v is not None else walk(v)
                    for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [walk(v) for v in o]
        return scrub(o) if isinstance(o, str) else o

    return walk(obj)


def assert_no_secrets(text: str, environ: Mapping[str, str] = os.environ) -> None:
    """Raise ValueError naming (never quoting) any secret env variable whose value occurs in text, raw or JSON-escaped."""
    for name, value in _secret_values(environ):
        if value in text or json.dumps(value)[1:-1] in text:
            raise ValueError(f"the value of the environment variable {name} would be written; refusing")


def write(path: str | Path, record: dict) -> None:
    text = json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    assert_no_secrets(text)
    write_text_atomically(path, text)  # whole or not at all: a full disk never leaves half a record


def _probe(fields: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each field read, or None with its reason under "errors"."""
    out: dict[str, Any] = {"errors": {}}
    for name, read in fields.items():
        try:
            out[name] = read()
        except Exception as e:  # any probe may fail on some machine; the record says why instead
            out[name], out["errors"][name] = None, f"{type(e).__name__}: {e}"
    return out


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip() or f"git {args[0]} exited {proc.returncode}")
    return proc.stdout.strip()


def workflow_state(repo: Path) -> dict[str, Any]:
    return _probe({
        "commit": lambda: _git(repo, "rev-parse", "HEAD"),
        # Untracked files count: a new, uncommitted script changes what the workflow runs.
        "dirty": lambda: bool(_git(repo, "status", "--porcelain")),
        "describe": lambda: _git(repo, "describe", "--always", "--dirty", "--tags"),
    })


def _proc_field(path: str, field: str) -> str:
    """The value of a "field : value" line of /proc/cpuinfo or /proc/meminfo (its first occurrence)."""
    for line in Path(path).read_text().splitlines():
        if line.split(":", 1)[0].strip() == field:
            return line.split(":", 1)[1].strip()
    raise LookupError(f"no '{field}' line in {path}")


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name as the kernel gives it (x86: "model name"); OSError where the file cannot be read,
    LookupError where it has no such line (most ARM kernels)."""
    return _proc_field(str(cpuinfo), "model name")


def _governor() -> str:
    if not GOVERNOR.exists():
        raise FileNotFoundError(f"{GOVERNOR} absent (no cpufreq driver; common in VMs)")
    return GOVERNOR.read_text().strip()


def _meminfo_total() -> int:
    return int(_proc_field("/proc/meminfo", "MemTotal").split()[0]) * 1024  # reported in kB


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)  # older pynvml returns bytes


def _nvlink_active(nvml: Any, handle: Any) -> int:
    """Active NVLink links; a link index past the GPU's last raises, which ends the count."""
    active = 0
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            active += nvml.nvmlDeviceGetNvLinkState(handle, link) == nvml.NVML_FEATURE_ENABLED
        except nvml.NVMLError:
            if link == 0:
                raise  # no link at all: the reason (e.g. Not Supported on PCIe-only GPUs) goes into the record
            break
    return active


def gpu_state(gpu_indices: list[int]) -> dict[str, Any]:
    """Per job GPU (keyed by index) what it is and how it is connected; {"not_available": reason} without NVML."""
    if not gpu_indices:
        return {}
    try:
        pynvml = open_nvml()
    except NvmlUnavailable as e:
        return {"not_available": str(e)}
    levels = {getattr(pynvml, f"NVML_TOPOLOGY_{n}", None): n.lower() for n in _TOPOLOGY}
    out: dict[str, Any] = {}
    handles: dict[int, Any] = {}
    for i in gpu_indices:
        try:
            handles[i] = pynvml.nvmlDeviceGetHandleByIndex(i)
        except Exception as e:
            out[str(i)] = {"not_available": f"NVML cannot open GPU {i} ({type(e).__name__}: {e})"}
    for i, h in handles.items():
        out[str(i)] = _probe({
            "name": lambda h=h: _text(pynvml.nvmlDeviceGetName(h)),
            "uuid": lambda h=h: _text(pynvml.nvmlDeviceGetUUID(h)),
            "driver_version": lambda: _text(pynvml.nvmlSystemGetDriverVersion()),
            "cuda_driver_version": lambda: "{}.{}".format(*divmod(pynvml.nvmlSystemGetCudaDriverVersion() // 10, 100)),
            "power_limit_w": lambda h=h: pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
            "memory_total_bytes": lambda h=h: pynvml.nvmlDeviceGetMemoryInfo(h).total,
            # The current link trains down when idle, so the maximum is recorded beside it.
            "pcie_generation": lambda h=h: pynvml.nvmlDeviceGetCurrPcieLinkGeneration(h),
            "pcie_width": lambda h=h: pynvml.nvmlDeviceGetCurrPcieLinkWidth(h),
            "pcie_max_generation": lambda h=h: pynvml.nvmlDeviceGetMaxPcieLinkGeneration(h),
            "pcie_max_width": lambda h=h: pynvml.nvmlDeviceGetMaxPcieLinkWidth(h),
            "nvlink_active_links": lambda h=h: _nvlink_active(pynvml, h),
            "topology": lambda i=i, h=h: {
                str(j): levels.get(pynvml.nvmlDeviceGetTopologyCommonAncestor(h, other), "unknown")
                for j, other in handles.items() if j != i},
        })
    close_nvml(pynvml)
    return out


def _fenced_gpus(gpu_indices: list[int]) -> dict[str, Any]:
    try:
        return gpu_state(gpu_indices)
    except Exception as e:  # an NVML failure outside the per-field probes still must not sink the job
        return {"not_available": f"GPU probe failed ({type(e).__name__}: {e})"}


def packages() -> tuple[str, ...]:
    """The pip distributions a job's provenance records: the study's own, then every registered tool's."""
    from llmbench.engines.registry import TOOLS

    return tuple(dict.fromkeys([*CORE_PACKAGES, *(p for t in TOOLS.values() for p in t.packages)]))


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except Exception:  # PackageNotFoundError: not installed in this job's environment
        return None


def config_sha256(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def collect(*, config: dict, build_record: dict | None, model_records: list[dict], gpu_indices: list[int],
            started_at: str, ended_at: str, repo: Path, gpu_choice: dict | None = None) -> dict:
    """The job's provenance, redacted; build_record is None for engines that use no llama.cpp build of ours;
    ``gpu_choice`` says which physical GPUs the job held (UUIDs) and how they were chosen (gpu_slots.hold_gpus)."""
    safe_config = redact(config)  # hashed as stored, so anyone can recompute config_sha256 from the record itself
    top = _probe({"memory_bytes": _meminfo_total})
    record = {
        "config_sha256": config_sha256(safe_config),
        "config": safe_config,
        "workflow": workflow_state(Path(repo)),
        "llama_cpp": build_record,
        "gpus": _fenced_gpus(list(gpu_indices)),
        "gpu_choice": gpu_choice or {},
        "cpu": _probe({
            "model": cpu_model,
            "logical_cores": os.cpu_count,
            "affinity_cores": lambda: len(os.sched_getaffinity(0)),
            "governor": _governor,
        }),
        "memory_bytes": top["memory_bytes"],
        "os": _probe({
            "platform": platform.platform,
            "kernel": platform.release,
            "distro": lambda: platform.freedesktop_os_release()["PRETTY_NAME"],
        }),
        "python": {"version": sys.version, "executable": sys.executable},
        "packages": {name: _package_version(name) for name in packages()},
        "models": model_records,
        "started_at": started_at,
        "ended_at": ended_at,
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
        "errors": top["errors"],
    }
    return redact(record)


class ModelHashMismatch(CorruptModelError):
    """A model file whose sha256 is not the one its record gave when it was fetched or derived: it changed since
    (damaged on disk, overwritten), so the job measures nothing; a CorruptModelError, so that every job's failed row
    says so (failure kind corrupt_model_file), with both hashes, the path and the fix."""


def model_hashes(model_file: str | Path, record: dict | None) -> dict:
    """What the job's model files hold now, for its provenance: each file's sha256 as hashed (files.cached_sha256:
    read, or kept from an earlier read of the same unchanged file) beside the one its record gives.

    A split GGUF is every shard its record lists (``shards``: each ``file`` beside the first, with its ``sha256``),
    otherwise the file alone against the record's ``sha256``. Returns {"files": [{"file", "sha256",
    "record_sha256", "hashed": "read" | "cached"}], "matches_record": bool, or None where the record gives no sha256
    to compare with}. OSError if a file cannot be read."""
    model_file = Path(model_file)
    record = record or {}
    shards = record.get("shards") or []
    listed = ([(model_file.parent / s["file"], s.get("sha256")) for s in shards] if shards
              else [(model_file, record.get("sha256"))])
    files = []
    for path, expected in listed:
        digest, cached = cached_sha256(path)
        files.append({"file": str(path), "sha256": digest, "record_sha256": expected,
                      "hashed": "cached" if cached else "read"})
    compared = [f for f in files if f["record_sha256"]]
    return {"files": files,
            "matches_record": all(f["sha256"] == f["record_sha256"] for f in compared) if compared else None}


def check_model_hashes(model_file: str | Path, record: dict | None) -> dict:
    """model_hashes, after proving every file is the one its record names; ModelHashMismatch naming the file, both
    hashes and the fix where one is not (a file that changed after its record was written)."""
    seen = model_hashes(model_file, record)
    for f in seen["files"]:
        if f["record_sha256"] and f["sha256"] != f["record_sha256"]:
            raise ModelHashMismatch(
                f"{f['file']} has sha256 {f['sha256']}, but its record ({Path(model_file).with_suffix('.json')}) "
                f"says {f['record_sha256']}, the sha256 it had when it was fetched or derived: the file changed "
                "since (damaged on disk or overwritten), so it is not the file the study names and nothing was "
                f"measured. It is damaged: delete it (rm {f['file']}) and run the workflow again, which fetches "
                "or derives it anew and reruns the jobs that use it.")
    return seen
