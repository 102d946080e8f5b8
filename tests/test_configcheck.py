import copy
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, load_config
from llmbench.study import plan as study
from llmbench.study.configcheck import ConfigError, validate_config


def test_default_config_is_valid_and_gets_defaults(default_config, schema):
    cfg = validate_config(default_config, schema)
    assert cfg["resources_dir"] == "resources"
    assert cfg["llama_cpp"]["cmake_args"] == []
    # Each tool gets the defaults of its own options (llmbench/engines/registry.py), and only those.
    assert cfg["tools"]["ollama"]["num_gpu"] is None and "num_gpu" not in cfg["tools"]["llama-server"]
    assert cfg["tools"]["llama-server"]["flash_attn"] is None and "n_prompt" not in cfg["tools"]["llama-server"]


@pytest.mark.parametrize(("tool", "key", "value", "options"), [
    ("llama-server", "n_gen", 64, "flash_attn, extra_args"),
    ("llama-bench", "flash_attn", True, "n_prompt, n_gen"),
    ("ollama", "dtype", "float16", "num_gpu"),
    ("transformers", "flash_atn", True, "dtype"),
])
def test_an_option_the_tool_does_not_take_is_refused_naming_the_tool_and_its_options(default_config, schema, tool,
                                                                                       key, value, options):
    """A key under tools.<tool> that is an option of another tool, or of none, was silently ignored; now the config
    is refused at parse time naming the tool, the key and the options the tool takes."""
    default_config["tools"].setdefault(tool, {})[key] = value
    with pytest.raises(ConfigError) as e:
        validate_config(default_config, schema)
    msg = str(e.value)
    assert f"tools.{tool}.{key}: {tool} takes no option {key}; its options: {options}" in msg
    assert "the keys every tool takes: split_modes, gpus, quants" in msg
    if key == "n_gen":  # where other tools take it, the message says which
        assert "(n_gen is an option of llama-bench, llama-batched-bench)" in msg


def test_an_option_the_tool_takes_is_checked_against_its_own_range(default_config, schema):
    default_config["tools"]["vllm"]["gpu_memory_utilization"] = 1.5
    default_config["tools"]["llama-server"]["flash_attn"] = "sometimes"
    with pytest.raises(ConfigError) as e:
        validate_config(default_config, schema)
    msg = str(e.value)
    assert "tools.vllm.gpu_memory_utilization = 1.5 is too large; it must be <= 1 (allowed: above 0 to 1)" in msg
    assert "tools.llama-server.flash_attn = 'sometimes' is not allowed; write on (or true), off (or false)" in msg
    ok = load_config()
    ok["tools"]["llama-server"].update(flash_attn=True, extra_args=["--cache-type-k", "q8_0"])
    ok["tools"]["vllm"]["gpu_memory_utilization"] = 0.8
    assert validate_config(ok, schema)["tools"]["llama-server"]["flash_attn"] is True


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
         r"tools = 'vllm-nightly' is not allowed; allowed: llama-server, llama-bench, llama-batched-bench, "
         r"llama-cpp-python, transformers, ollama, vllm"),
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
        (lambda c: c["tools"]["llama-batched-bench"].update(n_prompt=0),
         r"tools\.llama-batched-bench\.n_prompt = 0: each sequence needs a prompt of at least 1 token"),
    ],
    ids=["unknown-quant", "negative-repetitions", "unknown-tool", "no-source", "bad-kind", "no-member", "dup-prompt",
         "tool-quants-match-nothing", "ngl-all", "ngl-negative", "batched-empty-prompt"],
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


CASES = REPO / "tests/data/cases"


def test_gpt_oss_mxfp4_case_is_valid(schema):
    # c16: gpt-oss's native MXFP4 (llama.cpp PR #15091), published as a file: a type gguf knows, so the config runs.
    cfg = validate_config(yaml.safe_load((CASES / "c16_config_mxfp4_gptoss.yaml").read_text()), schema)
    assert cfg["models"]["gpt-oss-20b"]["quants"] == ["MXFP4"]


def hf_files_config(quants: list[str]) -> dict:
    cfg = yaml.safe_load((CASES / "c16_config_mxfp4_gptoss.yaml").read_text())
    model = cfg["models"]["gpt-oss-20b"]
    model["source"]["files"] = {q: {"filename": f"model-{q}.gguf"} for q in quants}
    model["quants"] = list(quants)
    return cfg


