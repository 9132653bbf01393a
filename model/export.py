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
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

from model.hf_folder import CONFIG_FILE, DTYPES, WEIGHTS_FILE, HFCheckpoint, read_hf_folder, write_hf_folder
from model.hf_remote import write_remote_code
from model.source import ModelSource, SourceError, resolve_source, resolve_tokenizer, run_field

FORMATS = ("mlx", "hf")
QUANT_BITS = (4, 8)
# Debian's OpenBLAS (libopenblas0-pthread); preloaded, it makes mlx's CPU matmul several times faster on Linux.
OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
# Keys transformers writes into tokenizer_config.json about how it was loaded here, not about the tokenizer.
_LOAD_TIME_TOKENIZER_KEYS = ("is_local", "local_files_only")


class ExportError(SourceError):
    """An export that cannot be done as asked; the message names the input and the way out."""


def write_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer files, with BOS added on encode (OpenELM was trained with it) for mlx-lm and transformers."""
    tokenizer.export(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for key in _LOAD_TIME_TOKENIZER_KEYS:
        config.pop(key, None)
    config["add_bos_token"] = True
    config["add_eos_token"] = False
    path.write_text(json.dumps(config, indent=2) + "\n")


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
    if out.exists() and not force:
        raise ExportError(f"{out}: already exists; pass --force to replace it")

    source = resolve_source(source_path, step)
    checkpoint = read_hf_folder(source.weights_dir)
    if quantize is not None:
        check_quantizable(checkpoint, group_size)
    tokenizer = resolve_tokenizer(source, tokenizer_spec)
    if tokenizer.vocab_size > checkpoint.config.vocab_size:
        raise ExportError(f"tokenizer {tokenizer.spec} has {tokenizer.vocab_size} pieces but the model's vocab_size is "
                          f"{checkpoint.config.vocab_size}; pass --tokenizer with the model the weights were trained with")

    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # left by an export that was killed; it was never the output
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Tokenizer first: transformers reads a config.json it finds beside the tokenizer and warns about it.
        write_tokenizer(tokenizer, staging)
        write_hf_folder(staging, checkpoint.config, checkpoint.tensors, dtype,
                        safetensors_format="mlx" if fmt == "mlx" else "pt")
        quantization = quantize_mlx_folder(staging, quantize, group_size) if quantize is not None else None
        if fmt == "hf":  # transformers' remote code (trust_remote_code=True); MLX folders stay free of it
            write_remote_code(staging)
        facts = provenance(source, checkpoint, tokenizer, fmt, dtype, quantization)
        (staging / "README.md").write_text(model_card(facts, out.name))
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _replace(staging: Path, out: Path) -> None:
    """Rename the finished folder into place; an old `out` (with --force) is removed only after that."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced"
        if old.exists():
            shutil.rmtree(old)
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old)


def mlx_cpu_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that runs MLX: OpenBLAS preloaded when installed (Linux only), offline Hub."""
    env = dict(os.environ if env is None else env, HF_HUB_OFFLINE="1")
    if sys.platform.startswith("linux") and OPENBLAS.exists() and str(OPENBLAS) not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), str(OPENBLAS)]))
    return env


def mlx_generate_command(folder: Path) -> str:
    """The shell command that tries an MLX export, OpenBLAS preloaded where `mlx_cpu_env` would preload it."""
    preload = f"LD_PRELOAD={OPENBLAS} " if "LD_PRELOAD" in mlx_cpu_env({}) else ""
    return f"{preload}python -m mlx_lm generate --model {folder} --prompt \"Once upon a time\""


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
