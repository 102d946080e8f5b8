"""Credentials pasted into a config: refused at parse time by key and kind, redacted wherever config text is written.

Every token below is made up in its issuer's shape; none is real.
"""

import copy

import pytest
import yaml
from study_config import config_text

from llmbench.core.secrets import SHAPES, find_secrets, redact_text
from llmbench.outputs.archive import build_archive
from llmbench.study.configcheck import ConfigError, validate_config
from llmbench.study.provenance import redact

# kind → (a text holding a made-up credential of that shape, the credential's part that must not survive)
SAMPLES = {
    "hf-token": ("price page, token hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567"),
    "openai-key": ("key sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34", "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34"),
    "aws-key": ("AKIAIOSFODNN7EXAMPLE was the key", "AKIAIOSFODNN7EXAMPLE"),
    "github-token": ("ghp_0123456789abcdefABCDEF0123456789abcd", "ghp_0123456789abcdefABCDEF0123456789abcd"),
    "google-key": ("AIzaSyA-0123456789abcdefghijklmnopqrstu", "AIzaSyA-0123456789abcdefghijklmnopqrstu"),
    "slack-token": ("xoxb-123456789012-abcdefghij", "xoxb-123456789012-abcdefghij"),
    "bearer": ("header Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9.payload"),
    "url-password": ("https://alice:s3cretPassw0rd@prices.example.com/gpu", "s3cretPassw0rd"),
    "url-credential": ("https://prices.example.com/api?region=eu&api_key=Zx9Yw8Vu7Ts6", "Zx9Yw8Vu7Ts6"),
}
# What each refusal must say besides the key: the kind in words and where it belongs instead.
WORDS = {
    "hf-token": ("a Hugging Face access token", "HF_TOKEN"),
    "openai-key": ("an OpenAI-style API key", "OPENAI_API_KEY"),
    "aws-key": ("an AWS access key id", "AWS_ACCESS_KEY_ID"),
    "github-token": ("a GitHub token", "GH_TOKEN"),
    "google-key": ("a Google API key", "GOOGLE_API_KEY"),
    "slack-token": ("a Slack token", "SLACK_TOKEN"),
    "bearer": ("an HTTP Bearer credential", "no key of the config is sent as an HTTP header"),
    "url-password": ("a password in a URL", "drop user:password@ from the URL"),
    "url-credential": ("a credential in a URL's query", "drop that query parameter"),
}


def test_every_shape_has_a_sample_and_words():
    assert set(SAMPLES) == set(WORDS) == {s.kind for s in SHAPES}


@pytest.mark.parametrize("kind", SAMPLES)
def test_each_shape_is_found_and_redacted(kind):
    text, secret = SAMPLES[kind]
    assert [s.kind for s in find_secrets(text)] == [kind]
    out = redact_text(text)
    assert secret not in out and f"[redacted:{kind}]" in out
    assert find_secrets(out) == []


def test_redaction_keeps_the_url_and_the_scheme_around_the_secret():
    assert redact_text(SAMPLES["url-password"][0]) == "https://alice:[redacted:url-password]@prices.example.com/gpu"
    assert redact_text(SAMPLES["url-credential"][0]) == ("https://prices.example.com/api?region=eu&"
                                                         "api_key=[redacted:url-credential]")
    assert redact_text("Bearer abcdefghijklmnop1234") == "Bearer [redacted:bearer]"


@pytest.mark.parametrize("text", [
    "Texas average residential price used by the article (Corwin & Davalos, 2024)",
    "OpenAI API pricing for gpt-4o-2024-08-06 (the article quoted $5 per 1M tokens)",
    "https://openai.com/api/pricing/?rev=main&lang=en",
    "https://huggingface.co/QuantFactory/Meta-Llama-3.1-8B-Instruct-GGUF",
    "hf_short", "task-0123456789abcdefghijklmnop", "max_tokens", "a" * 64, "AKIA too short",
    "the key=value format", "https://host/?key=short",
])
def test_ordinary_text_is_no_secret(text):
    assert find_secrets(text) == [] and redact_text(text) == text


