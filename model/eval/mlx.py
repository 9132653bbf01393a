"""An MLX export evaluated by lm-evaluation-harness (`elm-train eval --backend mlx`).

The model is mlx-lm's own `openelm` implementation, loaded from the folder by
`mlx_lm.utils.load_model`; the tokenizer is the SentencePiece model the export carries
(`tokenizer.model`, or `--tokenizer`), so the token ids are those the torch backend uses.
`MLXOpenELMLM` answers the harness's requests exactly as `model.eval.lm.OpenELMLM` does (it
inherits its request handling: BOS, context/continuation split, batching, left cut, rolling
windows, `until` strings) and only runs the forward pass and generation in MLX.

Why not mlx-lm's own `mlx_lm.evaluate.MLXLM`: on the same weights it gives the torch
backend's log-likelihoods for short requests, but
- it cuts contexts at `max_tokens` (8192 by default), not at the model's context, and the same
  `max_tokens` caps generation, so it cannot do both as the harness does: a context longer
  than the model is scored uncut (a 112-token request on a 48-token model: -21.68 against
  -22.01 with the harness's left cut);
- its `loglikelihood_rolling` scores each text in one piece, with no windows of the model's
  context (-1536.6 against -1549.4 on a 3-window text);
- BOS comes from the HF tokenizer's `add_bos_token`, with no way to turn it off (`--no-bos`)
  except by applying a chat template;
- it is a plain `LM`, not a `TemplateLM`: the context's trailing spaces stay in the context,
  and an empty context without BOS is dropped as "truncated" (-inf).
"""
from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import torch
from lm_eval.api.model import TemplateLM

from corpus.tokenizer.tokenizer import Tokenizer
from model.config import OpenELMConfig
from model.eval.lm import DEFAULT_MAX_GEN_TOKS, OpenELMLM
from model.hf_folder import CONFIG_FILE, read_json_object
from model.mlx_cpu import OPENBLAS, openblas_unused
from model.presets import preset_name
from model.source import ModelSource, SourceError, resolve_source, resolve_tokenizer

MLX_DEVICES = {"auto": None, "cpu": mx.cpu, "gpu": mx.gpu}


class MLXOpenELMLM(OpenELMLM):
    """An mlx-lm OpenELM and its SentencePiece tokenizer, answering harness requests like `OpenELMLM`."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, max_length: int, batch_size: int = 8,
                 add_bos: bool = True, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS):
        TemplateLM.__init__(self)  # not OpenELMLM's: that one reads a torch model
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.sp = tokenizer
        self.add_bos = add_bos
        self.batch_size = batch_size
        self.max_length = int(max_length)
        self.max_gen_toks = max_gen_toks

    @property
    def device(self) -> str:
        return f"mlx:{mx.default_device().type.name}"

    def _continuation_logits(self, inputs: list[list[int]], counts: list[int]) -> torch.Tensor:
        """As `OpenELMLM`'s, from mlx-lm's whole-sequence logits (its model has no separate output projection)."""
        width = max(len(x) for x in inputs)
        ids = np.full((len(inputs), width), self.sp.eos_id, dtype=np.int32)
        for row, x in enumerate(inputs):
            ids[row, :len(x)] = x
        logits = self.model(mx.array(ids)).astype(mx.float32)
        picked = mx.concatenate([logits[row, len(x) - n:len(x)] for row, (x, n) in enumerate(zip(inputs, counts))])
        mx.eval(picked)
        return torch.from_numpy(np.array(picked))

    def _generate(self, prompt: list[int], max_new: int, until: list[str], temperature: float) -> str:
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler
        tokens: list[int] = []
        for token, _ in generate_step(mx.array(prompt), self.model, max_tokens=max_new,
                                      sampler=make_sampler(temp=temperature)):
            token = int(token)
            if token == self.sp.eos_id:
                break
            tokens.append(token)
            if any(s and s in self.tok_decode(tokens) for s in until):
                break
        text = self.tok_decode(tokens)
        cut = min((text.index(s) for s in until if s and s in text), default=len(text))
        return text[:cut]


def load_mlx_lm(path: str | Path, tokenizer: str | None = None, batch_size: int = 8, add_bos: bool = True,
                device: str = "auto", step: int | None = None) -> tuple[MLXOpenELMLM, ModelSource, str | None]:
    """(the harness LM, where the weights came from, the preset they are if any) for an MLX export folder.

    Any folder mlx-lm's `openelm` loads works: an `--format mlx` export (quantized or not), or
    another Hugging Face-format OpenELM folder. A folder that cannot be used is a SourceError naming it
    and what to do; a torch device name is a ValueError.
    """
    from mlx_lm.utils import load_model

    if device not in MLX_DEVICES:
        raise ValueError(f"--device {device!r} does not apply to --backend mlx; use one of {', '.join(MLX_DEVICES)}")
    if MLX_DEVICES[device] is not None:
        mx.set_default_device(MLX_DEVICES[device])
    source = resolve_source(path, step)
    folder = source.weights_dir
    hf_config = read_json_object(folder / CONFIG_FILE, SourceError)
    if hf_config.get("model_type") != "openelm":
        raise SourceError(f"{folder}/{CONFIG_FILE}: model_type is {hf_config.get('model_type')!r}, not 'openelm'")
    sp = resolve_tokenizer(source, tokenizer)
    if sp.vocab_size != hf_config.get("vocab_size"):
        raise SourceError(f"{folder}: the model has a vocabulary of {hf_config.get('vocab_size')} but the tokenizer "
                        f"{sp.spec} has {sp.vocab_size} pieces; pass --tokenizer with the model it was trained with")
    try:
        model, _ = load_model(folder)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SourceError(f"{folder}: mlx-lm cannot load it ({str(e).splitlines()[0][:300]}); --backend mlx takes an "
                        "MLX export (elm-train export RUN --format mlx)") from None
    model.eval()
    try:
        preset = preset_name(OpenELMConfig.from_hf_config({k: v for k, v in hf_config.items() if k != "quantization"}))
    except (ValueError, KeyError, TypeError):
        preset = None
    _hint_openblas()
    lm = MLXOpenELMLM(model, sp, max_length=hf_config.get("max_context_length") or 2048, batch_size=batch_size,
                      add_bos=add_bos)
    return lm, source, preset


def _hint_openblas() -> None:
    """On a Linux CPU without the OpenBLAS preload, say once how to make MLX's matmul much faster."""
    if mx.default_device() == mx.cpu and openblas_unused():
        print(f"elm-train eval: MLX on this CPU is several times faster with LD_PRELOAD={OPENBLAS} "
              "(docs/export.md, 'Faster MLX on a Linux CPU')", file=sys.stderr)
