"""Export: a run (or any Hugging Face-format OpenELM folder) to an MLX or Hugging Face folder.

`export(source, out, fmt=..., ...)` writes the folder and returns its path (`elm-train export`
in model/cli.py parses the flags and prints). The source is a run folder (its highest-step
checkpoint is taken), one checkpoint folder, or a plain Hugging Face-format folder such as
Apple's released checkpoint. Both formats hold
`config.json` with Apple's keys (per-layer lists, which mlx-lm reads unchanged),
`model.safetensors` under Apple's weight names, the tokenizer files with BOS added and a
`README.md` model card carrying the run's provenance. `--quantize` runs mlx-lm's own
quantization, so only the MLX format takes it. The folder is written beside `--out` and
renamed into place, so a failed export never leaves a half-written model behind.

Every export holds a marker (`.elm-export.json`) listing the files it wrote. `--force` replaces
only such a folder, holding nothing else: an `--out` that is, holds or lies inside the source, or
that holds anything an export did not write (a run, a user's notes), is refused before anything
is touched.

A checkpoint of an adapter run (model/adapters/lora.py) also holds its LoRA/DoRA adapter
under `adapter/`, in PEFT's layout. `peft-adapter` hands that out as PEFT's folder (loaded with
`PeftModel.from_pretrained` on the `hf` export of the base model, which run.json's `init_from`
names); `mlx-adapter` converts it to mlx-lm's (`adapters.safetensors` + `adapter_config.json`,
for `mlx_lm.load(..., adapter_path=)` and `mlx_lm fuse` on the `mlx` export of the base):
PEFT's `lora_A` (r x in) and `lora_B` (out x r) become `lora_a` (in x r) and `lora_b` (r x out),
the scale alpha / r is written out, and DoRA's magnitude is copied as `m`, since both libraries
define it alike (the norm of each output row of W + scale B A, dividing the adapted output).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from corpus.store.files import files_below
from model.config import OpenELMConfig
from model.adapters.files import ADAPTER_CONFIG, ADAPTER_DIR, ADAPTER_WEIGHTS, MLX_ADAPTER_WEIGHTS, PEFT_PREFIX
from model.chat import CHAT_TEMPLATE
from model.hf_folder import (CONFIG_FILE, DTYPES, WEIGHTS_FILE, HFCheckpoint, expected_shapes, read_hf_config,
                             read_hf_folder, read_json_object, write_hf_folder)
from model.hf_remote import write_remote_code
from model.mlx_cpu import OPENBLAS, openblas_unused
from model.source import ModelSource, SourceError, resolve_source, resolve_tokenizer, run_field

FORMATS = ("mlx", "hf", "mlx-adapter", "peft-adapter")
ADAPTER_FORMATS = ("mlx-adapter", "peft-adapter")
# A PEFT adapter tensor on an OpenELM layer: layer index, module path inside the layer (mlx-lm's key), which tensor.
_PEFT_KEY = re.compile(r"transformer\.layers\.(\d+)\.((?:attn|ffn)\.\w+)\."
                       r"(lora_A\.weight|lora_B\.weight|lora_magnitude_vector)")
_MLX_LEAF = {"lora_A.weight": "lora_a", "lora_B.weight": "lora_b", "lora_magnitude_vector": "m"}
QUANT_BITS = (4, 8)
# Written into every export: the files it wrote, so that --force replaces an earlier export and nothing else.
EXPORT_MARKER = ".elm-export.json"
# Keys transformers writes into tokenizer_config.json about how it was loaded here, not about the tokenizer.
_LOAD_TIME_TOKENIZER_KEYS = ("is_local", "local_files_only")


class ExportError(SourceError):
    """An export that cannot be done as asked; the message names the input and the way out."""


def write_tokenizer(tokenizer, folder: Path, context: int, chat_model: bool = False) -> None:
    """The tokenizer files, with BOS added on encode (OpenELM was trained with it) for mlx-lm and transformers,
    OpenELM-Instruct's chat template, and the model's context as the longest input (`model_max_length`, which
    transformers otherwise leaves at a huge placeholder, so nothing warns of or cuts a longer input).

    The template spells each message's end as the EOS token's text (`</s>`). A chat model (`chat_model`: an
    export of a fine-tuning run) must read that text back as the EOS token, so its tokenizer parses special
    tokens in text; any other export keeps them as plain text, as the SentencePiece model the corpus was
    tokenized with does (code holds a literal `<s>`), so `apply_chat_template(..., tokenize=False)` is the
    way to chat with a pretrained model's export.
    """
    tokenizer.export(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key in _LOAD_TIME_TOKENIZER_KEYS:
        config.pop(key, None)
    config["add_bos_token"] = True
    config["add_eos_token"] = False
    config["chat_template"] = CHAT_TEMPLATE
    config["model_max_length"] = context
    if chat_model:
        config["split_special_tokens"] = False
    path.write_text(json.dumps(config, indent=2) + "\n")


def is_chat_export(folder: Path) -> bool:
    """Whether an export's tokenizer reads the chat template's EOS text as the EOS token (a chat model's does)."""
    path = Path(folder) / "tokenizer_config.json"
    return path.is_file() and json.loads(path.read_text()).get("split_special_tokens") is False


def check_quantizable(checkpoint: HFCheckpoint, group_size: int) -> None:
    """mlx-lm silently leaves a matrix unquantized when its input width does not split into groups: refuse instead."""
    uneven = [name for name, t in checkpoint.tensors.items() if t.dim() == 2 and t.shape[1] % group_size]
    if uneven:
        raise ExportError(f"--group-size {group_size} does not divide the input width of {len(uneven)} weight(s) "
                          f"(e.g. {uneven[0]} {tuple(checkpoint.tensors[uneven[0]].shape)}); choose 32, 64 or 128 "
                          "dividing model_dim, head_dim x heads and every FFN width")


def quantize_mlx_folder(folder: Path, bits: int, group_size: int) -> dict:
    """Replace the folder's weights by mlx-lm's affine quantization of them; the quantization config is returned."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    model, config = load_model(folder)
    model, config = quantize_model(model, config, group_size=group_size, bits=bits)
    (folder / WEIGHTS_FILE).unlink()
    save_model(folder, model, donate_model=True)
    save_config(config, folder / CONFIG_FILE)
    return config["quantization"]


def provenance(source: ModelSource, checkpoint: HFCheckpoint, tokenizer, fmt: str, dtype: str,
               quantization: dict | None) -> dict:
    """What the card records, as plain data (None where the source does not say)."""
    run, state = source.run, source.state
    # A checkpoint's state.json describes that very checkpoint; run.json describes the run's latest one.
    return {
        "source": str(source.weights_dir),
        "run": str(source.run_dir) if source.run_dir else None,
        "run_status": run_field(run, "status"),
        "init_from": run_field(run, "init_from"),
        "preset": run_field(run, "preset"),
        "parameters": checkpoint.config.num_parameters(),
        "corpus": run_field(run, "corpus.name"),
        "corpus_fingerprint": run_field(run, "corpus.fingerprint"),
        "steps": source.step if source.step is not None else run_field(run, "steps_done"),
        "tokens_seen": state.get("tokens_seen", run_field(run, "tokens_seen")),
        "final_train_loss": state.get("train_loss", run_field(run, "final_train_loss")),
        "final_val_loss": state.get("val_loss", run_field(run, "final_val_loss")),
        "tokenizer": tokenizer.spec,
        "tokenizer_sha256": tokenizer.sha256,
        "format": fmt,
        "dtype": dtype,
        "quantization": quantization,
        "elm_corpus_version": _version("elm-corpus"),
        "mlx_lm_version": _version("mlx-lm") if fmt == "mlx" else None,
    }


def model_card(facts: dict, name: str) -> str:
    """README.md: front matter for the Hub, then provenance as a table and how to run the model."""
    tags = ["openelm", "elm-corpus"] + (["mlx"] if facts["format"] == "mlx" else [])
    front = ["---", "pipeline_tag: text-generation", "tags:"] + [f"- {t}" for t in tags]
    if facts["format"] == "mlx":
        front.append("library_name: mlx")
    front.append("---")
    rows = [(key.replace("_", " "), value) for key, value in facts.items() if value is not None]
    table = ["| | |", "|---|---|"] + [f"| {key} | {_cell(value)} |" for key, value in rows]
    if facts["format"] == "mlx":
        usage = ["```", f"python -m mlx_lm generate --model {name} --prompt \"Once upon a time\"", "```", "",
                 "```python", "from mlx_lm import load, generate", f"model, tokenizer = load(\"{name}\")",
                 "print(generate(model, tokenizer, prompt=\"Once upon a time\", max_tokens=50))", "```"]
    else:
        usage = ["The layout of Apple's OpenELM release: `config.json` keys and weight names are Apple's.",
                 "The folder carries its own transformers code (`modeling_openelm.py`):", "",
                 "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                 f"model = AutoModelForCausalLM.from_pretrained(\"{name}\", trust_remote_code=True)",
                 f"tokenizer = AutoTokenizer.from_pretrained(\"{name}\", trust_remote_code=True)", "```", "",
                 "With elm-corpus:", "", "```python", "from model.hf_folder import load_hf_folder",
                 f"config, model = load_hf_folder(\"{name}\")", "```", "",
                 f"`elm-train export {name} --format mlx --out {name}-mlx` converts it for mlx-lm."]
    text = ["\n".join(front), "", f"# {name}", "",
            f"OpenELM ({facts['parameters']:,} parameters) exported by elm-corpus. The tokenizer adds BOS "
            "to every prompt, as the model was trained.", "", "## Provenance", "", "\n".join(table), "",
            "## Use", "", "\n".join(usage), ""]
    return "\n".join(text)


def export(source_path: str | Path, out: str | Path, fmt: str = "mlx", dtype: str = "float32",
           quantize: int | None = None, group_size: int = 64, tokenizer_spec: str | None = None,
           step: int | None = None, force: bool = False) -> Path:
    """Write the export folder `out` and return it."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if quantize is not None and fmt != "mlx":
        raise ExportError("--quantize uses mlx-lm's quantization and applies to --format mlx only")
    if quantize is not None and quantize not in QUANT_BITS:
        raise ExportError(f"--quantize must be one of {QUANT_BITS}, got {quantize}")
    out = Path(out)
    source = resolve_source(source_path, step)
    check_output(out, [source.run_dir, Path(source_path), source.weights_dir], force)
    if fmt in ADAPTER_FORMATS:
        adapter = read_adapter(source)
        files = peft_adapter_files(adapter, dtype) if fmt == "peft-adapter" else mlx_adapter_files(adapter, dtype)
        files["README.md"] = adapter_card(adapter, fmt, out.name).encode()
        with _staged(out, fmt) as staging:
            for name, data in files.items():
                (staging / name).write_bytes(data)
        return out

    checkpoint = read_hf_folder(source.weights_dir)
    if quantize is not None:
        check_quantizable(checkpoint, group_size)
    tokenizer = resolve_tokenizer(source, tokenizer_spec)
    if tokenizer.vocab_size > checkpoint.config.vocab_size:
        raise ExportError(f"tokenizer {tokenizer.spec} has {tokenizer.vocab_size} pieces but the model's vocab_size is "
                          f"{checkpoint.config.vocab_size}; pass --tokenizer with the model the weights were trained with")

    with _staged(out, fmt) as staging:
        # Tokenizer first: transformers reads a config.json it finds beside the tokenizer and warns about it.
        write_tokenizer(tokenizer, staging, checkpoint.config.max_context_length,
                        chat_model=source.run.get("kind") == "finetune")
        write_hf_folder(staging, checkpoint.config, checkpoint.tensors, dtype,
                        safetensors_format="mlx" if fmt == "mlx" else "pt")
        quantization = quantize_mlx_folder(staging, quantize, group_size) if quantize is not None else None
        if fmt == "hf":  # transformers' remote code (trust_remote_code=True); MLX folders stay free of it
            write_remote_code(staging)
        facts = provenance(source, checkpoint, tokenizer, fmt, dtype, quantization)
        (staging / "README.md").write_text(model_card(facts, out.name))
    return out


def check_output(out: Path, sources: list[Path | None], force: bool) -> None:
    """Refuse an `--out` whose replacing could lose anything but an earlier export (nothing is touched here)."""
    target = out.resolve()
    for source in dict.fromkeys(s.resolve() for s in sources if s is not None):
        if target == source or target in source.parents or source in target.parents:
            where = "is" if target == source else "holds" if target in source.parents else "lies inside"
            raise ExportError(f"{out}: --out {where} the source {source}; choose a folder outside it")
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise ExportError(f"{out}: already exists; pass --force to replace an earlier export")
    marker = out / EXPORT_MARKER
    if out.is_symlink() or not out.is_dir() or not marker.is_file():
        raise ExportError(f"{out}: not an earlier export (no {EXPORT_MARKER}); --force replaces only what "
                          "elm-train export wrote: choose another --out, or move it away yourself")
    try:
        written = set(json.loads(marker.read_text())["files"])
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"{marker}: unreadable export marker; move {out} away yourself") from None
    others = [f for f in files_below(out) if f != EXPORT_MARKER and f not in written]
    if others:
        raise ExportError(f"{out}: holds {len(others)} file(s) an export did not write (e.g. {others[0]}); "
                          "--force would lose them: choose another --out, or move them away yourself")


