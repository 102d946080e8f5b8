"""Provenance: the real probes on this machine (no NVIDIA driver here, so the GPU section must say why), GPUs through a
stand-in pynvml, and the guarantee that no secret from the config or the environment reaches the written JSON."""

import json
import re
import sys

import polars
import pytest
from test_meters import StandInNvmlWithEnergy

from conftest import REPO, nvml_works
from llmbench.study import provenance
from llmbench.study.provenance import (
    ENVIRONMENT,
    assert_no_secrets,
    collect,
    config_sha256,
    looks_secret,
    redact,
    write,
)

TOKEN = "hf_testsecret123456"


def run_collect(config=None, gpu_indices=(), repo=REPO, **kw):
    return collect(config=config or {"bench": {"max_tokens": 64}}, build_record=kw.get("build_record"),
                   model_records=kw.get("model_records", []), gpu_indices=list(gpu_indices),
                   started_at="2026-01-01T00:00:00Z", ended_at="2026-01-01T00:01:00Z", repo=repo)


@pytest.mark.skipif(nvml_works(), reason="this machine has a working NVML")
def test_real_collect_on_this_machine():
    build = {"commit": "a" * 40, "configure_args": ["-DGGML_CUDA=OFF"], "compiler": "/usr/bin/c++", "cuda_version": None}
    models = [{"source": "hf", "revision": "main", "sha256": "b" * 64}]
    r = run_collect(gpu_indices=[0], build_record=build, model_records=models)
    assert r["gpus"]["not_available"].startswith("NVML could not start (")
    assert r["cpu"]["model"] and r["cpu"]["logical_cores"] >= 1 and r["cpu"]["affinity_cores"] >= 1
    assert r["cpu"]["governor"] is not None or "governor" in r["cpu"]["errors"]  # a value or why there is none
    assert r["memory_bytes"] > 0 and r["os"]["kernel"] and r["python"]["executable"] == sys.executable
    assert r["packages"]["polars"] == polars.__version__ and set(r["packages"]) == set(provenance.packages())
    assert r["llama_cpp"] == build and r["models"] == models and r["ended_at"] == "2026-01-01T00:01:00Z"
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}", r["workflow"]["commit"]) and isinstance(r["workflow"]["dirty"], bool)
    json.dumps(r)  # JSON-able as it stands


def test_outside_a_git_checkout_the_workflow_is_null_with_a_reason(tmp_path):
    w = run_collect(repo=tmp_path)["workflow"]
    assert w["commit"] is None and w["dirty"] is None and w["describe"] is None
    assert "not a git repository" in w["errors"]["commit"].lower()


def test_a_failing_probe_gives_null_and_reason_not_an_exception(monkeypatch):
    def broken():
        raise OSError("no os-release here")

    monkeypatch.setattr(provenance.platform, "freedesktop_os_release", broken)
    monkeypatch.setattr(provenance, "gpu_state", lambda idx: 1 / 0)
    r = run_collect(gpu_indices=[0])
    assert r["os"]["distro"] is None and "no os-release here" in r["os"]["errors"]["distro"]
    assert r["gpus"] == {"not_available": "GPU probe failed (ZeroDivisionError: division by zero)"}


def test_no_secret_reaches_the_written_json(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    config = {"models": [{"url": f"https://hf.co/x?token={TOKEN}&rev=main"}], "api_key": "sk-live-0123456789",
              "server": {"ApiKey": "abc-0987654321", "max_tokens": 128}}
    r = run_collect(config)
    write(tmp_path / "provenance.json", r)
    text = (tmp_path / "provenance.json").read_text()
    assert TOKEN not in text and "sk-live-0123456789" not in text and "abc-0987654321" not in text
    assert "[redacted:HF_TOKEN]" in text and '"api_key": "[redacted]"' in text
    assert r["config"]["server"]["max_tokens"] == 128  # max_tokens is not a secret-looking name
    assert r["environment"] == {"OMP_NUM_THREADS": "2"}  # the allow-list only; HF_TOKEN is not on it
    assert json.loads(text) == r


def test_assert_no_secrets_names_the_variable_never_its_value(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(ValueError, match="HF_TOKEN") as e:
        assert_no_secrets(f"prefix {TOKEN} suffix")
    assert TOKEN not in str(e.value)
    with pytest.raises(ValueError, match="HF_TOKEN"):  # write() checks what it would write: nothing is written
        write(tmp_path / "p.json", {"note": TOKEN})
    assert not (tmp_path / "p.json").exists()
    assert_no_secrets("nothing secret here")


def test_secret_found_in_its_json_escaped_form():
    env = {"DB_PASSWORD": 'pa"ss\\word-1'}
    with pytest.raises(ValueError, match="DB_PASSWORD"):
        assert_no_secrets(json.dumps({"dsn": 'x pa"ss\\word-1'}), environ=env)


def test_redact_by_key_name_and_by_env_value():
    env = {"HF_TOKEN": TOKEN, "SHORT_SECRET": "abc", "HOME": "/home/someone-long"}
    obj = {"hf_token": "x", "password": None, "tokenizer": "t", "n_tokens": 3, "nested": [{"Authorization": "B x"},
           (f"a{TOKEN}b", "/home/someone-long")], "credentials": {"user": "u"}, "note": "abc"}
    assert redact(obj, environ=env) == {
        "hf_token": "[redacted]", "password": None, "tokenizer": "t", "n_tokens": 3,
        "nested": [{"Authorization": "[redacted]"}, ["a[redacted:HF_TOKEN]b", "/home/someone-long"]],
        "credentials": "[redacted]", "note": "abc"}  # short values and non-secret names stay


def test_redact_by_token_shape_where_neither_key_nor_env_names_it():
    # A token pasted into a note: no secret-looking key, no environment variable holds it; its shape gives it away.
    pasted = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
    r = redact({"costs": {"electricity_note": f"see {pasted}", "cloud": [{"source": "https://a:pw12345678@h/x"}]}},
               environ={})
    assert r == {"costs": {"electricity_note": "see [redacted:hf-token]",
                           "cloud": [{"source": "https://a:[redacted:url-password]@h/x"}]}}


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("OPENAI_API_KEY", True), ("apiKey", True), ("private_key", True), ("key", True),
    ("AWS_SECRET_ACCESS_KEY", True), ("db-passwd", True), ("auth", True), ("max_tokens", False),
    ("tokenizer", False), ("monkey", False), ("keyboard", False), ("author", False), ("cache_dir", False)])
