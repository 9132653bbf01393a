"""A Hugging Face-format OpenELM folder: `config.json` plus safetensors under Apple's weight names.

This is the layout of Apple's released checkpoints, of our trainer's checkpoints and of
`elm-train export --format hf`. Reading checks the folder against the model this code
builds (every name, every shape) before any weights are used, so a wrong or partial
folder fails with a message naming the folder and the offending keys.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from model.config import OpenELMConfig
from model.openelm import OpenELM

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHARD_INDEX_FILE = "model.safetensors.index.json"
TORCH_WEIGHTS_FILE = "pytorch_model.bin"
# HF's tied-weight duplicate; dropped when it equals the token embeddings it mirrors.
LM_HEAD_KEY = "lm_head.weight"
EMBEDDING_KEY = "transformer.token_embeddings.weight"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class HFFolderError(ValueError):
    """A folder that is not a loadable OpenELM checkpoint; the message says why and where."""


@dataclass
class HFCheckpoint:
    """A checked folder's contents: the raw config.json, the parsed config, the tensors by HF name."""

    folder: Path
    hf_config: dict
    config: OpenELMConfig
    tensors: dict[str, Tensor]


def read_json_object(path: Path, error: type[Exception] = ValueError) -> dict:
    """A file holding one JSON object; ``error`` names the file and what is wrong with it."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def read_hf_config(folder: str | Path) -> tuple[dict, OpenELMConfig]:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise HFFolderError(f"{folder}: no such folder")
    if not path.is_file():
        raise HFFolderError(f"{folder}: no {CONFIG_FILE}; an OpenELM folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    hf_config = read_json_object(path, HFFolderError)
    model_type = hf_config.get("model_type")
    if model_type != "openelm":
        raise HFFolderError(f"{path}: model_type is {model_type!r}, not 'openelm'; this is not an OpenELM config")
    if "quantization" in hf_config:
        raise HFFolderError(f"{path}: a quantized MLX export cannot be read back; export again from the run or "
                            "from an unquantized folder")
    try:
        config = OpenELMConfig.from_hf_config(hf_config)
    except ValueError as e:
        raise HFFolderError(f"{path}: {e}") from None
    return hf_config, config


def read_weight_tensors(folder: str | Path) -> dict[str, Tensor]:
    """Every tensor of a single, sharded (index.json) or torch-pickled checkpoint, on the CPU."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / WEIGHTS_FILE).is_file():
        return load_file(folder / WEIGHTS_FILE)
    if (folder / SHARD_INDEX_FILE).is_file():
        index = json.loads((folder / SHARD_INDEX_FILE).read_text())
        tensors: dict[str, Tensor] = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            if not (folder / shard).is_file():
                raise HFFolderError(f"{folder}: {SHARD_INDEX_FILE} names {shard}, which is missing")
            tensors.update(load_file(folder / shard))
        return tensors
    if (folder / TORCH_WEIGHTS_FILE).is_file():
        # weights_only refuses arbitrary pickled code in a downloaded file.
        return torch.load(folder / TORCH_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    raise HFFolderError(f"{folder}: no weights; expected {WEIGHTS_FILE}, {SHARD_INDEX_FILE} or {TORCH_WEIGHTS_FILE}")


def expected_shapes(config: OpenELMConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter the model has, computed without allocating it."""
    with torch.device("meta"):
        model = OpenELM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_tensors(folder: Path, config: OpenELMConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The tensors, tied lm_head dropped, after checking names and shapes against the model; errors list all problems."""
    tensors = dict(tensors)
    if LM_HEAD_KEY in tensors:
        head = tensors.pop(LM_HEAD_KEY)
        embedding = tensors.get(EMBEDDING_KEY)
        if embedding is None or head.shape != embedding.shape or not torch.equal(head, embedding):
            raise HFFolderError(f"{folder}: has a separate {LM_HEAD_KEY}; OpenELM ties it to {EMBEDDING_KEY} "
                                "(share_input_output_layers), so it cannot be loaded")
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    wrong = [f"{k} {tuple(tensors[k].shape)} (config needs {shapes[k]})"
             for k in sorted(set(shapes) & set(tensors)) if tuple(tensors[k].shape) != shapes[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s): {_some(missing)}")
    if unexpected:
        problems.append(f"unknown {len(unexpected)} weight(s): {_some(unexpected)}")
    if wrong:
        problems.append(f"wrong shape for {len(wrong)}: {_some(wrong)}")
    if problems:
        raise HFFolderError(f"{folder}: weights do not match its config.json; " + "; ".join(problems))
    not_float = [k for k, t in tensors.items() if not t.is_floating_point()]
    if not_float:
        raise HFFolderError(f"{folder}: non-float weight(s) {_some(not_float)}; quantized checkpoints cannot be read")
    return tensors


def read_hf_folder(folder: str | Path) -> HFCheckpoint:
    folder = Path(folder)
    hf_config, config = read_hf_config(folder)
    tensors = check_tensors(folder, config, read_weight_tensors(folder))
    return HFCheckpoint(folder, hf_config, config, tensors)


def load_hf_folder(folder: str | Path) -> tuple[OpenELMConfig, OpenELM]:
    """OpenELM in float32 with the folder's weights, loaded with strict=True (e.g. for `elm-train --init-from`)."""
    checkpoint = read_hf_folder(folder)
    model = model_from_tensors(checkpoint.config, checkpoint.tensors)
    return checkpoint.config, model


def model_from_tensors(config: OpenELMConfig, tensors: dict[str, Tensor]) -> OpenELM:
    # Built on meta then assigned, so a 3B model is not randomly initialised only to be overwritten.
    with torch.device("meta"):
        model = OpenELM(config)
    state = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    model.load_state_dict(state, strict=True, assign=True)
    leftover = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise HFFolderError(f"OpenELM has tensors no checkpoint supplies: {_some(leftover)}")
    return model


def write_hf_folder(folder: str | Path, config: OpenELMConfig, tensors: dict[str, Tensor],
                    dtype: str = "float32", safetensors_format: str = "pt") -> Path:
    """config.json (Apple's keys, `torch_dtype`), generation_config.json and one model.safetensors in `dtype`."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = config.to_hf_config()
    hf_config["torch_dtype"] = dtype
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    cast = {k: tensors[k].to(DTYPES[dtype]).contiguous() for k in sorted(tensors)}
    save_file(cast, folder / WEIGHTS_FILE, metadata={"format": safetensors_format})
    shutil.copymode(folder / CONFIG_FILE, folder / WEIGHTS_FILE)  # safetensors writes 0600; keep the umask's mode
    return folder


def _some(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