@contextmanager
def _staged(out: Path, fmt: str) -> Iterator[Path]:
    """A folder beside `out` to write the export into; on success it is marked and swapped into place (an old
    `out`, which `check_output` allowed, is removed only then), on failure removed, leaving `out` as it was."""
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # left by an export that was killed; it was never the output
    staging.mkdir(parents=True)
    old = None
    try:
        yield staging
        marker = {"format": fmt, "files": files_below(staging)}
        (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.replaced"
            if old.exists():
                shutil.rmtree(old)  # left by an export killed between its two renames: an earlier export
            out.rename(old)
        staging.rename(out)
    except BaseException:
        if old is not None and not out.exists():
            old.rename(out)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)


# --- adapters ---------------------------------------------------------------------------------

@dataclass
class PeftAdapter:
    """An adapter run's checkpoint adapter, checked against its model: PEFT's config and tensors (keys unprefixed)."""

    source: ModelSource
    config: dict          # PEFT's adapter_config.json
    tensors: dict         # "transformer.layers.N.attn.qkv_proj.lora_A.weight" -> tensor
    model: OpenELMConfig
    base: str | None      # the base model the adapter goes on, when the run or the adapter records it

    @property
    def method(self) -> str:
        return "dora" if self.config.get("use_dora") else "lora"

    @property
    def scale(self) -> float:
        # PEFT's `scaling`: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA.
        rank = self.config["r"]
        return self.config["lora_alpha"] / (math.sqrt(rank) if self.config.get("use_rslora") else rank)


