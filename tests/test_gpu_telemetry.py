"""GPU telemetry on a stand-in for pynvml (StandInNvml: the calls, constants and error class the module uses, with
scripted readings); the real NVML needs an NVIDIA driver. Integrals are tested on injected traces, never timed."""

from types import SimpleNamespace

import pytest

from llmbench.devices.gpu_telemetry import (
    AVERAGE,
    CLOCK_EVENT_REASONS,
    INSTANT,
    PowerSampler,
    cross_check,
    gpu_snapshot,
)


class StandInNvml:
    """A stand-in for the pynvml module in tests: scripted power in mW, per-field failures on demand."""

    NVML_FI_DEV_POWER_INSTANT = 186
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND = 3, 13

    class NVMLError(Exception):
        def __init__(self, value: int):
            super().__init__(value)
            self.value = value

        def __str__(self) -> str:
            return {3: "Not Supported", 13: "Function Not Found"}.get(self.value, f"NVML error {self.value}")

    def __init__(self, power_mw=100_000, instant=True, failing=()):
        self.power_mw, self.instant, self.failing = power_mw, instant, set(failing)
        self.calls: list[str] = []

    def _check(self, name: str):
        self.calls.append(name)
        if name in self.failing:
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetFieldValues(self, handle, field_ids):
        self._check("nvmlDeviceGetFieldValues")
        # Like NVML: the call succeeds and each field carries its own status (3: not supported).
        status = 0 if self.instant else self.NVML_ERROR_NOT_SUPPORTED
        return [SimpleNamespace(fieldId=f, nvmlReturn=status, valueType=1, value=SimpleNamespace(uiVal=self.power_mw))
                for f in field_ids]

    def nvmlDeviceGetPowerUsage(self, handle):
        self._check("nvmlDeviceGetPowerUsage")
        return self.power_mw

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._check("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=80 << 30, used=12 << 30, free=68 << 30)

    def nvmlDeviceGetClockInfo(self, handle, kind):
        self._check("nvmlDeviceGetClockInfo")
        return {1: 1980, 2: 2619}[kind]

    def nvmlDeviceGetTemperature(self, handle, sensor):
        self._check("nvmlDeviceGetTemperature")
        return 61

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        self._check("nvmlDeviceGetCurrentClocksEventReasons")
        return 0x4 | 0x20  # SwPowerCap | SwThermalSlowdown

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        self._check("nvmlDeviceGetCurrentClocksThrottleReasons")
        return 0x1

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        self._check("nvmlDeviceGetEnforcedPowerLimit")
        return 700_000


def test_constant_100_w_over_2_s_is_200_j():
    sampler = PowerSampler(StandInNvml(), ["gpu0"])
    jitter = [0.0, 0.004, -0.003, 0.002]
    for k in range(101):  # every 20 ms with a few ms of jitter, as a sampling thread would
        sampler.record(min(max(k * 0.02 + jitter[k % 4], 0.0), 2.0), [100.0])
    assert sampler.energy_j(0.0, 2.0) == pytest.approx(200.0, rel=1e-9)
    assert sampler.energy_j(0.5, 1.5) == pytest.approx(100.0, rel=1e-9)


def test_ramp_integrates_exactly_and_gpus_are_summed():
    sampler = PowerSampler(StandInNvml(), ["gpu0", "gpu1"])
    for k in range(101):
        t = k * 0.02
        sampler.record(t, [50.0 * t, 10.0])  # gpu0 ramps 0 → 100 W over 2 s; gpu1 holds 10 W
    assert sampler.energy_j(0.0, 2.0) == pytest.approx(100.0 + 20.0)
    # window edges between samples are interpolated: ∫ 50 t dt over [0.51, 1.49] + 10 W × 0.98 s
    assert sampler.energy_j(0.51, 1.49) == pytest.approx(25 * (1.49**2 - 0.51**2) + 9.8)


def test_window_outside_the_trace_is_none_not_extrapolated():
    sampler = PowerSampler(StandInNvml(), ["gpu0"])
    sampler.record(1.0, [100.0])
    sampler.record(2.0, [100.0])
    assert sampler.energy_j(0.5, 2.0) is None and sampler.energy_j(1.0, 2.5) is None


def test_sampler_thread_records_instant_power():
    nvml = StandInNvml(power_mw=100_000)
    sampler = PowerSampler(nvml, ["gpu0"], interval_s=0.01)
    assert sampler.source == INSTANT
    sampler.start()
    sampler.stop()  # start and stop sample once each: no sleeping, no timing in the assertions
    trace = sampler.trace()
    t0, t1 = trace["t_s"].min(), trace["t_s"].max()
    assert trace.height >= 2 and set(trace["power_w"]) == {100.0} and set(trace["source"]) == {INSTANT}
    assert sampler.energy_j(t0, t1) == pytest.approx(100.0 * (t1 - t0))
    assert "nvmlDeviceGetPowerUsage" not in nvml.calls


@pytest.mark.parametrize("how", ["field not supported", "call raises"])
def test_falls_back_to_power_usage_and_says_so(how):
    nvml = StandInNvml(power_mw=250_000, instant=how == "call raises",
                       failing={"nvmlDeviceGetFieldValues"} if how == "call raises" else ())
    sampler = PowerSampler(nvml, ["gpu0"])
    assert sampler.source == AVERAGE and "1 s trailing average" in sampler.source
    assert "POWER_INSTANT unavailable" in sampler.errors[0]
    sampler.sample()
    assert sampler.samples[-1][1] == (250.0,)


def test_interval_outside_the_allowed_range_is_refused():
    with pytest.raises(ValueError, match="0.01–0.05"):
        PowerSampler(StandInNvml(), ["gpu0"], interval_s=0.5)


def test_snapshot_reads_every_field():
    snap = gpu_snapshot(StandInNvml(), ["gpu0"])[0]
    assert snap == {"errors": {}, "memory_used_bytes": 12 << 30, "sm_clock_mhz": 1980, "mem_clock_mhz": 2619,
                    "temperature_c": 61, "clock_event_reasons": ["SwPowerCap", "SwThermalSlowdown"],
                    "power_limit_w": 700.0}


def test_snapshot_with_one_failing_field_gives_none_and_the_error():
    snap = gpu_snapshot(StandInNvml(failing={"nvmlDeviceGetTemperature"}), ["gpu0", "gpu1"])
    for gpu in (0, 1):
        assert snap[gpu]["temperature_c"] is None and snap[gpu]["sm_clock_mhz"] == 1980
        assert snap[gpu]["errors"] == {"temperature_c": "NVMLError: Not Supported"}


def test_snapshot_uses_the_older_throttle_call_where_the_driver_lacks_the_newer():
    nvml = StandInNvml()

    def missing(handle):
        raise nvml.NVMLError(nvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    nvml.nvmlDeviceGetCurrentClocksEventReasons = missing
    assert gpu_snapshot(nvml, ["gpu0"])[0]["clock_event_reasons"] == ["GpuIdle"]


def test_reason_names_match_the_real_pynvml_constants():
    import pynvml

    for bit, name in CLOCK_EVENT_REASONS.items():
        assert getattr(pynvml, f"nvmlClocksEventReason{name}") == bit
        assert getattr(pynvml, f"nvmlClocksThrottleReason{name}") == bit
    assert pynvml.NVML_FI_DEV_POWER_INSTANT == StandInNvml.NVML_FI_DEV_POWER_INSTANT


def test_cross_check_is_the_relative_difference():
    assert cross_check(200.0, 190.0) == pytest.approx(-0.05)
    assert cross_check(0.0, 1.0) is None and cross_check(None, 1.0) is None