@pytest.mark.parametrize("quant", ["MXFP4", "TQ2_0", "IQ4_NL", "NVFP4", "Q1_0", "MXFP4_MOE"])
def test_every_type_gguf_knows_validates_as_a_published_file(schema, quant):
    cfg = hf_files_config([quant])
    cfg["tools"]["llama-bench"]["quants"] = [quant]
    validate_config(cfg, schema)


@pytest.mark.parametrize("quant", ["TQ2_0", "IQ4_NL", "MXFP4_MOE", "Q1_0"])
def test_types_llama_quantize_makes_validate_in_a_derived_ladder(default_config, schema, quant):
    default_config["models"]["smollm2-135m"]["quants"].append(quant)
    validate_config(default_config, schema)


@pytest.mark.parametrize(
    "where, mutate",
    [
        ("models.smollm2-135m.quants[8]", lambda c: c["models"]["smollm2-135m"]["quants"].append("Q5_K_Z")),
        ("tools.ollama.quants[2]", lambda c: c["tools"]["ollama"]["quants"].append("Q5_K_Z")),
    ],
    ids=["model-quants", "tool-quants"],
)
def test_unknown_quant_is_refused_naming_the_allowed_ones_and_the_fix(default_config, schema, where, mutate):
    mutate(default_config)
    with pytest.raises(ConfigError) as err:
        validate_config(default_config, schema)
    msg = str(err.value)
    assert f"{where} = 'Q5_K_Z' is not allowed; allowed: " in msg
    assert "MXFP4" in msg and "Q4_K_M" in msg and "did you mean Q5_K_S or Q5_K_M" in msg
    assert "correct the name, or pin a gguf that knows the type" in msg


def test_unknown_published_file_type_is_refused(schema):
    with pytest.raises(ConfigError, match=r"models\.gpt-oss-20b\.source\.files\.MXFP5: 'MXFP5' is not allowed; "
                                          r"allowed: .*MXFP4"):
        validate_config(hf_files_config(["MXFP5"]), schema)


def test_unknown_quant_is_named_even_beside_schema_errors(default_config, schema):
    default_config["models"]["smollm2-135m"]["quants"].append("Q5_K_Z")
    default_config["bench"]["repetitions"] = 0
    with pytest.raises(ConfigError, match=r"(?s)bench\.repetitions = 0 is too small.*'Q5_K_Z' is not allowed"):
        validate_config(default_config, schema)


def test_derived_ladder_refuses_a_type_llama_quantize_cannot_make(default_config, schema):
    default_config["models"]["smollm2-135m"]["quants"].append("MXFP4")
    with pytest.raises(ConfigError) as err:
        validate_config(default_config, schema)
    msg = str(err.value)
    assert "models.smollm2-135m.quants: 'MXFP4' cannot be derived from the model's source file: llama-quantize" in msg
    assert "cannot make MXFP4" in msg and "source.files" in msg and "MXFP4_MOE" in msg


def ollama_config(tag) -> dict:
    cfg = load_config("llama31-quantfactory.yaml")
    cfg["models"]["ollama-llama3.2-1b"]["source"]["tag"] = tag
    return cfg


@pytest.mark.parametrize("tag", [
    "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
    "llama3.1:8b",
    "library/llama3.1:70b-instruct-q4_0",
    "registry.ollama.ai/library/llama3.2",
    "llama3.2",
    "https://registry.ollama.ai/library/llama3.2:1b",
    "Mistral:7B",
])
def test_every_ollama_model_name_is_accepted(schema, tag):
    validate_config(ollama_config(tag), schema)


@pytest.mark.parametrize("tag, why", [
    ("hf.co/llama3:8b", r"its namespace 'hf\.co' has a '\.'"),
    ("a/b/c/d:1", r"it has 4 parts separated by '/'"),
    ("llama3:", r"its tag after ':' is empty"),
    ("localhost:11434/llama3", r"':' may only separate the tag"),
    ("llama3..1:8b", r"it has two '\.' in a row"),
    ("llama 3:8b", r"its model 'llama 3' is empty or has a character other than"),
    ("/llama3", r"its namespace '' is empty"),
    ("llama3:8b+Q4_0", r"it names a build \(\+\.\.\.\) or a digest"),
    ("m" * 129, r"it has 129 characters; Ollama takes at most 128"),
    ("", r"it is empty"),
])
def test_bad_ollama_model_name_is_refused_with_the_reason(schema, tag, why):
    with pytest.raises(ConfigError, match=rf"models\.ollama-llama3\.2-1b\.source\.tag = .* is not an Ollama model "
                                          rf"name: {why}.*Write \[host/\]\[namespace/\]model\[:tag\]"):
        validate_config(ollama_config(tag), schema)


