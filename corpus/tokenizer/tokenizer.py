"""SentencePiece tokenizer with CoreNet's conventions: NFC first, BOS prepended, EOS appended.

The default model is the LLaMA-layout 32k SentencePiece model that the ``mistral-common``
package installs (32000 pieces, unk/bos/eos 0/1/2, byte fallback). It is found in the
installed package and never downloaded. Any other ``.model`` can be named by path or
fsspec URI (a user's own LLaMA ``tokenizer.model``).
"""
from __future__ import annotations

import hashlib
import json
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from corpus.text.rules import normalize
from corpus.tokenizer import hf_twin
from corpus.tokenizer.segments import SegmentEncoder, segment_split_reason

DEFAULT_MODEL = "default"


def default_model_path() -> Path:
    """The LLaMA-layout model inside the installed mistral-common package."""
    try:
        root = resources.files("mistral_common") / "data"
    except ModuleNotFoundError:
        raise RuntimeError("the default tokenizer comes with the 'mistral-common' package; "
                           "install it (pip install mistral-common) or name a .model in the manifest") from None
    path = Path(str(root / "tokenizer.model.v1"))
    if not path.exists():
        raise RuntimeError(f"mistral-common is installed but has no {path.name} under {root}; "
                           "name a SentencePiece .model in the manifest's tokenizer.model")
    return path


def read_model_bytes(spec: str | Path = DEFAULT_MODEL) -> bytes:
    if str(spec) == DEFAULT_MODEL:
        return default_model_path().read_bytes()
    spec = str(spec)
    if "://" in spec:
        import fsspec
        with fsspec.open(spec, "rb") as f:
            return f.read()
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer model not found: {spec}")
    return path.read_bytes()