def read_adapter(source: ModelSource) -> PeftAdapter:
    """The adapter beside the source's weights; refused with the way out when there is none or it does not fit."""
    from safetensors.torch import load_file

    folder = source.weights_dir / ADAPTER_DIR
    if not (folder / ADAPTER_WEIGHTS).is_file() or not (folder / ADAPTER_CONFIG).is_file():
        raise ExportError(f"{source.weights_dir}: not a checkpoint of an adapter run (no {ADAPTER_DIR}/{ADAPTER_WEIGHTS} "
                          f"and {ADAPTER_DIR}/{ADAPTER_CONFIG}); --format mlx|hf exports merged weights of any run")
    config = read_json_object(folder / ADAPTER_CONFIG, ExportError)
    if not isinstance(config.get("r"), int) or not isinstance(config.get("lora_alpha"), (int, float)):
        raise ExportError(f"{folder / ADAPTER_CONFIG}: PEFT's config needs integer r and numeric lora_alpha")
    _, model = read_hf_config(source.weights_dir)
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(folder / ADAPTER_WEIGHTS).items()}
    shapes = expected_shapes(model)
    wrong = []
    for key, tensor in tensors.items():
        match = _PEFT_KEY.fullmatch(key)
        weight = f"transformer.layers.{match[1]}.{match[2]}.weight" if match else None
        if weight not in shapes:
            wrong.append(f"{key} (not a LoRA tensor of a linear layer of this model)")
            continue
        out_dim, in_dim = shapes[weight]
        want = {"lora_A.weight": (config["r"], in_dim), "lora_B.weight": (out_dim, config["r"]),
                "lora_magnitude_vector": (out_dim,)}[match[3]]
        if tuple(tensor.shape) != want:
            wrong.append(f"{key} {tuple(tensor.shape)} (needs {want})")
    if wrong or not tensors:
        raise ExportError(f"{folder / ADAPTER_WEIGHTS}: the adapter does not fit the model in {source.weights_dir}: "
                          + ("; ".join(wrong[:3]) if wrong else "it holds no tensors"))
    parts: dict[str, set[str]] = {}
    for key in tensors:
        match = _PEFT_KEY.fullmatch(key)
        parts.setdefault(f"transformer.layers.{match[1]}.{match[2]}", set()).add(match[3])
    needed = {"lora_A.weight", "lora_B.weight"} | ({"lora_magnitude_vector"} if config.get("use_dora") else set())
    incomplete = sorted(module for module, have in parts.items() if have != needed)
    if incomplete:
        raise ExportError(f"{folder / ADAPTER_WEIGHTS}: {len(incomplete)} adapted layer(s) do not hold exactly "
                          f"{', '.join(sorted(needed))} (e.g. {incomplete[0]})")
    base = run_field(source.run, "init_from") or config.get("base_model_name_or_path")
    return PeftAdapter(source, config, tensors, model, str(base) if base else None)


