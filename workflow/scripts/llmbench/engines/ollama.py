"""Ollama as an engine, through the official client: a running server (OLLAMA_HOST) or one started for the job.

Two kinds of model: a library tag that the server pulls (as the article ran Ollama), or a GGUF file of the study
imported with `ollama create` semantics (the file uploaded as a blob, then a model made FROM it), so that
llama.cpp and Ollama run the identical file.

Prompt cache. The study sends each prompt `repetitions` times in a row and measures every repetition uncached,
as llama-server (``cache_prompt: false``) and vLLM (no prefix caching) are run. Ollama has no switch for it:
its runners always reuse the longest common token prefix of a cache slot (runner/ollamarunner/cache.go
``LoadCacheSlot``; runner.go's completion handler asks for it unconditionally, and older builds' llm/server.go
sent ``"cache_prompt": true`` hard-coded; the per-request ``cache`` option of ollama/ollama#1642 is gone,
ollama/ollama#2023 made caching the default with no way to turn it off). Its final object then counts the
whole prompt in ``prompt_eval_count`` (``numPromptInputs``, counted before the cached part is cut off) while
``prompt_eval_duration`` covers only the part evaluated (ollama/ollama#5371, #16428): 2410 tokens "in" 128 ms.
Unloading the model between repetitions (``keep_alive: 0``) would empty the cache but reload the weights inside
the next measured window; no request option disables the reuse (``num_keep`` only protects tokens at a context
shift; changing ``num_ctx`` reloads the model too). So before every generation that follows another one on the
same server, the backend evicts the cache: a raw prompt of one plain token (``_EVICT``) with the same load
options, which shares no token with the study's prompt but a leading BOS, so the slot is cut back to at most
that one token (``countCommonPrefix``; one cache slot per model with OLLAMA_NUM_PARALLEL=1, Ollama's default).
The bench job evicts in ``before_generation``, before the generation's energy window opens, so its cost (one
forward pass of one token) is measured in no row; a reused BOS makes the prefill rate at most 1/prompt_tokens
high.

What the row says: on a server the job started (with OLLAMA_NUM_PARALLEL=1: one slot, so the eviction is
certain) ``prefill_cached`` is False and the prefill rate is Ollama's count over its duration. On a server at
OLLAMA_HOST the number of slots is unknown (with several, the eviction may reach another slot than the one that
holds the prompt): ``prefill_cached`` is None and no prefill rate is computed; likewise a parsed answer whose
cache state the caller does not know. Where the prompt was served from cache (True), the evaluated token count
is unknown: ``prefill_tokens`` and the rate are null, ``prompt_tokens`` stays Ollama's count of the whole prompt.
A count or duration Ollama leaves out (its fields are ``omitempty``: ``prompt_eval_count`` disappears when 0,
ollama/ollama#2068) is null, never 0.

Reasoning models: Ollama returns the thinking in ``message.thinking``, apart from the answer in
``message.content``; the answer scored for accuracy is the content alone. ``eval_count`` counts thinking and
answer tokens together and Ollama gives no split, so reasoning tokens are not known (null). The request is not
streamed (``stream=False``): there is no time to first token (``ttft_ms`` null), and the GPU energy is not split
into prefill and decode. Its deadline is the whole answer's (bench.request_timeout_s from the request's start, as
for the streamed engines, openai_stream.Deadline): the client's timeout is per read, which an answer trickling in
byte by byte never reaches; past the deadline the generation raises RequestTimedOut (kind timed_out).

What was loaded. A library tag is a moving name: Ollama's library re-points it to other files (``llama3.1:8b`` was
Q4_0 in 2024 and is Q4_K_M since, ollama/ollama#1543), so the config's quant label for a tag says what someone
expected, not what runs. After the model is there the backend asks /api/show what it holds (``general.file_type``
of its GGUF, read through gguf's LlamaFileType, and ``details.quantization_level``) and which file it is (the
Modelfile's ``FROM …/blobs/sha256-…``), and /api/tags the name's manifest digest (what ``ollama list`` shows); the
engine facts carry them (``loaded_quant``, ``loaded_quant_from``, ``model_digest``, ``manifest_digest``), and the
rows compare the label with ``loaded_quant`` (runs.loaded_quant_note). A GGUF of the study imported into Ollama
answers with its own header's file type and its own sha256, so its label agrees as its file does.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gguf import LlamaFileType

from llmbench.core.quants import file_type_names
from llmbench.engines.base import Engine, EngineError, EngineSettings, Generation, ToolUnavailable, engine_failure
from llmbench.engines.diagnosis import EXITED, diagnose
from llmbench.engines.openai_stream import Deadline, request_timed_out
from llmbench.engines.process import DIAGNOSIS_LINES, ServerProcess
from llmbench.modelfiles.models import split_count

NS_PER_MS = 1e6


# The prompt of the eviction request: one plain token after the BOS, sent raw (no chat template), so that it
# shares no token with a study prompt but the BOS; "!" where a prompt itself starts with "~".
_EVICT = "~"


def _count(value) -> int | None:
    return int(value) if value is not None else None


def parse_chat(r, wall_ms: float, *, prefill_cached: bool | None = None) -> Generation:
    """An /api/chat answer (non-streaming) → Generation; durations are nanoseconds, counts are Ollama's.

    ``prefill_cached``: False where the caller evicted Ollama's prompt cache before the request (the prompt was
    evaluated whole: the prefill rate stands), True where it was served from cache, None where not known; only
    False gives prefill tokens and a prefill rate. A count or duration the answer leaves out is None.
    """
    get = r.get if isinstance(r, dict) else lambda k, d=None: getattr(r, k, d)
    if not get("done"):
        raise EngineError(f"Ollama answered an unfinished generation: {str(r)[:300]}")
    prompt_n, gen_n = _count(get("prompt_eval_count")), _count(get("eval_count"))
    prompt_ns, gen_ns = get("prompt_eval_duration"), get("eval_duration")
    message = get("message") or {}
    # A reasoning model's thinking comes in message.thinking: the answer is the content alone.
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
    whole = prefill_cached is False
    return Generation(
        prompt_tokens=prompt_n,
        prefill_tokens=prompt_n if whole else None,
        generated_tokens=gen_n,
        prefill_ms=prompt_ns / NS_PER_MS if prompt_ns is not None else None,
        decode_ms=gen_ns / NS_PER_MS if gen_ns is not None else None,
        prefill_tokens_per_s=prompt_n / prompt_ns * 1e9 if whole and prompt_ns and prompt_n else None,
        decode_tokens_per_s=gen_n / gen_ns * 1e9 if gen_ns and gen_n else None,
        wall_ms=wall_ms,
        finish_reason=get("done_reason"),
        text=content or "",
        prefill_cached=prefill_cached,
    )


# The Modelfile /api/show writes names the weights as a blob file: FROM <models>/blobs/sha256-<hex>.
_FROM_BLOB = re.compile(r"^FROM\s+\S*sha256[-:](?P<hex>[0-9a-f]{64})\s*$", re.MULTILINE)
# What Ollama writes as quantization_level where the file type is none it names (its FileType.String()).
_UNNAMED = ("", "unknown")


def file_type_name(file_type: int | None) -> str | None:
    """A GGUF ``general.file_type`` as the study spells quant labels: gguf's LlamaFileType name without its
    ``MOSTLY_``/``ALL_`` prefix (15 -> Q4_K_M, 0 -> F32); None for no number or one the pinned gguf does not know.
    llama.cpp's "guessed" bit (LlamaFileType.GUESSED, 1024) is not part of the type."""
    member = _file_type(file_type)
    names = file_type_names([member.name]) if member is not None else []
    return names[0] if names else None


