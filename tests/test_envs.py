"""The pip pins and the conda environment for --sdm conda users must name the same versions."""

import yaml

from conftest import REPO


def pins_from_requirements() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_conda_env_pins_match_requirements():
    env = yaml.safe_load((REPO / "workflow/envs/llmbench.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = dict(p.lower().split("==") for p in pip_section)
    assert conda_pins == pins_from_requirements()


def test_every_rule_uses_the_pinned_env_and_logs():
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        text = smk.read_text()
        rules = text.count("\nrule ") + text.startswith("rule ")
        assert text.count("conda:") == rules, smk.name
        assert text.count("log:") == rules, smk.name
