"""Tokenized fine-tuning examples: `SFTExample` (ids and which of them the loss trains on) and `PreferenceExample`.

Text is tokenized as inference will see it: a message's text, header included, is encoded as one SentencePiece
string and the EOS id appended (a literal ``</s>`` in text would be spelled as characters), so one call per stretch
of text between EOS tokens. SentencePiece's piece offsets then tell the header or prompt tokens from the
content ones; a token that straddles the boundary counts as content, since the completion is what produces it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Sequence

from corpus.tokenizer.tokenizer import Tokenizer
from model.chat import SEPARATOR, header
from model.finetune.records import (Message, Parsed, PlainText, Preference, PromptCompletion, Quarantine,
                                    Rejected, SFTRecord, excerpt)


@dataclass
class SFTExample:
    """Token ids starting with BOS; ``trained[i]`` says whether token i is a target of the loss."""

    input_ids: list[int]
    trained: list[bool]
    truncated: bool = False
    where: str = ""


@dataclass
class PreferenceExample:
    """BOS and the prompt (for chat, up to the reply's ``<|assistant|>\\n`` header), then each completion + EOS."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    truncated: bool = False
    where: str = ""


def encode_split(tokenizer: Tokenizer, head: str, body: str) -> tuple[list[int], int]:
    """The ids of ``head + body`` encoded as one string, and how many leading ids are the head's alone."""
    head, body = tokenizer.normalize_text(head), tokenizer.normalize_text(body)
    start = len(head.encode("utf-8"))  # piece offsets count bytes
    body.encode("utf-8")  # a lone surrogate (JSON allows "\ud800") raises here, not as sentencepiece's RuntimeError
    pieces = tokenizer.sp.encode(head + body, return_type="proto").pieces
    # byte-fallback pieces of one character are empty but the last; an empty piece at the start belongs to the body
    n_head = next((i for i, p in enumerate(pieces) if p.end > start or p.begin >= start), len(pieces))
    return [p.id for p in pieces], n_head


def chat_segments(tokenizer: Tokenizer, messages: Sequence[Message]) -> list[tuple[list[int], int]]:
    """Per message, the ids of its text up to its EOS (the separator after the previous EOS, the header and the
    content) and how many of them come before the content."""
    return [encode_split(tokenizer, (SEPARATOR if i else "") + header(m.role), m.content)
            for i, m in enumerate(messages)]


def _sft_tokens(parsed: SFTRecord, tok: Tokenizer) -> tuple[list[int], list[bool]]:
    if isinstance(parsed, PlainText):
        ids, _ = encode_split(tok, "", parsed.text)
        return [tok.bos_id, *ids, tok.eos_id], [False] + [True] * (len(ids) + 1)
    if isinstance(parsed, PromptCompletion):
        ids, n = encode_split(tok, parsed.prompt, parsed.completion)
        return [tok.bos_id, *ids, tok.eos_id], [False] * (1 + n) + [True] * (len(ids) - n + 1)
    ids, trained = [tok.bos_id], [False]
    for i, (seg, n) in enumerate(chat_segments(tok, parsed.messages)):
        train = parsed.messages[i].role == "assistant" and i >= parsed.train_from
        ids += [*seg, tok.eos_id]
        trained += [False] * n + [train] * (len(seg) - n + 1)
    return ids, trained


def tokenize_sft(parsed: SFTRecord, tokenizer: Tokenizer, max_length: int) -> SFTExample | Rejected:
    """The example cut on the right to ``max_length``, or a `Rejected` if no trained token is left."""
    try:
        ids, trained = _sft_tokens(parsed, tokenizer)
    except UnicodeEncodeError as e:
        return _rejected(parsed, f"text is not valid Unicode ({e.reason} at character {e.start})", "invalid text")
    if not any(trained[:max_length]):
        return _rejected(parsed, f"no completion token within max_length {max_length}", "too long")
    return SFTExample(ids[:max_length], trained[:max_length], len(ids) > max_length, parsed.where)


def _preference_tokens(tok: Tokenizer, prompt: str | tuple[Message, ...],
                       reply: str | tuple[Message, ...]) -> tuple[list[int], int]:
    """BOS, prompt and reply as one sequence, and where the reply's content starts in it."""
    if isinstance(prompt, str):
        ids, n = encode_split(tok, prompt, reply)
        return [tok.bos_id, *ids, tok.eos_id], 1 + n
    ids = [tok.bos_id]
    segments = chat_segments(tok, prompt + reply)
    for seg, _ in segments[:len(prompt)]:
        ids += [*seg, tok.eos_id]
    reply_start = len(ids) + segments[len(prompt)][1]
    for seg, _ in segments[len(prompt):]:
        ids += [*seg, tok.eos_id]
    return ids, reply_start


def tokenize_preference(parsed: Preference, tokenizer: Tokenizer, max_length: int,
                        max_prompt_length: int) -> PreferenceExample | Rejected:
    """The example truncated as TRL does: the prompt cut on the left to ``max_prompt_length`` (BOS kept first),
    then both completions cut on the right so that prompt + completion fits ``max_length``."""
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be at least 1, not {max_prompt_length}")
    try:
        chosen, n_chosen = _preference_tokens(tokenizer, parsed.prompt, parsed.chosen)
        rejected, n_rejected = _preference_tokens(tokenizer, parsed.prompt, parsed.rejected)
    except UnicodeEncodeError as e:
        return _rejected(parsed, f"text is not valid Unicode ({e.reason} at character {e.start})", "invalid text")
    # a plain-string prompt may merge into its completions differently; share only the tokens both agree on
    n = 0
    while n < min(n_chosen, n_rejected) and chosen[n] == rejected[n]:
        n += 1
    prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    truncated = len(prompt) > max_prompt_length
    if truncated:
        prompt = prompt[:1] + prompt[len(prompt) - max_prompt_length + 1:]
    room = max_length - len(prompt)
    if room <= 0:
        return _rejected(parsed, f"no completion token within max_length {max_length}", "too long")
    truncated = truncated or max(len(chosen), len(rejected)) > room
    return PreferenceExample(prompt, chosen[:room], rejected[:room], truncated, parsed.where)


def tokenize_all(parsed: Iterable[Parsed], tokenizer: Tokenizer, quarantine: Quarantine, max_length: int,
                 max_prompt_length: int | None = None) -> list[SFTExample | PreferenceExample]:
    """Tokenize records of one source, quarantining those that cannot train; refuses a source left mostly bad.

    Preference records need ``max_prompt_length``; the others are SFT records.
    """
    out = []
    for p in parsed:
        if isinstance(p, Preference):
            if max_prompt_length is None:
                raise ValueError("preference records need max_prompt_length")
            example = tokenize_preference(p, tokenizer, max_length, max_prompt_length)
        else:
            example = tokenize_sft(p, tokenizer, max_length)
        if isinstance(example, Rejected):
            quarantine.add(example)
        else:
            out.append(example)
    quarantine.check()
    return out


def _rejected(parsed: Parsed, reason: str, kind: str) -> Rejected:
    fields = {k: v for k, v in dataclasses.asdict(parsed).items() if k != "where"}
    return Rejected(parsed.where, reason, kind, excerpt(fields))