def peft_adapter_files(adapter: PeftAdapter, dtype: str) -> dict[str, bytes]:
    """PEFT's folder as the run saved it, in `dtype`, naming the base model it goes on."""
    from safetensors.torch import save

    config = dict(adapter.config, base_model_name_or_path=adapter.base)
    tensors = {PEFT_PREFIX + k: v.to(DTYPES[dtype]).contiguous() for k, v in sorted(adapter.tensors.items())}
    return {ADAPTER_WEIGHTS: save(tensors, metadata={"format": "pt"}),
            ADAPTER_CONFIG: (json.dumps(config, indent=2) + "\n").encode()}


def mlx_adapter_files(adapter: PeftAdapter, dtype: str) -> dict[str, bytes]:
    """mlx-lm's adapter folder: its parameter names and layouts, and the config its `load_adapters` reads."""
    from safetensors.torch import save

    # mlx-lm has one rank and one scale for every adapted layer; PEFT's per-module patterns have no equivalent.
    patterns = [k for k in ("rank_pattern", "alpha_pattern") if adapter.config.get(k)]
    if patterns:
        raise ExportError(f"{adapter.source.weights_dir}/{ADAPTER_DIR}: the adapter sets {' and '.join(patterns)} "
                          "(a rank or alpha per module), which mlx-lm's adapters cannot express; use "
                          "--format peft-adapter, or --format mlx for the merged weights")
    tensors, keys = {}, set()
    for key, tensor in sorted(adapter.tensors.items()):
        match = _PEFT_KEY.fullmatch(key)
        name = f"transformer.layers.{match[1]}.{match[2]}.{_MLX_LEAF[match[3]]}"
        tensors[name] = (tensor.T if match[3] != "lora_magnitude_vector" else tensor).to(DTYPES[dtype]).contiguous()
        keys.add(match[2])
    # mlx-lm adapts `keys` in the last `num_layers` layers; a layer PEFT left alone keeps mlx-lm's initial
    # lora_b = 0 (and DoRA's m = the weight's row norms), so it stays the base layer as in PEFT.
    config = {"fine_tune_type": adapter.method, "num_layers": adapter.model.num_transformer_layers,
              "lora_parameters": {"rank": adapter.config["r"], "scale": adapter.scale,
                                  "dropout": float(adapter.config.get("lora_dropout") or 0.0), "keys": sorted(keys)}}
    return {MLX_ADAPTER_WEIGHTS: save(tensors, metadata={"format": "mlx"}),
            ADAPTER_CONFIG: (json.dumps(config, indent=2) + "\n").encode()}


