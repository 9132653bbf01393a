"""OpenELM-Instruct's chat format: the alignment-handbook (Zephyr) layout, as a Jinja template and in Python.

Every message is ``<|role|>\\n`` + content + EOS + ``\\n``; a generation prompt is ``<|assistant|>\\n``. This is
the text the template of CoreNet's openelm-instruct recipe renders under Hugging Face's Jinja settings
(``trim_blocks``, ``lstrip_blocks``): the line break after each ``{{ ... }}`` survives, so one follows every EOS
and the generation prompt. Unlike that template, an unknown role raises instead of vanishing.
"""
from __future__ import annotations

from typing import Any, Iterable

ROLES = ("system", "user", "assistant")
SEPARATOR = "\n"  # follows every EOS, so it opens the text of the next message
GENERATION_PROMPT = "<|assistant|>\n"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' + message['role'] + ': the OpenELM-Instruct template knows system, user"
    " and assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
    "{% endfor %}"
)


def header(role: str) -> str:
    """The text that opens a message of ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: the OpenELM-Instruct template knows {', '.join(ROLES)}")
    return f"<|{role}|>\n"


def role_and_content(message: Any) -> tuple[str, str]:
    """A message as a ``{"role", "content"}`` dict or an object with those attributes."""
    if isinstance(message, dict):
        return message["role"], message["content"]
    return message.role, message.content


def render(messages: Iterable[Any], eos: str = "</s>", add_generation_prompt: bool = False) -> str:
    """The text `CHAT_TEMPLATE` renders for ``messages`` (dicts or `Message`s), ``eos`` standing for the EOS token."""
    parts = [header(role) + content + eos + SEPARATOR for role, content in map(role_and_content, messages)]
    if parts and add_generation_prompt:  # the template adds it inside its loop: an empty chat renders nothing
        parts.append(GENERATION_PROMPT)
    return "".join(parts)
