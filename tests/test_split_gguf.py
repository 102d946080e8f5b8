"""Quants published as split GGUFs (llama.cpp's NAME-0000K-of-0000N.gguf shards): config, plan, fetch, file check,
and the tools that cannot load them. No network: the hub fetch reads a pre-filled cache, as in test_fetch.py."""

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import fetch_hf_model
import gguf
import numpy as np
import pytest
import yaml

from conftest import REPO, write_tiny_gguf
from llmbench.engines.base import ToolUnavailable
from llmbench.modelfiles.models import CorruptModelError, MissingShardsError, check_gguf, split_count
from llmbench.study import plan as study
from llmbench.study.configcheck import ConfigError, validate_config

CASE = REPO / "tests/data/cases/c10_config_split_q8.yaml"
SHARD_1 = "Meta-Llama-3.1-70B-Instruct-Q8_0/Meta-Llama-3.1-70B-Instruct-Q8_0-00001-of-00002.gguf"
SHARD_2 = "Meta-Llama-3.1-70B-Instruct-Q8_0/Meta-Llama-3.1-70B-Instruct-Q8_0-00002-of-00002.gguf"


def case_config() -> dict:
    return yaml.safe_load(CASE.read_text())


def write_split_gguf(folder: Path, prefix: str, count: int, n: int = 64) -> list[Path]:
    """A real split GGUF as llama-gguf-split writes one: each shard its own GGUF with split.no (from 0),
    split.count and split.tensors.count in its header, one tensor each, the model's metadata in the first."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = folder / f"{prefix}-{k + 1:05d}-of-{count:05d}.gguf"

        def split_keys(w, k=k):
            w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, k)
            w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, count)
            w.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, count)

        tensor = np.arange(n * 4, dtype=np.float32).reshape(n, 4) + k
        paths.append(write_tiny_gguf(path, tensors={f"blk.{k}.attn_q.weight": tensor},
                                     block_count=count if k == 0 else None, metadata=split_keys))
    return paths


# --- config ---------------------------------------------------------------------------------------------------


def test_split_case_config_validates_and_names_its_first_shard_for_every_tool(schema):
    cfg = validate_config(case_config(), schema)
    assert cfg["models"]["llama31-70b"]["source"]["files"]["Q8_0"]["shard_sha256"] is None  # the default
    assert study.shard_count(cfg, "llama31-70b", "Q8_0") == 2
    assert study.shard_files(cfg, "llama31-70b", "Q8_0") == ["Q8_0-00001-of-00002.gguf", "Q8_0-00002-of-00002.gguf"]
    assert study.model_path(cfg, "res", "llama31-70b", "Q8_0") == "res/models/llama31-70b/Q8_0-00001-of-00002.gguf"
    assert study.model_record_path(cfg, "res", "llama31-70b", "Q8_0") == "res/models/llama31-70b/Q8_0-00001-of-00002.json"
    assert study.hf_split_models(cfg) == ["llama31-70b"]
    second = study.hf_shard_source(cfg, "llama31-70b", "Q8_0", "00002-of-00002")
    assert second["filename"] == SHARD_2 and second["shard"] == {"no": 2, "count": 2} and second["sha256"] is None


def test_a_whole_file_keeps_its_quant_name(default_config, schema):
    cfg = validate_config(default_config, schema)
    model = next(iter(cfg["models"]))
    quant = cfg["models"][model]["quants"][0]
    assert study.model_file_name(cfg, model, quant) == f"{quant}.gguf"


def test_a_later_shard_is_refused_naming_the_first(schema):
    cfg = case_config()
    cfg["models"]["llama31-70b"]["source"]["files"]["Q8_0"]["filename"] = SHARD_2
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, schema)
    msg = str(e.value)
    assert "models.llama31-70b.source.files.Q8_0.filename" in msg and "is shard 2 of 2" in msg
    assert f"name the first shard, {SHARD_1!r}" in msg


def test_shard_hashes_one_per_shard(schema):
    cfg = case_config()
    entry = cfg["models"]["llama31-70b"]["source"]["files"]["Q8_0"]
    entry["shard_sha256"] = ["a" * 64, "b" * 64]
    assert validate_config(copy.deepcopy(cfg), schema)
    entry["shard_sha256"] = ["a" * 64, "b" * 64, "c" * 64]
    with pytest.raises(ConfigError, match=r"shard_sha256 lists 3 hashes for 2 shards; list one per shard"):
        validate_config(copy.deepcopy(cfg), schema)
    entry.update(shard_sha256=["a" * 64, "b" * 64], sha256="c" * 64)
    with pytest.raises(ConfigError, match=r"sha256 and shard_sha256\[0\] both pin the first shard and differ"):
        validate_config(copy.deepcopy(cfg), schema)
    entry.update(shard_sha256=["a" * 64, "b" * 64], sha256="a" * 64)
    source = study.hf_shard_source(validate_config(cfg, schema), "llama31-70b", "Q8_0", "00002-of-00002")
    assert source["sha256"] == "b" * 64


def test_a_split_source_for_a_derived_ladder_is_refused(schema):
    cfg = case_config()
    cfg["models"]["llama31-70b"]["source"] = {"kind": "hf", "repo": "a/b", "revision": "main", "filename": SHARD_1}
    with pytest.raises(ConfigError, match=r"source.filename = .* is one shard of a split GGUF.*source.files"):
        validate_config(cfg, schema)


# --- plan -----------------------------------------------------------------------------------------------------


def test_split_config_dry_runs_with_one_fetch_per_shard(tmp_path):
    """A real `snakemake -n` in a copy of the workflow: nothing is built or fetched."""
    for item in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item)
    shutil.copy2(CASE, tmp_path / "config" / CASE.name)
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "4", "--resources", "gpu=2",
         "--configfile", f"config/{CASE.name}"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    stats = out.split("Job stats:")[1].split("Reasons:")[0]
    assert "fetch_hf_shard                  2" in stats and "fetch_hf_quant" not in stats
    models = "resources/models/llama31-70b"
    for shard in ("00001-of-00002", "00002-of-00002"):
        assert f"output: {models}/Q8_0-{shard}.gguf, {models}/Q8_0-{shard}.json" in out
    # The first shard's job waits for the other; the bench is given the first shard.
    assert f"input: {models}/Q8_0-00002-of-00002.gguf, {models}/Q8_0-00002-of-00002.json\n" \
           f"    output: {models}/Q8_0-00001-of-00002.gguf" in out
    bench = out.split("rule bench_llama_server:")[1].split("\n")[1]
    assert bench.startswith(f"    input: {models}/Q8_0-00001-of-00002.gguf,")


# --- the file check -------------------------------------------------------------------------------------------


def test_complete_split_set_passes_as_the_whole_model(tmp_path):
    first, *_ = write_split_gguf(tmp_path, "Q8_0", 3)
    info = check_gguf(first)
    assert info["split_count"] == 3 and info["tensors"] == 3
    assert info["shards"] == [f"Q8_0-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    assert info["bytes"] == sum(p.stat().st_size for p in tmp_path.glob("*.gguf"))
    assert split_count(first) == 3


def test_lone_shard_is_refused_naming_the_missing_files_and_never_deleting_it(tmp_path):
    first, second, third = write_split_gguf(tmp_path, "Q8_0", 3)
    second.unlink()
    third.unlink()
    with pytest.raises(MissingShardsError) as e:
        check_gguf(first)
    msg = str(e.value)
    assert "shard 1 of 3" in msg and "Q8_0-00002-of-00003.gguf, Q8_0-00003-of-00003.gguf" in msg
    assert "delete" not in msg.lower() and "keep it" in msg
    assert first.exists()


def test_first_shard_under_another_name_is_refused_as_llama_cpp_would(tmp_path):
    first, _ = write_split_gguf(tmp_path, "Q8_0", 2)
    renamed = first.rename(tmp_path / "Q8_0.gguf")  # as in the c10 log: "invalid split file name"
    with pytest.raises(CorruptModelError, match=r"does not end in -00001-of-00002\.gguf.*invalid split file name") as e:
        check_gguf(renamed)
    assert "delete" not in str(e.value).lower()


def test_a_later_shard_given_alone_names_the_first(tmp_path):
    _, second = write_split_gguf(tmp_path, "Q8_0", 2)
    with pytest.raises(CorruptModelError, match=r"shard 2 of 2 .*give .*Q8_0-00001-of-00002\.gguf instead") as e:
        check_gguf(second)
    assert "delete" not in str(e.value).lower()


def test_shards_of_different_sets_are_refused(tmp_path):
    first, _ = write_split_gguf(tmp_path / "a", "Q8_0", 2)
    write_split_gguf(tmp_path / "b", "Q8_0", 3)
    shutil.copy2(tmp_path / "b/Q8_0-00002-of-00003.gguf", tmp_path / "a/Q8_0-00002-of-00002.gguf")
    with pytest.raises(CorruptModelError, match=r"does not belong with Q8_0-00001-of-00002\.gguf"):
        check_gguf(first)


def test_a_whole_gguf_is_not_split(tiny_gguf):
    assert split_count(tiny_gguf) == 1 and "split_count" not in check_gguf(tiny_gguf)


# --- the fetch ------------------------------------------------------------------------------------------------

REPO_ID, COMMIT = "bartowski/Meta-Llama-3.1-70B-Instruct-GGUF", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def split_hub_cache(tmp_path, monkeypatch):
    """The two shards in a hub cache laid out as huggingface_hub writes it (blobs + snapshot symlinks), offline."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    repo_dir = cache / f"models--{REPO_ID.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    digests = []
    for path, name in zip(write_split_gguf(tmp_path / "published", "x", 2), (SHARD_1, SHARD_2), strict=True):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        (repo_dir / "blobs" / digest).write_bytes(path.read_bytes())
        link = repo_dir / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"../../../blobs/{digest}")
        digests.append(digest)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return digests