class Tokenizer:
    """A SentencePiece model plus the text rules applied around it."""

    def __init__(self, spec: str | Path = DEFAULT_MODEL, normalize: str = "NFC", model_bytes: bytes | None = None):
        self.spec = str(spec)
        self.model_bytes = model_bytes if model_bytes is not None else read_model_bytes(spec)
        self.sha256 = hashlib.sha256(self.model_bytes).hexdigest()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_bytes)
        except Exception as e:  # sentencepiece raises a bare RuntimeError/OSError on garbage
            raise ValueError(f"{self.spec}: not a SentencePiece model ({e})") from None
        self.normalize = normalize
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.pad_id = self.sp.pad_id()
        self.id_dtype = np.dtype(np.uint16 if self.vocab_size <= 1 << 16 else np.int32)

    def __reduce__(self):  # ship the bytes, not the C++ object, to Ray workers
        return (Tokenizer, (self.spec, self.normalize, self.model_bytes))

    def normalize_text(self, text: str) -> str:
        return normalize(text, self.normalize)

    def encode(self, texts: Sequence[str], bos: bool = True, eos: bool = True,
               num_threads: int = 1) -> list[list[int]]:
        """Batch encode; ``num_threads=1`` by default because workers already run one per core."""
        texts = [self.normalize_text(t) for t in texts]
        return self.sp.encode(texts, add_bos=bos, add_eos=eos, num_threads=num_threads)

    def encode_arrays(self, texts: Sequence[str], bos: bool = True, eos: bool = True) -> list[np.ndarray]:
        """Encode already-normalised texts to integer arrays, ids equal to ``sp.encode``'s.

        Uses the :class:`SegmentEncoder` where this model allows it (LLaMA's does), else sentencepiece directly.
        """
        if self.segment_reason is None:
            return segment_encoder(self).encode(texts, bos, eos)
        return [np.asarray(ids, dtype=self.id_dtype)
                for ids in self.sp.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=1)]

    @cached_property
    def segment_reason(self) -> str | None:
        """None if ids may be assembled per space-delimited segment, else why not."""
        return segment_split_reason(self.model_bytes)

    def encode_one(self, text: str, bos: bool = True, eos: bool = True) -> list[int]:
        return self.sp.encode(self.normalize_text(text), add_bos=bos, add_eos=eos)

    def decode(self, ids: Iterable[int]) -> str:
        # an array's tolist() gives Python ints in one C pass: a shard's chunks are uint16 arrays
        return self.sp.decode(ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids])

    def describe(self) -> dict:
        return {"spec": self.spec, "sha256": self.sha256, "vocab_size": self.vocab_size,
                "bos_id": self.bos_id, "eos_id": self.eos_id, "unk_id": self.unk_id, "pad_id": self.pad_id,
                "normalize": self.normalize}

    def export(self, out_dir: str | Path) -> Path:
        """Write tokenizer.model, tokenizer.json and tokenizer_config.json (converted offline).

        For a BPE model (LLaMA's layout) tokenizer.json is built to give this tokenizer's ids exactly,
        NFC included (:mod:`corpus.tokenizer.hf_twin`); other models fall back to transformers' own conversion, with a
        warning naming the inputs where the two differ. A literal ``<s>`` in text stays text either way.
        """
        import warnings

        from transformers import AutoTokenizer, PreTrainedTokenizerFast  # heavy import, only where exporting

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer.model").write_bytes(self.model_bytes)
        names = {"bos_token": self.sp.id_to_piece(self.bos_id), "eos_token": self.sp.id_to_piece(self.eos_id),
                 "unk_token": self.sp.id_to_piece(self.unk_id)}
        config = {**names, "add_bos_token": True, "add_eos_token": False, "split_special_tokens": True,
                  "clean_up_tokenization_spaces": False, "model_max_length": 2048}
        exact = hf_twin.supported(self.model_bytes) is None
        if exact:
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            twin = hf_twin.build(self.model_bytes, nfc=self.normalize == "NFC")
            hf = PreTrainedTokenizerFast(tokenizer_object=twin, **config)
        else:
            config.update({"tokenizer_class": "LlamaTokenizer", "legacy": True})
            (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
            hf = AutoTokenizer.from_pretrained(str(out))
        hf.save_pretrained(str(out))
        # save_pretrained rewrites the config; keep ours (BOS added, special tokens in text not parsed) on top
        written = json.loads((out / "tokenizer_config.json").read_text())
        written.update(config)
        (out / "tokenizer_config.json").write_text(json.dumps(written, indent=2) + "\n")
        if not (out / "tokenizer.json").exists():
            raise RuntimeError(f"{out}: transformers did not write tokenizer.json")
        differ = hf_twin.mismatches(lambda texts: self.encode(texts, bos=False, eos=False),
                                         AutoTokenizer.from_pretrained(str(out)))
        if differ and exact:
            raise RuntimeError(f"{out}: the exported tokenizer differs from sentencepiece on {differ[:3]!r}")
        if differ:
            warnings.warn(f"{self.spec}: {hf_twin.supported(self.model_bytes)}; the exported Hugging Face "
                          f"tokenizer differs from sentencepiece on {len(differ)} probe texts, e.g. {differ[0]!r}")
        return out


_SEGMENT_ENCODERS: dict[str, SegmentEncoder] = {}  # per model (sha256), shared by every Tokenizer in a process


def segment_encoder(tokenizer: Tokenizer) -> SegmentEncoder:
    enc = _SEGMENT_ENCODERS.get(tokenizer.sha256)
    if enc is None:
        reason = tokenizer.segment_reason
        if reason is not None:
            raise ValueError(f"{tokenizer.spec}: ids cannot be assembled per segment: {reason}")
        enc = _SEGMENT_ENCODERS[tokenizer.sha256] = SegmentEncoder(tokenizer.model_bytes, tokenizer.bos_id,
                                                                   tokenizer.eos_id, tokenizer.id_dtype)
    return enc


@lru_cache(maxsize=4)
def load_tokenizer(spec: str = DEFAULT_MODEL, normalize: str = "NFC") -> Tokenizer:
    return Tokenizer(spec, normalize)


def described_tokenizer(described: dict) -> Tokenizer:
    """The tokenizer that ``Tokenizer.describe()`` recorded (a corpus.json's ``tokenizer``), refused (ValueError)
    unless its model is the one recorded: text decoded with another would be wrong."""
    spec, normalize = described.get("spec") or DEFAULT_MODEL, described.get("normalize") or "NFC"
    tokenizer = load_tokenizer(spec, normalize)
    want = described.get("sha256")
    if want and tokenizer.sha256 != want:
        raise ValueError(f"the tokenizer {spec!r} is {tokenizer.sha256[:12]} now, but the corpus was built with "
                         f"{want[:12]}; its tokens would decode to the wrong text")
    return tokenizer
