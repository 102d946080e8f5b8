# A study in one file: `snakemake archive` packs results, figures, tables, provenance and the config, with a
# manifest of sha256, into results/archive/<study>.tar.gz (its top folder inside: <study>-<day measured>).


rule study_config:
    output:
        f"{RESULTS}/config/study.yaml",
    log:
        "logs/study_config.log",
    conda:
        ENV
    params:
        config=canonical_param(config),
    script:
        "../scripts/study_config.py"


rule make_archive:
    input:
        members=[path for _, path in archive_members()],
        runs=results("summary/runs.parquet"),
        code=code("make_archive.py"),
    output:
        ARCHIVE,
    log:
        "logs/make_archive.log",
    conda:
        ENV
    params:
        members=sorted(archive_members()),
        study=config["study"],
    script:
        "../scripts/make_archive.py"


rule archive:
    default_target: False
    input:
        ARCHIVE,
