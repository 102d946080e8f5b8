"""The pip pins and the conda environment for --sdm conda users must name the same versions."""

import re

import yaml

from conftest import REPO


def pin(line: str) -> tuple[str, str]:
    """'name==version [per-requirement options]' → (name, 'version [options]'): options must agree too."""
    requirement, _, options = line.strip().partition(" ")
    name, version = requirement.split("==")
    return name.lower(), " ".join([version, *options.split()])


def pins_from_requirements() -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return dict(pin(line) for line in lines if line)


def test_conda_env_pins_match_requirements():
    env = yaml.safe_load((REPO / "workflow/envs/llmbench.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert dict(pin(p) for p in pip_section) == pins_from_requirements()
    assert "llama-cpp-python" in pins_from_requirements()


def test_every_rule_uses_the_pinned_env_and_logs():
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        # A `use rule ... with:` block keeps its parent's env and may name its own log: its own rule is counted.
        text = re.sub(r"\nuse rule .*?(?=\n\S|\Z)", "", smk.read_text(), flags=re.S)
        # Every rule that runs something (a target rule that only gathers inputs runs nothing).
        running = text.count("script:") + text.count("shell:")
        assert text.count("conda:") == running, smk.name
        assert text.count("log:") == running, smk.name