class Fields(dict):
    """Snakemake's input/output/params stand-in: attribute access and keys()."""

    __getattr__ = dict.__getitem__


def fetch_job(cfg: dict, res: Path, shard: str) -> Fields:
    """What rule fetch_hf_shard hands its script, from the same planning helpers."""
    names = study.shard_files(cfg, "llama31-70b", "Q8_0")
    folder = res / "models/llama31-70b"
    inputs = Fields()
    if f"Q8_0-{shard}.gguf" == names[0]:
        inputs = Fields(shards=[str(folder / n) for n in names[1:]],
                        shard_records=[str(folder / Path(n).with_suffix(".json")) for n in names[1:]])
    return Fields(
        input=inputs,
        output=Fields(gguf=str(folder / f"Q8_0-{shard}.gguf"), record=str(folder / f"Q8_0-{shard}.json")),
        params=Fields(source=study.hf_shard_source(cfg, "llama31-70b", "Q8_0", shard)),
        wildcards=Fields(model="llama31-70b", quant="Q8_0", shard=shard),
        log=[str(res / f"logs/{shard}.log")],
    )


def test_fetch_of_two_shards_with_sha256_records_both(split_hub_cache, tmp_path, schema):
    cfg = case_config()
    cfg["models"]["llama31-70b"]["source"]["files"]["Q8_0"]["shard_sha256"] = split_hub_cache
    cfg = validate_config(cfg, schema)
    res = tmp_path / "resources"
    for shard in ("00002-of-00002", "00001-of-00002"):  # the order the workflow runs them in
        fetch_hf_model.main(fetch_job(cfg, res, shard))
    folder = res / "models/llama31-70b"
    assert sorted(p.name for p in folder.glob("*.gguf")) == ["Q8_0-00001-of-00002.gguf", "Q8_0-00002-of-00002.gguf"]
    record = json.loads((folder / "Q8_0-00001-of-00002.json").read_text())
    assert record["split_count"] == 2 and record["filename"] == SHARD_1 and record["resolved_commit"] == COMMIT
    assert [s["sha256"] for s in record["shards"]] == split_hub_cache
    assert [(s["no"], s["filename"], s["file"]) for s in record["shards"]] == [
        (1, SHARD_1, "Q8_0-00001-of-00002.gguf"), (2, SHARD_2, "Q8_0-00002-of-00002.gguf")]
    assert record["bytes"] == sum(s["bytes"] for s in record["shards"])
    assert json.loads((folder / "Q8_0-00002-of-00002.json").read_text())["shard"] == {"no": 2, "count": 2}
    # The tensor mix is the whole model's: every shard's tensors, in the first shard's record only.
    mix = record["tensor_mix"]
    assert mix["label"] == "Q8_0" and sum(t["tensors"] for t in mix["types"]) == mix["weight_matrices"] > 0
    assert "tensor_mix" not in json.loads((folder / "Q8_0-00002-of-00002.json").read_text())
    assert check_gguf(folder / "Q8_0-00001-of-00002.gguf")["split_count"] == 2


