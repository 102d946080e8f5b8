"""Each tool's own options (llmbench/engines/registry.py: option name -> a JSON-schema fragment): the schema lists
them under their tool, a job receives those its config sets as EngineSettings.options, and the engine puts them on
its command line or into its call. An option the tool does not take is refused at parse time
(tests/test_configcheck.py).

The framework added here is a stand-in (``StandInEcho``, named as one: conftest.STANDIN_ECHO_ENGINE): an engine
that starts no process and answers with the text its option says; the real engines' options are checked on the command line or
call they build, the llama-cpp-python binding replaced by a stand-in that records its arguments.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, STANDIN_ECHO_ENGINE, bench_job, snakemake_standin
from llmbench.engines import llama_server, registry, vllm
from llmbench.engines.registry import TOOLS, job_options
from llmbench.study.configcheck import ConfigError, load_schema, validate_config
from llmbench.study.job import Job

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"



def job(tmp_path: Path, tool: str, section: dict, *, gpus: int = 0) -> Job:
    """A bench job of ``tool`` as its rule passes it: the options its config section sets ride with the engine
    settings (common.smk's engine_params), on a stand-in build and model file."""
    build = tmp_path / "standin-build" / "build.json"
    build.parent.mkdir(parents=True, exist_ok=True)
    build.write_text("{}")
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    options = job_options(tool, section)
    engine = {"n_gpu_layers": 0, "tensor_split": None, "gpus": gpus, "seed": 1, "ctx_size": 2048,
              "start_timeout_s": 20, "request_timeout_s": 20, "model_name": None,
              **({"options": options} if options else {})}
    smk = snakemake_standin(tmp_path, wildcards={"model": "m", "quant": "Q4_0", "split": "none", "concurrency": "1",
                                                 "depth": "0"},
                            input={"model": str(model), "build": str(build)},
                            params={"tool": tool, "engine": engine, "tool_settings": {}})
    return Job.from_snakemake(smk)


def engine_of(tmp_path: Path, tool: str, section: dict, **kw):
    j = job(tmp_path, tool, section, **kw)
    return TOOLS[tool].make_engine(j.settings, tmp_path / "engine.log")


def test_the_schema_lists_each_tools_options():
    schema = load_schema(SCHEMA)
    common = schema["$defs"]["tool"]["properties"]
    tools = schema["properties"]["tools"]["properties"]
    assert list(tools) == list(TOOLS)
    for name, record in TOOLS.items():
        section = tools[name]
        assert list(section["properties"]) == [*common, *record.options] and section["additionalProperties"] is False
        assert section["x-tool"] == name and section["x-options"] == list(record.options)
        for option, spec in record.options.items():
            assert section["properties"][option] == spec and {"default", "description"} <= spec.keys()
    assert {name: list(record.options) for name, record in TOOLS.items()} == {
        "llama-server": ["flash_attn", "extra_args"],
        "llama-bench": ["n_prompt", "n_gen"],
        "llama-batched-bench": ["n_prompt", "n_gen"],
        "llama-cpp-python": ["flash_attn"],
        "transformers": ["dtype"],
        "ollama": ["num_gpu"],
        "vllm": ["gpu_memory_utilization", "extra_args"],
    }
    # No tool's option is a key every tool takes: those stay in $defs/tool.
    assert not {o for r in TOOLS.values() for o in r.options} & {"split_modes", "gpus", "quants", "concurrency",
                                                                   "sweep_quants", "depths"}


def test_an_option_a_record_declares_is_in_the_schema_and_reaches_its_engine(tmp_path, monkeypatch, default_config):
    (tmp_path / "standin_echo_options.py").write_text(textwrap.dedent(STANDIN_ECHO_ENGINE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "TOOLS", dict(TOOLS))  # the record is registered for this test only
    registry.register(registry.Tool(
        "standin-echo", TOOLS["vllm"].facts, engine="standin_echo_options:StandInEcho",
        options={"echo_text": {"type": ["string", "null"], "default": None, "description": "what it answers"}},
    ))
    schema = load_schema(SCHEMA)
    default_config["tools"] = {"standin-echo": {"echo_text": "hello from the config"}}
    section = validate_config(default_config, schema)["tools"]["standin-echo"]
    assert section["echo_text"] == "hello from the config" and section["split_modes"] == ["none"]
    j = job(tmp_path, "standin-echo", section)
    assert dict(j.settings.options) == {"echo_text": "hello from the config"}
    with registry.tool("standin-echo").make_engine(j.settings, tmp_path / "engine.log") as engine:
        assert engine.generate("hi", 4, 0.0, 1).text == "hello from the config"
    default_config["tools"]["standin-echo"]["echo_txt"] = "a typo"
    with pytest.raises(ConfigError, match=r"tools\.standin-echo\.echo_txt: standin-echo takes no option echo_txt; "
                                          r"its options: echo_text"):
        validate_config(default_config, schema)
    with pytest.raises(ValueError, match="option 'bare' needs a default and a description"):
        registry.register(registry.Tool("standin-bare", TOOLS["vllm"].facts, engine="standin_echo_options:StandInEcho",
                                        options={"bare": {"type": "integer"}}))


def test_llama_servers_options_reach_its_command_line(tmp_path):
    engine = engine_of(tmp_path, "llama-server", {"flash_attn": True, "extra_args": ["--cache-type-k", "q8_0"]})
    cmd = llama_server.server_command(engine.settings, 8080)
    assert cmd[cmd.index("--flash-attn") + 1] == "on" and cmd[-2:] == ["--cache-type-k", "q8_0"]
    cmd = llama_server.server_command(engine_of(tmp_path, "llama-server", {"flash_attn": "auto"}).settings, 8080)
    assert cmd[cmd.index("--flash-attn") + 1] == "auto"
    # Left null, nothing is passed: the build's own default holds, and the job's params are those of before.
    plain = job(tmp_path, "llama-server", {"flash_attn": None, "extra_args": None})
    assert dict(plain.settings.options) == {} and "options" not in plain.params["engine"]
    cmd = llama_server.server_command(TOOLS["llama-server"].make_engine(plain.settings, tmp_path / "e.log").settings, 1)
    assert "--flash-attn" not in cmd and cmd[-1] == "4"  # ends with --log-verbosity 4, as before


def test_vllms_options_reach_its_command_line(tmp_path):
    engine = engine_of(tmp_path, "vllm", {"gpu_memory_utilization": 0.8, "extra_args": ["--enforce-eager"]}, gpus=1)
    cmd = vllm.server_command(engine.settings, 8000)
    assert cmd[cmd.index("--gpu-memory-utilization") + 1] == "0.8" and cmd[-1] == "--enforce-eager"
    assert "--gpu-memory-utilization" not in vllm.server_command(engine_of(tmp_path, "vllm", {}).settings, 8000)


def test_transformers_dtype_option_is_the_dtype_it_loads_in(tmp_path):
    assert engine_of(tmp_path, "transformers", {"dtype": "float16"}).dtype_name == "float16"
    assert engine_of(tmp_path, "transformers", {"dtype": None}).dtype_name == "float32"  # its CPU default


def test_llama_cpp_pythons_flash_attn_reaches_the_llama_call(tmp_path, monkeypatch):
    from llmbench.engines import llama_cpp_python

    calls = []
    standin = SimpleNamespace(llama_log_callback=lambda f: f, llama_log_set=lambda f, _: None,
                              Llama=lambda **kw: calls.append(kw) or SimpleNamespace(close=lambda: None),
                              LLAMA_SPLIT_MODE_NONE=0)
    monkeypatch.setattr(llama_cpp_python, "import_llama_cpp", lambda lib_dir: standin)
    with engine_of(tmp_path, "llama-cpp-python", {"flash_attn": True}):
        pass
    with engine_of(tmp_path, "llama-cpp-python", {}):
        pass
    assert calls[0]["flash_attn"] is True and "flash_attn" not in calls[1]  # unset: the binding's default


def test_ollamas_num_gpu_reaches_its_job_as_the_layers_not_as_an_option():
    # tools.ollama.num_gpu is the job's n_gpu_layers for a library tag (common.smk's gpu_layers): no second path.
    assert job_options("ollama", {"num_gpu": 20}) == {}
    assert TOOLS["ollama"].options["num_gpu"]["x-via"] == "n_gpu_layers"


def test_a_runners_options_come_as_its_tool_settings(tmp_path):
    j = bench_job(tmp_path, "llama-bench", tmp_path / "m.gguf", tool_settings={"n_prompt": 16, "n_gen": 8})
    assert dict(j.settings.options) == {"n_prompt": 16, "n_gen": 8} == j.tool_settings
