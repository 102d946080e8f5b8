"""llama-cpp-python as an engine: the engine runs in this process, on the project's own llama.cpp build."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from llmbench.engines.base import Engine, EngineError, EngineSettings, Generation, ToolUnavailable, engine_failure
from llmbench.engines.diagnosis import EXITED, diagnose
from llmbench.engines.llama_log import AUTO, Offload, check_offload, parse_offload
from llmbench.engines.process import peak_rss_bytes

SPLIT_MODES = {"none": "LLAMA_SPLIT_MODE_NONE", "layer": "LLAMA_SPLIT_MODE_LAYER", "row": "LLAMA_SPLIT_MODE_ROW",
               "tensor": "LLAMA_SPLIT_MODE_TENSOR"}
INSTALL_HINT = "`pip install -r requirements.txt` (its pin builds no llama.cpp of its own: it runs this workflow's build)"


def import_llama_cpp(lib_dir: Path) -> ModuleType:
    """Import the binding on ``lib_dir/libllama.so``: it loads its library at import, once per process."""
    lib = Path(lib_dir).absolute() / "libllama.so"
    loaded = sys.modules.get("llama_cpp.llama_cpp")
    if loaded is not None:
        if Path(loaded._lib._name).resolve() != lib.resolve():
            raise EngineError(
                f"llama_cpp is already loaded from {loaded._lib._name} in this process and a library cannot be "
                f"swapped in one process; run {lib} in a process of its own"
            )
        return sys.modules["llama_cpp"]
    if not lib.exists():
        raise EngineError(f"{lib.parent} has no libllama.so; build llama.cpp first (rule build_llama_cpp)")
    # Read at import by llama_cpp/llama_cpp.py; without it the binding would look for a library of its own.
    os.environ["LLAMA_CPP_LIB_PATH"] = str(lib.parent)
    try:
        import llama_cpp
    except ImportError as e:
        raise ToolUnavailable(f"llama-cpp-python is not installed here ({e}): install it with {INSTALL_HINT}") from None
    except (OSError, RuntimeError) as e:
        raise EngineError(f"llama-cpp-python could not load {lib}: {e}") from None
    return llama_cpp


class LlamaCppPython(Engine):
    tool = "llama-cpp-python"

    def __init__(self, model: Path, lib_dir: Path, *, n_gpu_layers: int | str = 0, split_mode: str = "none",
                 threads: int = 1, ctx_size: int = 2048, seed: int = 0,
                 tensor_split: tuple[float, ...] | None = None, log_path: Path | None = None,
                 flash_attn: bool | None = None):
        if split_mode not in SPLIT_MODES:
            raise ValueError(f"split_mode {split_mode!r} is not one of {sorted(SPLIT_MODES)}")
        check_offload(n_gpu_layers)
        self.model, self.lib_dir = Path(model), Path(lib_dir)
        self.n_gpu_layers, self.split_mode, self.threads = n_gpu_layers, split_mode, threads
        self.ctx_size, self.seed, self.tensor_split = ctx_size, seed, tensor_split
        self.flash_attn = flash_attn  # None: the binding's default (off in 0.3.36)
        # llama.cpp's log of the load (it runs in this process): the offload and any failed allocation.
        self.log_path = Path(log_path) if log_path else None
        self.llm = None
        self.load_ms: float | None = None
        self.fitted_layers: int | None = None  # what "auto" resolved to
        self.offload = Offload(None, None, "not loaded")
        self._lc: ModuleType | None = None

    @classmethod
    def from_settings(cls, s: EngineSettings, log_path: Path) -> LlamaCppPython:
        return cls(s.model, s.build_dir / "bin", n_gpu_layers=s.n_gpu_layers, split_mode=s.split, threads=s.threads,
                   ctx_size=s.ctx_size, seed=s.seed, tensor_split=s.tensor_split, log_path=log_path,
                   flash_attn=s.options.get("flash_attn"))

    def start(self) -> None:
        lc = import_llama_cpp(self.lib_dir)
        if not self.model.exists():
            raise EngineError(f"model file {self.model} does not exist")
        layers = self.n_gpu_layers if self.n_gpu_layers != AUTO else self._fit_layers(lc)
        t0 = time.perf_counter()
        with _llama_log(lc) as lines:
            try:
                self.llm = lc.Llama(
                    model_path=str(self.model), n_gpu_layers=layers,
                    split_mode=getattr(lc, SPLIT_MODES[self.split_mode]), n_threads=self.threads,
                    n_threads_batch=self.threads, n_ctx=self.ctx_size, seed=self.seed, verbose=False,
                    tensor_split=list(self.tensor_split) if self.tensor_split else None,
                    **({"flash_attn": self.flash_attn} if self.flash_attn is not None else {}),
                )
                error = None
            except (ValueError, RuntimeError) as e:
                error = e
        text = "".join(lines)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(text)
        if error is not None:
            found = diagnose("llama-cpp-python", None, f"{text}\n{error}", self.model,
                             f"n_gpu_layers={self.n_gpu_layers}, ctx_size={self.ctx_size}")
            if found.kind == EXITED:
                found = dataclasses.replace(found, reason=f"llama-cpp-python could not load {self.model}: {error}. "
                                            f"{found.reason}")
            raise engine_failure(found) from None
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.offload = parse_offload(text)
        self._lc = lc

    def _fit_layers(self, lc: ModuleType) -> int:
        """ "auto": llama-cpp-python exposes no fitting, so the same build's llama-server fits (--fit on) once."""
        if not lc.llama_supports_gpu_offload():
            self.fitted_layers = 0  # a build without a GPU backend offloads nothing, whatever is asked
            return 0
        from llmbench.engines.llama_server import fitted_by_build

        fit_log = self.log_path.with_suffix(".fit.log") if self.log_path else Path(tempfile.mkdtemp()) / "fit.log"
        self.fitted_layers = fitted_by_build(self.lib_dir, self.model, self.split_mode, self.threads, self.ctx_size,
                                             self.tensor_split, fit_log)
        return self.fitted_layers

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        llm, lc = self.llm, self._lc
        if llm is None or lc is None:
            raise EngineError("llama-cpp-python backend is not started")
        # Every generation processes its whole prompt: no prompt cache, and no KV prefix kept from the last one.
        llm.set_cache(None)
        llm.reset()
        lc.llama_perf_context_reset(llm.ctx)
        text, ttft_ms, finish = [], None, None
        t0 = time.perf_counter()
        try:
            for chunk in llm.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=temperature,
                seed=seed, stream=True,
            ):
                choice = chunk["choices"][0]
                delta = choice["delta"].get("content")
                if delta:
                    if ttft_ms is None:
                        ttft_ms = (time.perf_counter() - t0) * 1000
                    text.append(delta)
                finish = choice.get("finish_reason") or finish
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"llama-cpp-python failed to generate: {e}") from None
        wall_ms = (time.perf_counter() - t0) * 1000
        perf = lc.llama_perf_context(llm.ctx)
        # llama.cpp reports n_eval as at least 1; a generation of one token has no decode step and 0 ms of it.
        n_eval = perf.n_eval if perf.t_eval_ms > 0 else 0
        # n_eval counts decode steps; the first token comes from the prefill's logits and the last sampled one is
        # never decoded, so tokens sampled = n_eval + 1 (the end-of-generation token included, as llama-server's
        # predicted_n). usage.completion_tokens leaves that token out: n_eval on "stop", n_eval + 1 on "length".
        return Generation(
            # The context holds the templated prompt plus every decoded token.
            prompt_tokens=llm.n_tokens - n_eval,
            prefill_tokens=perf.n_p_eval,
            generated_tokens=n_eval + 1,
            prefill_ms=perf.t_p_eval_ms,
            decode_ms=perf.t_eval_ms,
            prefill_tokens_per_s=perf.n_p_eval / perf.t_p_eval_ms * 1000 if perf.t_p_eval_ms > 0 else None,
            decode_tokens_per_s=n_eval / perf.t_eval_ms * 1000 if n_eval else None,
            wall_ms=wall_ms,
            finish_reason=finish,
            text="".join(text),
            ttft_ms=ttft_ms,
        )

    def facts(self) -> dict:
        lc = self._lc
        binding = f"llama-cpp-python {lc.__version__}" if lc else None
        # libllama exports no build commit; the build's record (rule build_llama_cpp) sits beside its bin/.
        try:
            commit = json.loads((self.lib_dir.parent / "build.json").read_text()).get("commit")
        except (OSError, ValueError):
            commit = None
        return {
            "engine_build": f"{binding} (llama.cpp {commit})" if binding and commit else binding,
            "library": os.path.abspath(sys.modules["llama_cpp.llama_cpp"]._lib._name) if lc else None,
            "load_ms": self.load_ms,
            "n_gpu_layers": self.n_gpu_layers,
            **({"n_gpu_layers_fitted_by_llama_server": self.fitted_layers} if self.n_gpu_layers == AUTO else {}),
            **self.offload.facts(),
        }

    def peak_rss_bytes(self) -> int | None:
        return peak_rss_bytes(os.getpid())  # the engine is this process

    def stop(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


@contextlib.contextmanager
def _llama_log(lc: ModuleType):
    """Collect llama.cpp's log (every level) while loading; then give it back to llama-cpp-python's own handler,
    so that decoding logs nothing here."""
    lines: list[str] = []

    @lc.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode(errors="replace"))

    lc.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        own = getattr(getattr(lc, "_logger", None), "llama_log_callback", None)
        if own is not None:
            lc.llama_log_set(own, ctypes.c_void_p(0))
