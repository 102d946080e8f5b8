"""Hugging Face transformers as a bench backend: the GGUF de-quantized into this process and run by torch."""

from __future__ import annotations

import gc
import importlib
import os
import time
from pathlib import Path
from types import ModuleType

from llmbench.engines.base import Engine, EngineError, EngineSettings, Generation, ToolUnavailable, engine_failure
from llmbench.engines.diagnosis import diagnose
from llmbench.engines.process import peak_rss_bytes
from llmbench.modelfiles.models import split_count

INSTALL_HINT = "the pins of requirements.txt (torch, transformers, accelerate, gguf)"


def _require(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ToolUnavailable(f"{name} is not installed here ({e}); the transformers backend needs {INSTALL_HINT}") from None


def unsupported_quant_types(path: Path) -> list[str]:
    """The file's tensor types that gguf's ``dequantize`` (what transformers loads GGUF with) cannot expand."""
    import gguf

    smallest = {}
    for t in gguf.GGUFReader(path).tensors:
        if t.tensor_type not in smallest or t.n_bytes < smallest[t.tensor_type].n_bytes:
            smallest[t.tensor_type] = t
    bad = []
    # Probing one (the smallest) tensor of each type asks the loader's own code, not a list that could go stale.
    for qtype, t in smallest.items():
        try:
            gguf.dequantize(t.data, qtype)
        except NotImplementedError:
            bad.append(qtype.name)
    return sorted(bad)


class _FirstTokenClock:
    """A generate() streamer that only notes when the first generated token comes out."""

    puts, first = 0, None

    def put(self, value) -> None:
        # generate() hands over the prompt first, then each new token as soon as it is chosen.
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class Transformers(Engine):
    tool = "transformers"

    def __init__(self, model: Path, *, device: str = "cpu", threads: int | None = None, dtype: str | None = None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r} is not 'cpu' or 'cuda'")
        self.model_path, self.device, self.threads = Path(model), device, threads
        # bfloat16 on a GPU: float32 would double the memory of a model that was quantized to save it.
        self.dtype_name = dtype or ("float32" if device == "cpu" else "bfloat16")
        self.model = self.tokenizer = None
        self.load_ms: float | None = None
        self.load_peak_rss: int | None = None
        self._torch: ModuleType | None = None
        self._versions = ""

    @classmethod
    def from_settings(cls, s: EngineSettings, log_path: Path) -> Transformers:
        return cls(s.model, device="cuda" if s.gpus else "cpu", threads=s.threads, dtype=s.options.get("dtype"))

    def start(self) -> None:
        if self.model_path.is_file() and (shards := split_count(self.model_path)) > 1:
            raise ToolUnavailable(
                f"transformers loads one GGUF file (gguf_file=) and cannot load a split GGUF; {self.model_path.name} "
                f"is the first of {shards} shards (huggingface/transformers#32266)"
            )
        torch = _require("torch")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ToolUnavailable(f"no CUDA GPU visible to torch {torch.__version__} (device 'cuda' asked for)")
        transformers = _require("transformers")
        # `import transformers` loads neither, yet from_pretrained(gguf_file=...) fails without both.
        for name in ("gguf", "accelerate"):
            _require(name)
        dtype = getattr(torch, self.dtype_name, None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise EngineError(f"dtype {self.dtype_name!r} is not a torch floating-point dtype")
        if not self.model_path.is_file():
            raise EngineError(f"model file {self.model_path} does not exist")
        if bad := unsupported_quant_types(self.model_path):
            raise EngineError(
                f"transformers {transformers.__version__} cannot load {self.model_path}: it has no de-quantizer for "
                f"its {', '.join(bad)} tensors; bench another quant type of this model with transformers"
            )
        if self.threads:
            torch.set_num_threads(self.threads)
        self._torch = torch
        self._versions = f"transformers {transformers.__version__}, torch {torch.__version__}"
        # local_files_only: the file is here, and a bench machine may not reach the Hub (nor should it wait on it).
        where = {"pretrained_model_name_or_path": self.model_path.parent, "gguf_file": self.model_path.name,
                 "local_files_only": True}
        t0 = time.perf_counter()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(**where)
            if tokenizer.chat_template is None:
                raise ValueError("it carries no chat template, so prompts cannot be given as chat")
            model = transformers.AutoModelForCausalLM.from_pretrained(**where, dtype=dtype)
        except (ValueError, KeyError, NotImplementedError, OSError, RuntimeError) as e:
            raise EngineError(f"transformers could not load {self.model_path}: {e}") from None
        self.tokenizer, self.model = tokenizer, model.to(self.device).eval()
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.load_peak_rss = self.peak_rss_bytes()

    def generate(self, prompt: str, max_tokens: int, temperature: float, seed: int) -> Generation:
        if self.model is None:
            raise EngineError("the transformers backend is not started")
        torch = self._torch
        enc = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        n_in = enc["input_ids"].shape[1]
        torch.manual_seed(seed)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        eos = self.model.generation_config.eos_token_id
        eos = set(eos) if isinstance(eos, list) else {eos, self.tokenizer.eos_token_id}
        clock = _FirstTokenClock()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_tokens, streamer=clock, **sampling)
        except (RuntimeError, MemoryError) as e:  # torch's out-of-memory errors are RuntimeErrors
            found = diagnose("transformers", None, f"{type(e).__name__}: {e}")
            raise engine_failure(found) from None
        wall_ms = (time.perf_counter() - t0) * 1000
        new = out[0, n_in:]
        n_out = int(new.shape[0])
        # The prefill forward pass yields the first token, so its time is the prefill time (plus generate()'s setup).
        ttft_ms = (clock.first - t0) * 1000 if clock.first is not None else None
        prefill_ms = ttft_ms if ttft_ms is not None else wall_ms
        decode_ms = wall_ms - prefill_ms
        return Generation(
            prompt_tokens=n_in,
            prefill_tokens=n_in,
            generated_tokens=n_out,
            prefill_ms=prefill_ms,
            decode_ms=decode_ms,
            prefill_tokens_per_s=n_in / prefill_ms * 1000 if prefill_ms > 0 else None,
            # The first token came out of the prefill: the decode phase made the ones after it.
            decode_tokens_per_s=(n_out - 1) / decode_ms * 1000 if n_out >= 2 and decode_ms > 0 else None,
            wall_ms=wall_ms,
            finish_reason="stop" if n_out and int(new[-1]) in eos else "length",
            text=self.tokenizer.decode(new, skip_special_tokens=True),
            ttft_ms=ttft_ms,
        )

    def facts(self) -> dict:
        params = list(self.model.parameters()) if self.model is not None else []
        return {
            "engine_build": self._versions or None,
            "load_ms": self.load_ms,
            "peak_rss_after_load_bytes": self.load_peak_rss,
            # The GGUF's quant type is gone once loaded: this is the dtype the weights were expanded to.
            "dtype": str(params[0].dtype) if params else None,
            "device": self.device,
            "parameters": sum(p.numel() for p in params),
            "n_gpu_layers": self.model.config.num_hidden_layers if self.model is not None and self.device == "cuda" else 0,
        }

    def peak_rss_bytes(self) -> int | None:
        # The engine is this process, so its high-water mark includes whatever the process held before the load.
        return peak_rss_bytes(os.getpid())

    def stop(self) -> None:
        self.model = self.tokenizer = None
        gc.collect()
        if self.device == "cuda" and self._torch is not None:
            self._torch.cuda.empty_cache()