def test_a_shard_with_a_wrong_sha256_fails_alone_and_leaves_nothing(split_hub_cache, tmp_path, schema):
    from llmbench.modelfiles.fetch import IntegrityError

    cfg = case_config()
    cfg["models"]["llama31-70b"]["source"]["files"]["Q8_0"]["shard_sha256"] = [split_hub_cache[0], "f" * 64]
    cfg = validate_config(cfg, schema)
    res = tmp_path / "resources"
    with pytest.raises(IntegrityError, match="00002-of-00002"):
        fetch_hf_model.main(fetch_job(cfg, res, "00002-of-00002"))
    assert list((res / "models/llama31-70b").glob("*.gguf")) == []


# --- tools that cannot load shards ----------------------------------------------------------------------------


def test_tools_that_take_one_file_end_skipped_with_the_reason(tmp_path):
    from llmbench.engines.ollama import Ollama
    from llmbench.engines.transformers import Transformers
    from llmbench.engines.vllm import Vllm, VllmSettings

    first, _ = write_split_gguf(tmp_path, "Q8_0", 2)
    engines = {
        "transformers": Transformers(first),
        "vLLM": Vllm(VllmSettings(model=first), tmp_path / "vllm.log"),
        "Ollama": Ollama("llmbench-m:Q8_0", tmp_path / "ollama.log", host="127.0.0.1:9", gguf=first),
    }
    for name, engine in engines.items():
        with pytest.raises(ToolUnavailable, match=rf"(?i){name}.*split GGUF.*first of 2 shards|first of 2 shards"):
            engine.start()


def test_the_roofline_reads_every_shard_of_a_split_gguf(tmp_path):
    from llmbench.outputs.roofline import gguf_traffic

    first, second = write_split_gguf(tmp_path, "Q8_0", 2)
    whole = gguf_traffic(first)
    # Two shards of one 64 × 4 float32 tensor each: both tensors' bytes, the model's metadata from the first.
    assert whole["tensor_bytes"] == 2 * 64 * 4 * 4 and whole["block_count"] == 2
    second.unlink()
    with pytest.raises(CorruptModelError, match="missing"):
        gguf_traffic(first)