def _file_type(file_type: int | None) -> LlamaFileType | None:
    if file_type is None or isinstance(file_type, bool):
        return None
    try:
        return LlamaFileType(int(file_type) & ~LlamaFileType.GUESSED)
    except ValueError:
        return None


@dataclass(frozen=True)
class LoadedModel:
    """What Ollama holds under a model name, by its /api/show and /api/tags.

    ``quant`` is the type the study would label it (file_type_name of ``file_type``, else Ollama's
    ``quantization_level`` where that names one), None where neither says; ``weights_digest`` the sha256 of the GGUF
    blob the Modelfile's FROM names ("sha256:<hex>": a study's GGUF imported has its own file's sha256 here);
    ``manifest_digest`` the name's manifest digest in /api/tags, which moves when the library re-points a tag
    (ollama/ollama#1543).
    """

    name: str
    quant: str | None
    file_type: int | None
    quantization_level: str | None
    weights_digest: str | None
    manifest_digest: str | None

    def described(self) -> str:
        """Where ``quant`` comes from, for a row's note: "general.file_type 15 = MOSTLY_Q4_K_M, quantization_level …"."""
        parts = []
        if self.file_type is not None:
            member = _file_type(self.file_type)
            parts.append(f"general.file_type {self.file_type} = "
                         f"{member.name if member is not None else 'a type the pinned gguf does not know'}")
        if self.quantization_level is not None:
            parts.append(f"quantization_level {self.quantization_level}")
        if self.weights_digest:
            parts.append(f"weights {self.weights_digest}")
        return ", ".join(parts)


