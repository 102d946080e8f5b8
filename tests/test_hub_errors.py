"""The hub's answers to a fetch, each in its own words with its fix (../shared/cases, c313).

A stand-in hub (an HTTP server on 127.0.0.1, given to the product's fetch as its hub endpoint) answers the HEAD
…/resolve/<revision>/<file> and GET that huggingface_hub sends, with scripted answers: the real 429 of case c313
(tests/data/cases/c313_hf_resolve_429.http, its status line and headers as the hub sent them), and answers built
the way the hub marks its errors (X-Error-Code, as huggingface_hub's hf_raise_for_status reads them). Waits are
recorded by an injected ``sleep`` instead of spent; the tries and the cap are the product's defaults.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading

import pytest

from conftest import REPO
from llmbench.modelfiles.fetch import HUB_TRIES, HUB_WAIT_CAP_S, FetchError, fetch_hf_file

CASE = REPO / "tests/data/cases/c313_hf_resolve_429.http"
REPO_ID, FILENAME, COMMIT = "someone/tiny-GGUF", "tiny.Q4_0.gguf", "0123456789abcdef0123456789abcdef01234567"
BODY = b"GGUF stand-in bytes"


def c313_head() -> bytes:
    """The case's status line and headers, with HTTP's CRLF line ends (the notes after the blank line are ours)."""
    head = CASE.read_text().split("\n\n", 1)[0]
    return ("\r\n".join(head.splitlines()) + "\r\n\r\n").encode()


def answer(status: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {http.server.BaseHTTPRequestHandler.responses.get(status, ('',))[0]}",
             "Content-Length: 0", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


FOUND = "found"  # the file itself: HEAD with the hub's metadata headers, GET with its bytes


class StandinHub(http.server.BaseHTTPRequestHandler):
    """Answers each HEAD with the next scripted answer (the last one repeats); records every request."""

    protocol_version = "HTTP/1.1"
    script: list = []
    seen: list = []

    def _found(self, with_body: bool) -> None:
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(BODY).hexdigest()}"')
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        if with_body:
            self.wfile.write(BODY)

    def do_HEAD(self):
        type(self).seen.append(("HEAD", self.path))
        step = self.script[min(len([s for s in self.seen if s[0] == "HEAD"]), len(self.script)) - 1]
        if step == FOUND:
            self._found(False)
        else:
            self.wfile.write(step)

    def do_GET(self):
        type(self).seen.append(("GET", self.path))
        self._found(True)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Start a stand-in hub with a script of answers; returns (endpoint, requests seen)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    servers = []

    def start(*script) -> tuple[str, list]:
        handler = type("Hub", (StandinHub,), {"script": list(script), "seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", handler.seen

    yield start
    for s in servers:
        s.shutdown()


def fetch(tmp_path, endpoint: str, waits: list, **kw) -> dict:
    return fetch_hf_file(REPO_ID, FILENAME, COMMIT, tmp_path / "out" / "Q4_0.gguf", cache_dir=str(tmp_path / "cache"),
                         endpoint=endpoint, sleep=waits.append, **kw)


def test_c313_rate_limited_says_so_and_when_after_bounded_waits(tmp_path, hub):
    endpoint, seen = hub(c313_head())
    waits: list[float] = []
    with pytest.raises(FetchError) as e:
        fetch(tmp_path, endpoint, waits)
    msg = str(e.value)
    assert "rate-limited" in msg and "retry after 183 s" in msg.lower()
    assert "'resolvers' quota of 3000 requests per 300 s is used up" in msg
    assert "reachable" not in msg and "connection" not in msg
    # The hub's wait honoured (t=183, +1 s as huggingface_hub rounds), and no more than the cap allows in all.
    assert waits == [184.0] and sum(waits) <= HUB_WAIT_CAP_S
    assert [m for m, _ in seen] == ["HEAD", "HEAD"] and f"/{REPO_ID}/resolve/{COMMIT}/{FILENAME}" == seen[0][1]
    assert f"after 2 tries and 184 s of waiting (a fetch tries at most {HUB_TRIES} times and waits at most 300 s" in msg


def test_a_rate_limit_longer_than_the_cap_is_not_waited_for(tmp_path, hub):
    endpoint, seen = hub(answer(429, {"RateLimit": '"resolvers";r=0;t=900'}))
    waits: list[float] = []
    with pytest.raises(FetchError, match=r"rate-limited.*Retry after 900 s") as e:
        fetch(tmp_path, endpoint, waits)
    assert waits == [] and len(seen) == 1 and "after 1 try and 0 s" in str(e.value)


def test_the_tries_bound_the_waits_when_the_cap_would_allow_more(tmp_path, hub):
    endpoint, seen = hub(c313_head())
    waits: list[float] = []
    with pytest.raises(FetchError, match="rate-limited"):
        fetch(tmp_path, endpoint, waits, tries=4, wait_cap_s=10_000)
    assert waits == [184.0, 184.0, 184.0] and len(seen) == 4


def test_a_rate_limit_that_lifts_is_waited_out_and_the_file_fetched(tmp_path, hub):
    endpoint, seen = hub(c313_head(), FOUND)
    waits: list[float] = []
    rec = fetch(tmp_path, endpoint, waits)
    assert waits == [184.0] and rec["resolved_commit"] == COMMIT
    assert (tmp_path / "out" / "Q4_0.gguf").read_bytes() == BODY
    assert [m for m, _ in seen] == ["HEAD", "HEAD", "HEAD", "GET"]  # ours twice, then huggingface_hub's own


def test_retry_after_is_honoured_where_the_hub_gives_no_ratelimit(tmp_path, hub):
    endpoint, _ = hub(answer(429, {"Retry-After": "30"}), FOUND)
    waits: list[float] = []
    fetch(tmp_path, endpoint, waits)
    assert waits == [31.0]


@pytest.mark.parametrize("status", [429, 503])
def test_a_retry_after_of_an_hour_is_never_slept(tmp_path, hub, monkeypatch, status):
    import huggingface_hub.utils._http as hub_http

    endpoint, seen = hub(answer(status, {"Retry-After": "3600"}))
    waits: list[float] = []
    # huggingface_hub's own sleeps too: none may wait the hour either.
    monkeypatch.setattr(hub_http.time, "sleep", waits.append)
    with pytest.raises(FetchError) as e:
        fetch(tmp_path, endpoint, waits)
    assert waits == [] and len(seen) == 1 and "after 1 try and 0 s of waiting" in str(e.value)


def test_a_gated_repo_says_accept_the_licence_and_set_hf_token(tmp_path, hub):
    endpoint, seen = hub(answer(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model is restricted"}))
    with pytest.raises(FetchError) as e:
        fetch(tmp_path, endpoint, [])
    msg = str(e.value)
    assert "gated" in msg and "accept its licence" in msg and "HF_TOKEN" in msg
    assert "connection" not in msg and "reachable" not in msg and len(seen) == 1


def test_forbidden_says_the_token_lacks_access(tmp_path, hub):
    endpoint, _ = hub(answer(403, {"X-Error-Message": "Forbidden"}))
    with pytest.raises(FetchError, match=r"HTTP 403.*accept its licence.*HF_TOKEN") as e:
        fetch(tmp_path, endpoint, [])
    assert "connection" not in str(e.value)


@pytest.mark.parametrize(("code", "named"), [
    ("RepoNotFound", f"no repository {REPO_ID}"),
    ("RevisionNotFound", f"no revision '{COMMIT}' of {REPO_ID}"),
    ("EntryNotFound", f"no file '{FILENAME}' in {REPO_ID} at revision '{COMMIT}'"),
])
def test_not_found_names_the_repo_the_revision_or_the_file(tmp_path, hub, code, named):
    endpoint, seen = hub(answer(404, {"X-Error-Code": code}))
    with pytest.raises(FetchError) as e:
        fetch(tmp_path, endpoint, [])
    assert named in str(e.value) and "reachable" not in str(e.value) and len(seen) == 1


def test_a_hub_failing_is_retried_a_bounded_number_of_times_and_named(tmp_path, hub):
    endpoint, seen = hub(answer(503, {"X-Error-Message": "Service Unavailable"}))
    waits: list[float] = []
    with pytest.raises(FetchError) as e:
        fetch(tmp_path, endpoint, waits)
    msg = str(e.value)
    assert "the hub failed" in msg and "HTTP 503" in msg and "reachable" not in msg
    assert waits == [2.0, 4.0] and len(seen) == HUB_TRIES


def test_only_a_connection_that_fails_says_not_reachable(tmp_path, hub, monkeypatch):
    import huggingface_hub.utils._http as hub_http

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    # huggingface_hub's own connection retries (1 + 2 + 4 + 8 + 8 s) are not this test's to wait out.
    monkeypatch.setattr(hub_http.time, "sleep", lambda s: None)
    with pytest.raises(FetchError, match="neither in the hub cache nor reachable"):
        fetch(tmp_path, endpoint, [])
