import copy
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, load_config
from llmbench import study
from llmbench.configcheck import ConfigError, validate_config


def test_default_config_is_valid_and_gets_defaults(default_config, schema):
    cfg = validate_config(default_config, schema)
    assert cfg["resources_dir"] == "resources"
    assert cfg["llama_cpp"]["cmake_args"] == []
    assert cfg["tools"]["llama-server"]["num_gpu"] is None


def test_article_config_is_valid(schema):
    cfg = validate_config(load_config("llama31-quantfactory.yaml"), schema)
    assert study.unpinned_revisions(cfg) == ["models.llama31-70b.source.revision = 'main'",
                                            "quality.corpus.revision = 'main'"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["models"]["smollm2-135m"]["quants"].append("Q9_K"),
         r"models\.smollm2-135m\.quants\[8\] = 'Q9_K' is not allowed; allowed: .*Q4_K_M"),
        (lambda c: c["bench"].__setitem__("repetitions", -1),
         r"bench\.repetitions = -1 is too small; it must be >= 1"),
        (lambda c: c["tools"].__setitem__("vllm-nightly", {}),
         r"tools = 'vllm-nightly' is not allowed; allowed: llama-server, llama-bench, llama-cpp-python, transformers, ollama, vllm"),
        (lambda c: c["models"]["smollm2-135m"].pop("source"),
         r"models\.smollm2-135m has no 'source': add it \(kind pypi"),
        (lambda c: c["models"]["smollm2-135m"]["source"].__setitem__("kind", "ftp"),
         r"models\.smollm2-135m\.source\.kind = 'ftp' is not a known source kind; allowed: hf, ollama, pypi"),
        (lambda c: c["models"]["smollm2-135m"]["source"].pop("member"),
         r"models\.smollm2-135m\.source has no 'member'"),
        (lambda c: c["bench"]["prompts"].append(dict(c["bench"]["prompts"][0])),
         r"bench\.prompts: id 'arithmetic' is used twice"),
        (lambda c: c["tools"]["transformers"].update(quants=["IQ2_XS"]),
         r"tools\.transformers\.quants = \['IQ2_XS'\] keeps none of the models' quants"),
        (lambda c: c["models"]["smollm2-135m"].update(n_gpu_layers="all"),
         r"models\.smollm2-135m\.n_gpu_layers = 'all' is not allowed; write a number of layers \(0 or more\), or auto"),
        (lambda c: c["models"]["smollm2-135m"].update(n_gpu_layers=-1),
         r"models\.smollm2-135m\.n_gpu_layers = -1 is not allowed; write a number of layers \(0 or more\), or auto"),
    ],
    ids=["unknown-quant", "negative-repetitions", "unknown-tool", "no-source", "bad-kind", "no-member", "dup-prompt",
         "tool-quants-match-nothing", "ngl-all", "ngl-negative"],
)
def test_bad_config_names_key_value_and_fix(default_config, schema, mutate, expected):
    mutate(default_config)
    with pytest.raises(ConfigError, match=expected):
        validate_config(default_config, schema)


def test_hf_quant_without_file_is_named(schema):
    cfg = load_config("llama31-quantfactory.yaml")
    cfg["models"]["llama31-8b"]["quants"].append("Q4_K_S")
    with pytest.raises(ConfigError, match=r"'Q4_K_S' has no file in models\.llama31-8b\.source\.files"):
        validate_config(cfg, schema)


def test_ollama_tag_is_one_quant(schema):
    cfg = load_config("llama31-quantfactory.yaml")
    cfg["models"]["ollama-llama3.2-1b"]["quants"] = ["Q8_0", "Q4_0"]
    with pytest.raises(ConfigError, match=r"an Ollama library tag is one quant"):
        validate_config(cfg, schema)


def test_snakemake_fails_before_any_job_on_a_bad_config(tmp_path):
    cfg = copy.deepcopy(load_config())
    cfg["models"]["smollm2-135m"]["quants"].append("Q9_K")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad), "--directory", str(tmp_path),
         "-s", str(REPO / "Snakefile")],
        capture_output=True, text=True, cwd=REPO,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "'Q9_K' is not allowed" in out
    assert "Job stats" not in out
    assert not (tmp_path / "resources").exists()