def loaded_model(name: str, show, tags=None) -> LoadedModel:
    """What /api/show (``show``: its JSON or the client's ShowResponse) and /api/tags (``tags``, optional) say
    ``name`` holds. The file type is the number in ``model_info`` read through gguf's LlamaFileType, not Ollama's
    own name table; ``quantization_level`` stands in only where the number is absent or unknown to gguf."""
    show = _plain(show)
    details = show.get("details") or {}
    file_type = (show.get("model_info") or show.get("modelinfo") or {}).get("general.file_type")
    level = details.get("quantization_level")
    quant = file_type_name(file_type) or (level.upper() if level and level.lower() not in _UNNAMED else None)
    blob = _FROM_BLOB.search(show.get("modelfile") or "")
    return LoadedModel(name=name, quant=quant, file_type=int(file_type) if file_type is not None else None,
                       quantization_level=level, weights_digest=f"sha256:{blob['hex']}" if blob else None,
                       manifest_digest=_manifest_digest(name, _plain(tags) if tags is not None else {}))


def _plain(r) -> dict:
    """An answer of the official client (pydantic models) or its JSON, as plain JSON names (model_info)."""
    return dict(r) if isinstance(r, Mapping) else r.model_dump(by_alias=True, exclude_none=True)


def _manifest_digest(name: str, tags: dict) -> str | None:
    # Ollama lists a name given without a tag under ":latest".
    wanted = {name, f"{name}:latest"} if ":" not in name else {name}
    for m in tags.get("models") or []:
        if (m.get("model") or m.get("name")) in wanted and m.get("digest"):
            return m["digest"] if ":" in m["digest"] else f"sha256:{m['digest']}"
    return None