def adapter_card(adapter: PeftAdapter, fmt: str, name: str) -> str:
    """README.md of an adapter folder: what it was trained from and how to put it on its base model."""
    source, base = adapter.source, adapter.base or "BASE"
    facts = {"source": str(source.weights_dir), "run": str(source.run_dir) if source.run_dir else None,
             "base model": adapter.base, "steps": source.step, "method": adapter.method, "rank": adapter.config["r"],
             "alpha": adapter.config["lora_alpha"], "scale": adapter.scale,
             "targets": ", ".join(sorted({_PEFT_KEY.fullmatch(k)[2] for k in adapter.tensors})), "format": fmt,
             "elm_corpus_version": _version("elm-corpus")}
    table = ["| | |", "|---|---|"] + [f"| {k.replace('_', ' ')} | {_cell(v)} |" for k, v in facts.items()
                                      if v is not None]
    if fmt == "mlx-adapter":
        usage = [f"The adapter goes on the MLX export of its base model (`{base}`):", "", "```",
                 f"elm-train export {base} --format mlx --out base-mlx",
                 f"python -m mlx_lm generate --model base-mlx --adapter-path {name} --prompt \"Once upon a time\"",
                 f"python -m mlx_lm fuse --model base-mlx --adapter-path {name} --save-path fused-mlx", "```"]
    else:
        usage = [f"The adapter goes on the Hugging Face export of its base model (`{base}`):", "", "```",
                 f"elm-train export {base} --format hf --out base-hf", "```", "", "```python",
                 "from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                 "base = AutoModelForCausalLM.from_pretrained(\"base-hf\", trust_remote_code=True)",
                 f"model = PeftModel.from_pretrained(base, \"{name}\")", "```"]
    text = [f"# {name}", "", f"A {adapter.method.upper()} adapter for OpenELM trained by elm-corpus. "
            f"`elm-train export {source.weights_dir} --format mlx|hf` gives the merged model instead.", "",
            "## Provenance", "", "\n".join(table), "", "## Use", "", "\n".join(usage), ""]
    return "\n".join(text)


def mlx_generate_command(folder: Path, chat_model: bool = False) -> str:
    """The shell command that tries an MLX export, OpenBLAS preloaded where `model.mlx_cpu.mlx_cpu_env` would.

    mlx-lm wraps the prompt in the tokenizer's chat template unless told not to: a pretrained model continues
    the raw prompt; a chat model (a fine-tuning run's export) is asked a question in its template.
    """
    preload = f"LD_PRELOAD={OPENBLAS} " if openblas_unused({}) else ""
    if chat_model:
        return f"{preload}python -m mlx_lm generate --model {folder} --prompt \"What is the capital of France?\""
    return f"{preload}python -m mlx_lm generate --model {folder} --ignore-chat-template --prompt \"Once upon a time\""


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    code_like = isinstance(value, str) and ("/" in value or (len(value) >= 16 and all(c in "0123456789abcdef" for c in value)))
    return f"`{value}`" if code_like else str(value)  # paths and hashes as code


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
