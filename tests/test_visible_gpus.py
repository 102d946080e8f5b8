"""The GPUs the user chose (../shared/cases c305): CUDA_VISIBLE_DEVICES as an index or a UUID decides which
physical GPUs a job may hold; its engine (the environment it is given) and its energy meter use the same ones,
and provenance names them by UUID. NVML is the case's two-GPU workstation replayed behind the real pynvml
module (tests/nvml_replay.py); NVML numbers both GPUs whatever CUDA_VISIBLE_DEVICES says, as the real one does."""

import os
import re

import pytest
from nvml_replay import ReplayedGpu, replayed_nvml

from conftest import REPO
from llmbench.devices import gpu_slots
from llmbench.devices.gpu_slots import NvmlDevice, hold_gpus, user_visible
from llmbench.devices.meters import open_energy_meter
from llmbench.study import provenance

CASE = (REPO / "tests/data/cases/c305_cuda_visible_devices.txt").read_text()
# The workstation as `nvidia-smi -L` lists it in the case: index, name, UUID.
LISTED = re.findall(r"^GPU (\d+): (.+?) \(UUID: (GPU-[0-9a-f-]+)\)$", CASE, re.M)
VARIANTS = re.findall(r"^\$ export CUDA_VISIBLE_DEVICES=(\S+)$", CASE, re.M)


@pytest.fixture
def workstation(monkeypatch, tmp_path):
    gpus = [ReplayedGpu(name, uuid) for _, name, uuid in LISTED]
    replayed_nvml(monkeypatch, gpus)
    monkeypatch.setenv("LLMBENCH_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return gpus


def test_the_case_is_read_as_it_is_written():
    assert [i for i, _, _ in LISTED] == ["0", "1"] and VARIANTS == ["1", "GPU-66666666-7777-8888-9999-000000000000"]


@pytest.mark.parametrize("visible", VARIANTS)
def test_c305_the_job_engine_and_meter_use_the_gpu_the_user_left_visible(workstation, monkeypatch, tmp_path, visible):
    rtx3090, rtx3070 = workstation
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with hold_gpus(1, job="c305") as held:
        assert held == [1]  # the RTX 3070, never GPU 0
        # The engine is started with CUDA counting in PCI bus order, as NVML does: its device 1 is the 3070.
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        with open_energy_meter(list(held), powercap=tmp_path / "absent") as meter:
            meter.begin_window("g")
            r = meter.end_window("g")
        record = provenance.collect(config={}, build_record=None, model_records=[], gpu_indices=list(held),
                                    started_at="s", ended_at="e", repo=REPO, gpu_choice=held.record)
    assert r.source == f"nvml-energy:{rtx3070.uuid}" and r.energy_j == pytest.approx(30.0)
    assert rtx3090.calls == [c for c in rtx3090.calls if c in ("nvmlDeviceGetUUID", "nvmlDeviceGetName")]
    assert record["gpus"]["1"]["uuid"] == rtx3070.uuid and set(record["gpus"]) == {"1"}
    assert record["gpu_choice"]["held"] == [{"nvml_index": 1, "uuid": rtx3070.uuid, "name": rtx3070.name}]
    assert record["gpu_choice"]["user_cuda_visible_devices"] == visible
    assert f"CUDA_VISIBLE_DEVICES={visible!r} (the user's)" in record["gpu_choice"]["chosen_by"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == visible  # the user's value again after the job


def test_an_index_on_mixed_gpus_without_pci_bus_order_is_said(workstation, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with hold_gpus(1) as held:
        assert "nvidia-smi's order (PCI bus)" in held.record["chosen_by"]
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    with hold_gpus(1) as held:
        assert held.record["chosen_by"] == "CUDA_VISIBLE_DEVICES='1' (the user's)"


def test_a_two_gpu_job_on_one_visible_gpu_is_refused_naming_the_setting(workstation, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(ValueError, match=r"asks for 2 GPUs but CUDA_VISIBLE_DEVICES='1' .* leaves 1 of its 2"), \
            hold_gpus(2):
        pass


def test_unset_means_every_gpu_and_no_user_value():
    devices = [NvmlDevice(0, "GPU-a", "A"), NvmlDevice(1, "GPU-b", "A")]
    assert user_visible(devices, {}) == ([0, 1], "every GPU (CUDA_VISIBLE_DEVICES unset)")


@pytest.mark.parametrize("value, ids", [("", []), ("-1", []), ("1,-1,0", [1]), ("GPU-b", [1]), ("b", [1]),
                                        ("GPU-bb12, 0", [1, 0])])
def test_cuda_rules_for_the_value(value, ids):
    devices = [NvmlDevice(0, "GPU-a1", "A"), NvmlDevice(1, "GPU-bb12", "A")]
    assert user_visible(devices, {"CUDA_VISIBLE_DEVICES": value})[0] == ids


@pytest.mark.parametrize("value, words", [("3", "'3' names no GPU of this machine"),
                                          ("GPU-c", "'GPU-c' names no GPU"),
                                          ("GPU-", "matches more than one GPU"),
                                          ("0,GPU-a1", "names GPU 0 (GPU-a1) twice"),
                                          ("MIG-1234", "names a MIG instance")])
def test_a_value_that_names_no_single_gpu_is_refused_with_the_gpus_there_are(value, words):
    devices = [NvmlDevice(0, "GPU-a1", "A"), NvmlDevice(1, "GPU-bb12", "B")]
    with pytest.raises(ValueError) as e:
        user_visible(devices, {"CUDA_VISIBLE_DEVICES": value})
    assert words in str(e.value) and "0: A (GPU-a1), 1: B (GPU-bb12)" in str(e.value)


def test_two_jobs_on_the_visible_gpus_never_take_an_excluded_one(workstation, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-66666666")
    with hold_gpus(1, job="a") as a:
        assert a == [1]
        # Meanwhile a second job finds the only visible GPU taken: it waits, never falls back to GPU 0.
        with pytest.raises(TimeoutError, match=r"no 1 of 1 GPUs \(those visible: \[1\]\) free"), \
                gpu_slots.GpuSlots(1, 2, candidates=[1], timeout_s=0.2, poll_s=0.05):
            pass