def test_a_source_archive_that_is_not_there_is_named_with_the_fix(default_config, schema, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = copy.deepcopy(default_config)
    cfg["llama_cpp"]["source_archive"] = {"path": ".gpu/unpacked/src.tar.xz", "sha256": "0" * 64}
    with pytest.raises(ConfigError, match=r"source_archive.path = '.gpu/unpacked/src.tar.xz' is not a file here .*"
                                          r"benchmarks/gpu/prepare.py"):
        validate_config(cfg, schema)
    (tmp_path / ".gpu/unpacked").mkdir(parents=True)
    (tmp_path / ".gpu/unpacked/src.tar.xz").write_bytes(b"")
    assert validate_config(cfg, schema)["llama_cpp"]["source_archive"]["path"] == ".gpu/unpacked/src.tar.xz"


def _set(*keys_value):
    """A mutation setting config[k1][k2]... = value (keys then the value)."""
    *keys, value = keys_value

    def mutate(c):
        for k in keys[:-1]:
            c = c[k]
        c[keys[-1]] = value
    return mutate


# Values once accepted that failed late, one job at a time, or hung (issue 23): each refused at parse time, by key,
# value and allowed range. The default config runs llama-server at [1, 4] and bench.depths [0], max_tokens up to 64.
@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_set("bench", "concurrency", [1, 100000]),
         r"bench\.concurrency\[1\] = 100000 is too large; it must be <= 1024 \(allowed: 1 to 1024\): each client is a "
         r"thread .*\(ulimit -n\)"),
        (_set("tools", "vllm", "concurrency", [2000]),
         r"tools\.vllm\.concurrency\[0\] = 2000 is too large; it must be <= 1024 \(allowed: 1 to 1024\)"),
        (_set("tools", "llama-server", "concurrency", [1, 300]),
         r"tools\.llama-server\.concurrency = 300 is too many for llama-server: llama\.cpp holds at most 256 sequences "
         r"in one context \(LLAMA_MAX_SEQ, src/llama-cparams\.h\); allowed: 1 to 256; lower it$"),
        (_set("bench", "depths", [0, 4096]),
         r"bench\.depths = 4096 does not fit bench\.ctx_size = 2048 \(llama-server\): depth \+ the longest prompt's "
         r"max_tokens \(sky: 64\) .* allowed: depths below 1984; lower the depth or raise bench\.ctx_size"),
        (_set("bench", "depths", [0, 1984]), r"bench\.depths = 1984 does not fit bench\.ctx_size = 2048"),
        (_set("bench", "prompts", 3, "max_tokens", 2048),
         r"bench\.prompts\[3\]\.max_tokens = 2048 does not fit bench\.ctx_size = 2048: .*allowed: 1 to 2047"),
        (_set("bench", "ctx_size", 10**12),
         r"bench\.ctx_size = 1000000000000 is too large; it must be <= 16777216 \(allowed: 256 to 16777216\): 2\^24 "
         r"tokens is above the longest context any released open model is trained for"),
        (_set("quality", "ctx_size", 2**30), r"quality\.ctx_size = 1073741824 is too large; .*\(allowed: 64 to 16777216\)"),
        (lambda c: (_set("bench", "ctx_size", 2**24)(c), _set("tools", "llama-server", "concurrency", [1, 200])(c)),
         r"bench\.ctx_size = 16777216 at tools\.llama-server\.concurrency = 200 gives llama-server --ctx-size "
         r"3355443200 .* past llama\.cpp's int32 limit 2147483647; allowed: ctx_size up to 10737418"),
        (_set("tools", "llama-bench", "depths", [0, 2**24]),
         r"tools\.llama-bench\.depths = 16777216 with tools\.llama-bench\.n_prompt = 128 and n_gen = 64 makes "
         r"llama-bench a context of 16777408 tokens; allowed: at most 16777216 per sequence"),
        (_set("bench", "seed", 2**70),
         r"bench\.seed = 1180591620717411303424 is too large; it must be <= 4294967294 \(allowed: 0 to 4294967294\): "
         r"llama\.cpp takes the seed as a uint32 .*LLAMA_DEFAULT_SEED"),
        (_set("bench", "seed", 4294967290),
         r"bench\.seed = 4294967290: its jobs use seeds up to 4294967329 \(seed \+ repetitions × clients − 1 at 4 "
         r"clients\), past 4294967294, .*allowed: 0 to 4294967255"),
        (_set("study", "s" * 300),
         r"study = 's{40}'… has 300 characters; it must have at most 100: it becomes a file name"),
        (lambda c: c["models"].__setitem__("m" * 300, c["models"].pop("smollm2-135m")),
         r"models = 'm{40}'… has 300 characters; it must have at most 100: a model's name is a folder"),
    ],
    ids=["concurrency-1e5", "tool-concurrency-2000", "llama-server-over-256", "depth-over-ctx", "depth-plus-max-tokens",
         "max-tokens-ctx", "ctx-1e12", "quality-ctx", "server-ctx-int32", "llama-bench-context", "seed-2-70",
         "seed-plus-repetitions", "study-300", "model-300"],
)
def test_out_of_range_values_are_refused_at_parse_time_with_key_and_range(default_config, schema, mutate, expected):
    mutate(default_config)
    with pytest.raises(ConfigError) as err:
        validate_config(default_config, schema)
    assert any(re.search(expected, line) for line in str(err.value).splitlines()), str(err.value)