@pytest.mark.parametrize("kind", SAMPLES)
def test_a_secret_in_a_config_note_is_refused_naming_key_and_kind_never_the_value(default_config, schema, kind):
    text, secret = SAMPLES[kind]
    default_config["costs"]["electricity_note"] = text
    with pytest.raises(ConfigError) as err:
        validate_config(default_config, schema)
    msg = str(err.value)
    what, fix = WORDS[kind]
    assert f"costs.electricity_note holds what looks like {what}" in msg and "the value is not repeated here" in msg
    assert fix in msg and secret not in msg


@pytest.mark.parametrize("where, put", [
    ("costs.cloud[0].source", lambda c, s: c["costs"]["cloud"][0].__setitem__("source", s)),
    ("bench.prompts[1].text", lambda c, s: c["bench"]["prompts"][1].__setitem__("text", s)),
    ("models.smollm2-135m.description", lambda c, s: c["models"]["smollm2-135m"].__setitem__("description", s)),
], ids=["cloud-source-url", "prompt", "model-description"])
def test_a_secret_anywhere_in_the_config_is_refused(default_config, schema, where, put):
    put(default_config, SAMPLES["url-credential"][0])
    with pytest.raises(ConfigError) as err:
        validate_config(default_config, schema)
    assert f"{where} holds what looks like a credential in a URL's query" in str(err.value)


def test_a_secret_beside_a_schema_error_is_not_quoted_by_it(default_config, schema):
    # The schema's message quotes the value it refuses (as_of must be a date): the token must not reach the log.
    token = SAMPLES["hf-token"][1]
    default_config["costs"]["cloud"][0]["as_of"] = token
    with pytest.raises(ConfigError) as err:
        validate_config(default_config, schema)
    msg = str(err.value)
    assert token not in msg and "costs.cloud[0].as_of" in msg and "[redacted:hf-token]" in msg


def secret_config(default_config) -> dict:
    cfg = copy.deepcopy(default_config)
    cfg["costs"]["electricity_note"] = SAMPLES["hf-token"][0]
    cfg["costs"]["cloud"][0]["source"] = SAMPLES["url-credential"][0]
    cfg["models"]["smollm2-135m"]["description"] = SAMPLES["url-password"][0]
    return cfg


def test_study_yaml_holds_no_secret_from_a_note_or_url(default_config, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    text = config_text(secret_config(default_config))
    for kind in ("hf-token", "url-credential", "url-password"):
        assert SAMPLES[kind][1] not in text and f"[redacted:{kind}]" in text
    assert yaml.safe_load(text)["bench"]["ctx_size"] == default_config["bench"]["ctx_size"]  # the rest as it was


def test_provenance_redact_removes_token_shapes_and_keeps_env_names():
    env = {"HF_TOKEN": "hf_envtoken_0123456789"}
    out = redact({"note": SAMPLES["openai-key"][0], "url": "https://h/x?token=hf_envtoken_0123456789",
                  "max_tokens": 64}, environ=env)
    assert out == {"note": "key [redacted:openai-key]", "url": "https://h/x?token=[redacted:HF_TOKEN]",
                   "max_tokens": 64}


def test_the_archive_refuses_a_config_copy_that_holds_a_token(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(f"costs:\n  electricity_note: {SAMPLES['github-token'][0]}\n")
    with pytest.raises(ValueError) as err:
        build_archive({"results/config/study.yaml": study}, tmp_path / "a.tar.gz", "s")
    msg = str(err.value)
    assert "results/config/study.yaml holds a GitHub token" in msg and "GH_TOKEN" in msg
    assert SAMPLES["github-token"][1] not in msg and not (tmp_path / "a.tar.gz").exists()


def test_the_archive_takes_a_token_shape_in_a_member_that_is_no_config_copy(tmp_path):
    # A model may well write "sk-..." in an answer; only the config's copies are held to the shapes.
    answers = tmp_path / "answers.md"
    answers.write_text(f"the model wrote {SAMPLES['openai-key'][1]}\n")
    assert build_archive({"results/tables/answers.md": answers}, tmp_path / "a.tar.gz", "s").exists()