def test_secret_looking_names(name, secret):
    assert looks_secret(name) is secret


def test_config_sha256_ignores_key_order():
    a = {"bench": {"max_tokens": 64, "repeats": 5}, "models": ["m1", "m2"]}
    b = {"models": ["m1", "m2"], "bench": {"repeats": 5, "max_tokens": 64}}
    assert config_sha256(a) == config_sha256(b) == run_collect(b)["config_sha256"]
    assert config_sha256(a) != config_sha256({**a, "models": ["m2", "m1"]})


class StandInNvmlWithProvenance(StandInNvmlWithEnergy):
    """The meters' stand-in pynvml plus what provenance reads: names, driver, PCIe, NVLink, topology.
    It lacks the max-PCIe calls on purpose, so those fields show the null-with-reason path."""

    NVML_FEATURE_ENABLED, NVML_NVLINK_MAX_LINKS = 1, 18
    NVML_TOPOLOGY_INTERNAL, NVML_TOPOLOGY_SINGLE, NVML_TOPOLOGY_SYSTEM = 0, 10, 50

    def __init__(self, nvlinks: int | None = 4):
        super().__init__(counter=True)
        self.nvlinks = nvlinks

    def nvmlDeviceGetHandleByIndex(self, i):
        if i == 7:
            raise self.NVMLError(3)
        return f"gpu{i}"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"  # bytes, as older nvidia-ml-py returns

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle):
        return 5

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle):
        return 16

    def nvmlDeviceGetNvLinkState(self, handle, link):
        if self.nvlinks is None or link >= self.nvlinks + 2:  # two links present but down
            raise self.NVMLError(3)
        return 1 if link < self.nvlinks else 0

    def nvmlDeviceGetTopologyCommonAncestor(self, h1, h2):
        return self.NVML_TOPOLOGY_SINGLE


def test_gpus_through_a_stand_in_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", StandInNvmlWithProvenance())
    gpus = run_collect(gpu_indices=[0, 1, 7])["gpus"]
    g = gpus["0"]
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["uuid"] == "GPU-standin-gpu0" and g["power_limit_w"] == 700.0
    assert g["driver_version"] == "550.54.15" and g["cuda_driver_version"] == "12.4"
    assert g["memory_total_bytes"] == 80 << 30 and (g["pcie_generation"], g["pcie_width"]) == (5, 16)
    assert g["nvlink_active_links"] == 4 and g["topology"] == {"1": "single"} and gpus["1"]["topology"] == {"0": "single"}
    assert g["pcie_max_generation"] is None and "AttributeError" in g["errors"]["pcie_max_generation"]
    assert gpus["7"] == {"not_available": "NVML cannot open GPU 7 (NVMLError: Not Supported)"}


def test_gpu_without_nvlink_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", StandInNvmlWithProvenance(nvlinks=None))
    g = run_collect(gpu_indices=[0])["gpus"]["0"]
    assert g["nvlink_active_links"] is None and "Not Supported" in g["errors"]["nvlink_active_links"]
    assert g["topology"] == {} and g["name"] == "NVIDIA H100 80GB HBM3"


def test_cpu_model_is_the_model_name_line_or_says_why_not(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon  \nflags\t\t: fpu\n")
    assert provenance.cpu_model(info) == "Intel Xeon"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # an ARM kernel names no model
    with pytest.raises(LookupError, match="no 'model name' line"):
        provenance.cpu_model(info)