@pytest.mark.parametrize("mutate", [
    _set("bench", "depths", [0, 1983]),  # 1983 + 64 = 2047: one token left for the prompt
    _set("bench", "seed", 4294967255),  # the largest with bench.precision's 10 rounds at most, at 4 clients
    _set("bench", "concurrency", [1, 1024]),  # llama-server keeps its own [1, 4]; the others run one stream
    _set("study", "s" * 100),
    _set("results_dir", "../llmbench-results"),
    _set("resources_dir", "/tmp/llmbench/resources"),
], ids=["depth-edge", "seed-edge", "concurrency-1024", "study-100", "results-beside", "resources-absolute"])
def test_values_at_the_edge_of_their_range_are_accepted(default_config, schema, mutate):
    mutate(default_config)
    validate_config(default_config, schema)


@pytest.mark.parametrize("key", ["results_dir", "resources_dir"])
@pytest.mark.parametrize("value, why", [
    ("", r"= '' has 0 characters; it must have at least 1: it names the folder"),
    ("/", r"= '/': it is the filesystem root; the workflow writes its files under it"),
    ("//", r"= '//': it is the filesystem root"),
    # Where the checkout lies under the temporary folder (as CI's may), '..' also holds the test's home folder:
    # either reason refuses it.
    (".", r"= '\.': it is .*, which (is or holds the working directory|holds your home folder)"),
    ("..", r"= '\.\.': it is .*, which (is or holds the working directory|holds your home folder)"),
    ("~", r"= '~': it starts with '~', which the workflow does not expand"),
    ("~/results", r"= '~/results': it starts with '~'"),
    ("HOME", r"= '.*': it is your home folder"),
], ids=["empty", "root", "double-slash", "dot", "parent", "tilde", "tilde-path", "home"])
def test_folder_keys_refuse_root_home_empty_and_the_project(default_config, schema, monkeypatch, tmp_path, key, value,
                                                            why):
    home = tmp_path / "someone"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    default_config[key] = str(home) if value == "HOME" else value
    with pytest.raises(ConfigError, match=rf"{key} {why}.*(e\.g\. |fill it in)"):
        validate_config(default_config, schema)


def test_a_folder_that_holds_the_project_is_refused(default_config, schema, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the working directory: only the project's own folder is in the way
    default_config["results_dir"] = str(REPO)
    with pytest.raises(ConfigError, match=rf"results_dir = '{REPO}': it is {REPO}, which is or holds the project"):
        validate_config(default_config, schema)
    default_config["results_dir"] = str(REPO.parent)  # may hold the test's working directory too (a /tmp checkout)
    with pytest.raises(ConfigError, match=r"results_dir = .*which is or holds the (project|working directory)"):
        validate_config(default_config, schema)


@pytest.mark.parametrize("precision, expected", [
    ({"target": 0.05, "max_repetitions": 5}, r"bench\.precision\.max_repetitions 5 is below the 6 rounds a 95% "
                                             r"interval of a median needs: raise it to 6 or more"),
    ({"target": 0.05, "min_repetitions": 8, "max_repetitions": 7}, r"min_repetitions 8 must be at least 1 and at "
                                                                   r"most max_repetitions 7"),
    ({"target": 2}, r"bench\.precision\.target.*2"),
    ({"confidence": 0.9}, r"bench\.precision.*target"),
    ({"target": 0.05, "rounds": 3}, r"bench\.precision.*rounds"),
], ids=["max-below-interval", "min-above-max", "target-2", "no-target", "unknown-key"])
def test_bad_precision_is_refused_naming_the_key(default_config, schema, precision, expected):
    default_config["bench"]["precision"] = precision
    with pytest.raises(ConfigError, match=expected):
        validate_config(default_config, schema)
