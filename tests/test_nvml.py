"""NVML started one way for every GPU reader: a reason where it cannot start, shut down after use."""

import pytest

from llmbench.devices.nvml import NvmlUnavailable, nvml, open_nvml


class StandIn:
    """A stand-in pynvml that counts init and shutdown, or whose init fails as without a driver."""

    def __init__(self, fail: bool = False):
        self.fail, self.calls = fail, []

    def nvmlInit(self):
        if self.fail:
            raise OSError("NVML Shared Library Not Found")
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")


def test_nvml_that_cannot_start_says_why():
    with pytest.raises(NvmlUnavailable, match=r"^NVML could not start \(OSError: NVML Shared Library Not Found\)$"):
        open_nvml(StandIn(fail=True))


def test_nvml_is_shut_down_after_the_block_even_when_it_fails():
    lib = StandIn()
    with pytest.raises(ValueError), nvml(lib) as started:
        assert started is lib and lib.calls == ["init"]
        raise ValueError("a read failed")
    assert lib.calls == ["init", "shutdown"]