class Ollama(Engine):
    tool = "ollama"

    def __init__(
        self,
        tag: str,
        log_path: Path,
        *,
        num_gpu: int | None = None,
        num_thread: int | None = None,
        num_ctx: int | None = None,
        host: str | None = None,
        start_timeout_s: float = 120.0,
        request_timeout_s: float = 900.0,
        gguf: Path | None = None,
        num_parallel: int = 1,
    ):
        self.tag = tag
        self.gguf = Path(gguf) if gguf is not None else None
        self.log_path = Path(log_path)
        self.options = {k: v for k, v in {"num_gpu": num_gpu, "num_thread": num_thread, "num_ctx": num_ctx}.items()
                        if v is not None}
        self.host = host if host is not None else os.environ.get("OLLAMA_HOST")
        self.start_timeout_s = start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.server = ServerProcess("`ollama serve`", self.log_path)
        self.num_parallel = num_parallel  # OLLAMA_NUM_PARALLEL of a server the job starts: the load level
        self.started_server = False
        self.client = None
        self.version: str | None = None
        # A server this job started has one prompt cache slot (OLLAMA_NUM_PARALLEL=1): evicting it is certain.
        self.one_cache_slot = False
        self._cache_holds_prompt = False
        self.loaded: LoadedModel | None = None  # what the server holds under ``tag``, once started
        self.loaded_unknown: str | None = None  # why that could not be read, where it could not
        self._request = threading.local()  # the deadline of the generation this thread is waiting on

    @classmethod
    def from_settings(cls, s: EngineSettings, log_path: Path) -> Ollama:
        # Ollama fits layers to free memory itself when num_gpu is unset: that is its "auto".
        return cls(s.tag, log_path, num_gpu=None if s.n_gpu_layers == "auto" else s.n_gpu_layers,
                   num_thread=s.threads, num_ctx=s.ctx_size, start_timeout_s=s.start_timeout_s,
                   request_timeout_s=s.request_timeout_s, gguf=s.model, num_parallel=s.concurrency)

    def start(self) -> None:
        if self.gguf is not None and self.gguf.is_file() and (shards := split_count(self.gguf)) > 1:
            raise ToolUnavailable(
                f"the import into Ollama takes one GGUF file and Ollama's create does not take a split GGUF "
                f"(ollama/ollama#5245); {self.gguf.name} is the first of {shards} shards"
            )
        import ollama

        try:
            if self.host:
                self.client = ollama.Client(host=self.host, timeout=self.request_timeout_s,
                                            event_hooks={"response": [self._arm_deadline]})
                self._connect()
            else:
                self._start_server(ollama)
            self._ensure_model()
            self.loaded = self._loaded_model()
        except BaseException:
            self.stop()
            raise
        # A server at OLLAMA_HOST may hold an earlier prompt of this model in its cache.
        self._cache_holds_prompt = not self.started_server

    def _start_server(self, ollama) -> None:
        """`ollama serve` of the job's own, with one cache slot per concurrent request (OLLAMA_NUM_PARALLEL)."""
        binary = shutil.which("ollama")
        if binary is None:
            raise ToolUnavailable(
                "Ollama is not installed here: OLLAMA_HOST is unset and no `ollama` binary is on PATH "
                "(install it from ollama.com, or point OLLAMA_HOST at a running server)"
            )

        def answers() -> bool:
            self.client = ollama.Client(host=f"127.0.0.1:{self.server.port}", timeout=self.request_timeout_s,
                                        event_hooks={"response": [self._arm_deadline]})
            try:
                self._connect()
            except EngineError:
                return False
            return True

        self.server.start(lambda port: [binary, "serve"], self.start_timeout_s, failed=self._failure,
                          loading="its model list", healthy=answers,
                          env=lambda port: {"OLLAMA_HOST": f"127.0.0.1:{port}",
                                            "OLLAMA_NUM_PARALLEL": str(self.num_parallel)})
        # With one slot the eviction before each generation is certain; with several it may reach another slot.
        self.host, self.started_server = f"127.0.0.1:{self.server.port}", True
        self.one_cache_slot = self.num_parallel == 1

    def _connect(self) -> None:
        """The server's version, which also proves it answers."""
        try:
            self.version = self.client._client.get("/api/version").json().get("version")
        except Exception as e:  # httpx's connection errors
            raise EngineError(
                f"no Ollama server answers at {self.host or self.client._client.base_url} ({e}). Start one with "
                "`ollama serve`, or unset OLLAMA_HOST so the job starts its own."
            ) from None

    def _failure(self, code: int, when: str) -> Exception:
        found = diagnose("`ollama serve`", code, self.server.log_tail(DIAGNOSIS_LINES))
        return engine_failure(dataclasses.replace(found, reason=f"{found.reason} ({when}; log {self.log_path})"))

    def _ensure_model(self) -> None:
        import ollama

        if self.gguf is not None:
            self._import_gguf()
            return
        try:
            self.client.show(self.tag)
        except ollama.ResponseError as e:
            if e.status_code != 404:
                raise EngineError(f"Ollama could not show {self.tag!r}: {e}") from None
            try:
                self.client.pull(self.tag)
            except ollama.ResponseError as pull_error:
                raise EngineError(
                    f"Ollama could not pull {self.tag!r}: {pull_error}. Check the tag in the config "
                    "(source.tag) and that the server can reach its registry."
                ) from None

    def _loaded_model(self) -> LoadedModel | None:
        """What the server holds under the tag now: /api/show, and /api/tags for the manifest digest; read as the
        JSON the server sent, since the client's models require fields that other server versions leave out. A
        server that does not answer them still generates: its rows are then not checked against the label, and
        the engine facts say why (``loaded_quant_unknown``), rather than the measurement being lost."""
        http = self.client._client
        show = http.post("/api/show", json={"model": self.tag})
        if show.status_code != 200:
            self.loaded_unknown = (f"Ollama's /api/show of {self.tag!r} answered HTTP {show.status_code} after "
                                   f"loading it: {show.text[:300]}")
            return None
        tags = http.get("/api/tags")
        return loaded_model(self.tag, show.json(), tags.json() if tags.status_code == 200 else None)

    def _import_gguf(self) -> None:
        """What `ollama create TAG -f Modelfile` with `FROM <file>` does: upload the blob, create the model."""
        import ollama

        if not self.gguf.exists():
            raise EngineError(f"model file {self.gguf} does not exist; run the workflow so it is fetched or derived")
        try:
            digest = self.client.create_blob(self.gguf)
            self.client.create(model=self.tag, files={self.gguf.name: digest})
        except ollama.ResponseError as e:
            raise EngineError(f"Ollama could not import {self.gguf} as {self.tag!r}: {e}") from None

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        import httpx
        import ollama

        deadline = None
        try:
            if self._cache_holds_prompt:  # a caller that did not call before_generation (warm-up, accuracy)
                self.evict_prompt_cache(prompt)
            t0 = time.perf_counter()
            # Armed by _arm_deadline once the answer's headers come, on its connection.
            self._request.deadline = deadline = Deadline(self.request_timeout_s)
            r = self.client.chat(
                model=self.tag,
                messages=[{"role": "user", "content": prompt}],
                options={"temperature": temperature, "seed": seed, "num_predict": max_tokens, **self.options},
                stream=False,
                keep_alive="10m",
            )
        except ollama.ResponseError as e:
            # Ollama answers its runner's failures as HTTP 500 with llama.cpp's or its own words (out of GPU or
            # host memory, a killed runner): diagnosed as the llama.cpp engines' are.
            found = diagnose("Ollama", None, e.error, self.gguf)
            if found.kind == EXITED:
                found = dataclasses.replace(
                    found, reason=f"Ollama failed to generate with {self.tag!r} (HTTP {e.status_code}): {e.error}")
            raise engine_failure(found) from None
        except Exception as e:  # httpx connection errors: the server went away, or the deadline cut the answer
            if isinstance(e, httpx.TimeoutException) or (deadline is not None and deadline.expired):
                raise request_timed_out("Ollama", self.request_timeout_s, self.log_path) from None
            raise EngineError(f"Ollama at {self.host} stopped answering: {e}") from None
        finally:
            self._request.deadline = None
            if deadline is not None:
                deadline.cancel()
        wall_ms = (time.perf_counter() - t0) * 1000
        self._cache_holds_prompt = True
        return parse_chat(r, wall_ms, prefill_cached=False if self.one_cache_slot else None)

    def _arm_deadline(self, response) -> None:
        """httpx's response hook (the headers came, the body is not read yet): the deadline of the generation this
        thread waits on, if any, is armed on the connection its answer comes on."""
        deadline = getattr(self._request, "deadline", None)
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if deadline is not None and sock is not None:
            deadline.watch(sock.fileno())

    def before_generation(self, prompt: str) -> None:
        """Evict the prompt cache before the measurement window opens, so that the eviction is not measured."""
        import ollama

        if self._cache_holds_prompt:
            try:
                self.evict_prompt_cache(prompt)
            except ollama.ResponseError as e:
                raise EngineError(f"Ollama could not evict its prompt cache with {self.tag!r}: {e}") from None

    def evict_prompt_cache(self, prompt: str) -> None:
        """Cut Ollama's prompt cache back to (at most) the BOS, so that ``prompt`` is evaluated whole: a raw
        one-token prompt with the load options of the generations (other ones would reload the model)."""
        self.client.generate(
            model=self.tag,
            prompt="!" if prompt.startswith(_EVICT) else _EVICT,
            raw=True,
            options={**self.options, "temperature": 0.0, "seed": 0, "num_predict": 1},
            stream=False,
            keep_alive="10m",
        )
        self._cache_holds_prompt = False

    def facts(self) -> dict:
        """Offload as Ollama reports it (/api/ps): bytes of the model in VRAM over its size; and what it loaded
        (LoadedModel, from /api/show and /api/tags): ``loaded_quant`` with where it comes from
        (``loaded_quant_from``, the fix included, for the note of a row whose label differs), ``model_digest``
        (sha256 of the weights) and ``manifest_digest``."""
        running = [m for m in self.client.ps().models if (m.model or m.name) == self.tag]
        size = running[0].size if running else None
        vram = running[0].size_vram if running else None
        return {
            "engine_build": self.version,
            "num_gpu": self.options.get("num_gpu"),
            "size_bytes": int(size) if size is not None else None,
            "size_vram_bytes": int(vram) if vram is not None else None,
            "vram_fraction": (int(vram) / int(size)) if size else None,
            **self._loaded_facts(),
        }

    def _loaded_facts(self) -> dict:
        m = self.loaded
        if m is None:
            return {"loaded_quant": None, "loaded_quant_unknown": self.loaded_unknown}
        if self.gguf is not None:
            why = (f"Ollama's {m.name}, imported from {self.gguf.name}, is {m.quant} by its /api/show "
                   f"({m.described()}), which reads the file's own header: label the file {m.quant}")
        else:
            why = (f"Ollama's {m.name} is {m.quant} by its /api/show ({m.described()}); a library tag is a moving "
                   f"name that the library re-points to other files (ollama/ollama#1543): label it {m.quant}, or "
                   "run a tag that names its quant")
        return {"loaded_quant": m.quant, "loaded_quant_from": why if m.quant else None,
                "quantization_level": m.quantization_level, "file_type": m.file_type,
                "model_digest": m.weights_digest, "manifest_digest": m.manifest_digest}

    def peak_rss_bytes(self) -> int | None:
        # The model lives in a runner process that `ollama serve` spawns, not in a process of ours.
        return None

    def stop(self) -> None:
        self.server.stop()
