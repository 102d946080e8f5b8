"""Credentials recognised by their shape in free text: refused in a study config, redacted wherever text is written.

A key's name (llmbench.study.provenance.looks_secret) or an environment variable's value catches a secret the workflow
knows about; a token pasted into a note or a URL has neither, so it is recognised by the shape its issuer gives it.
Shapes, from each issuer's documentation of its token format:

- Hugging Face user access token: ``hf_`` and 34 letters/digits (30 or more are taken);
- OpenAI API key: ``sk-``, ``sk-proj-``, ``sk-svcacct-`` or ``sk-admin-`` and 20 or more characters (an
  Anthropic ``sk-ant-`` key has the same shape);
- AWS access key id: ``AKIA`` (long-term) or ``ASIA`` (temporary) and 16 upper-case letters/digits;
- GitHub token: ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_`` and 36 letters/digits, or ``github_pat_`` and 22 or more;
- Google API key: ``AIza`` and 35 characters;
- Slack token: ``xoxb-``, ``xoxa-``, ``xoxp-``, ``xoxr-``, ``xoxs-`` and 10 or more characters;
- an HTTP ``Bearer`` credential of 16 or more characters;
- a URL's password (``scheme://user:password@host``) and a URL query parameter that carries a credential
  (``token``, ``access_token``, ``key``, ``api_key``, ``apikey``, ``secret``, ``password``, ``sig``) of 8 or more
  characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """One kind of credential: ``kind`` names it in a redaction (``[redacted:kind]``), ``what`` in a sentence,
    ``fix`` says where it belongs instead. The pattern's group ``secret``, where it has one, is the part redacted
    (a URL keeps its host, a Bearer header its scheme); otherwise the whole match is."""

    kind: str
    what: str
    pattern: re.Pattern[str]
    fix: str


_ENV = "put it in the environment variable {} where the tool that needs it reads it, never in the config"
# Each lookbehind keeps a shape from starting inside a longer word ("task-..." holds no OpenAI key); a value
# already redacted ("?token=[redacted:HF_TOKEN]", by provenance.redact) keeps the name that says what it was.
SHAPES: tuple[Shape, ...] = (
    Shape("hf-token", "a Hugging Face access token", re.compile(r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}"),
          _ENV.format("HF_TOKEN")),
    Shape("openai-key", "an OpenAI-style API key (sk-...)",
          re.compile(r"(?<![A-Za-z0-9_-])sk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}"),
          _ENV.format("OPENAI_API_KEY (or your provider's)")),
    Shape("aws-key", "an AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![0-9A-Z])"),
          _ENV.format("AWS_ACCESS_KEY_ID (or ~/.aws/credentials)")),
    Shape("github-token", "a GitHub token",
          re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
          _ENV.format("GH_TOKEN")),
    Shape("google-key", "a Google API key", re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}"),
          _ENV.format("GOOGLE_API_KEY")),
    Shape("slack-token", "a Slack token", re.compile(r"(?<![A-Za-z0-9])xox[baprs]-[A-Za-z0-9-]{10,}"),
          _ENV.format("SLACK_TOKEN")),
    Shape("bearer", "an HTTP Bearer credential", re.compile(r"(?i:\bbearer)\s+(?P<secret>[A-Za-z0-9._~+/=-]{16,})"),
          "drop it: no key of the config is sent as an HTTP header"),
    Shape("url-password", "a password in a URL (user:password@ before the host)",
          re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]+:(?!\[redacted:)(?P<secret>[^/\s@]+)@"),
          "drop user:password@ from the URL: the workflow never logs in with credentials from the config"),
    Shape("url-credential", "a credential in a URL's query (?token=, key=, api_key=, ...)",
          re.compile(r"[?&](?i:token|access_token|api_key|apikey|key|secret|password|sig)=(?!\[redacted:)(?P<secret>[^&#\s]{8,})"),
          "drop that query parameter from the URL: write the page's address without it"),
)


def find_secrets(text: str) -> list[Shape]:
    """The shapes of credential found in ``text``, each once, in the order of SHAPES (empty: none found)."""
    return [s for s in SHAPES if s.pattern.search(text)]


def redact_text(text: str) -> str:
    """``text`` with every credential of a known shape replaced by ``[redacted:KIND]`` (KIND: the shape's kind)."""
    for shape in SHAPES:
        def replace(m: re.Match[str], kind: str = shape.kind) -> str:
            if "secret" not in m.re.groupindex:
                return f"[redacted:{kind}]"
            start, end = m.span("secret")
            return m.string[m.start():start] + f"[redacted:{kind}]" + m.string[end:m.end()]

        text = shape.pattern.sub(replace, text)
    return text
