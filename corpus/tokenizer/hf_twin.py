"""The Hugging Face twin of a SentencePiece BPE model: a ``tokenizer.json`` that gives the same ids.

transformers' own conversion of a LLaMA-layout model does not: it orders whitespace merges
first (sentencepiece scores them last), its Metaspace pre-tokenizer adds no dummy prefix to
text that already starts with a space, and it parses a literal ``<s>`` in text as BOS.
Here the tokenizer is built from the model's pieces and scores the way sentencepiece
encodes: a dummy prefix always, sentencepiece's word splitting, merges ranked by the merged
piece's score (equal scores broken leftmost-first, as sentencepiece does), byte fallback.
"""
from __future__ import annotations

import unicodedata

WS = "\u2581"  # sentencepiece's visible space

# Inputs whose ids are compared with sentencepiece's before an export is trusted: runs of
# spaces of every length before words, newlines, CJK (byte fallback) and at the ends.
PROBES = tuple(["", " ", "hello world", " leading", "trailing ", "a\n\n  b\tc", "x <s> y </s> z <unk>",
                "naïve café 東京 😀", unicodedata.normalize("NFD", "crème brûlée"),
                "def f(x):\n    return x\n"]
               + [f"x{' ' * n}{c}" for n in range(1, 40) for c in ("y", "\n", "(", "\u4e2d", "")])


def supported(model_bytes: bytes) -> str | None:
    """None if :func:`build` reproduces this model, else the reason it cannot."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(model_bytes)
    t, n = m.trainer_spec, m.normalizer_spec
    if t.model_type != pb.TrainerSpec.BPE:
        return "not a BPE model"
    if n.precompiled_charsmap or n.name not in ("identity", ""):
        return f"normalizer {n.name!r} is not 'identity'"
    if n.remove_extra_whitespaces:
        return "remove_extra_whitespaces is set"
    if not n.escape_whitespaces or t.treat_whitespace_as_suffix:
        return "whitespace is not escaped as a prefix"
    return None


def build(model_bytes: bytes, nfc: bool = True):
    """A ``tokenizers.Tokenizer`` equal to NFC (if ``nfc``) + the SentencePiece BPE model.

    Raises ValueError naming what is unsupported (see :func:`supported`).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    reason = supported(model_bytes)
    if reason:
        raise ValueError(f"cannot build an exact Hugging Face twin: {reason}")
    m = pb.ModelProto()
    m.ParseFromString(model_bytes)
    t, n = m.trainer_spec, m.normalizer_spec
    vocab = {p.piece: i for i, p in enumerate(m.pieces)}
    scores = {p.piece: (p.score, i) for i, p in enumerate(m.pieces) if p.type == pb.ModelProto.SentencePiece.NORMAL}
    ranked = []
    for piece, (score, pid) in scores.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in scores and right in scores:
                # Higher score merges first; among equal scores (runs of spaces) sentencepiece takes the
                # leftmost pair, which here means growing the longer left symbol first.
                ranked.append(((-score, -len(left), -len(right), pid), (left, right)))
    merges = [pair for _, pair in sorted(ranked)]

    unk = m.pieces[t.unk_id].piece if t.unk_id >= 0 and not t.byte_fallback else None
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=t.byte_fallback))
    steps = [normalizers.NFC()] if nfc else []
    steps += [normalizers.Prepend(WS)] if n.add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", WS)])
    if t.split_by_whitespace:
        # sentencepiece starts a word at a space; with whitespace-only pieces a run of spaces stays one word
        word = f"{WS}+[^{WS}]*" if t.allow_whitespace_only_pieces else f"{WS}[^{WS}]*"
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{word}|[^{WS}]+"), behavior="isolated")
    strip = [decoders.Strip(" ", 1, 0)] if n.add_dummy_prefix else []
    tok.decoder = decoders.Sequence([decoders.Replace(WS, " "), decoders.ByteFallback(), decoders.Fuse()] + strip)
    specials = [m.pieces[i].piece for i in (t.unk_id, t.bos_id, t.eos_id) if i >= 0]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if t.bos_id >= 0:
        bos = m.pieces[t.bos_id].piece
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, t.bos_id)])
    tok.encode_special_tokens = True  # a literal "<s>" in text is text, as in sentencepiece
    return tok


def mismatches(encode, hf, texts=PROBES) -> list[str]:
    """Texts whose ids differ between ``encode(texts) -> ids`` (no BOS/EOS) and a HF tokenizer (either kind)."""
    texts = list(texts)
    want = encode(texts)
    if hasattr(hf, "encode_batch"):
        got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    else:
        got = hf(texts, add_special_tokens=False)["input_ids"]
    return [x for x, a, b in zip(texts, want, got) if a != b]
