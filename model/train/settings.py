"""Settings declared once: each field of a run config carries its help, type, choices, owner and defaults.

A field is declared with `setting(default, help, ...)` on `RunConfig` (both kinds of run) or on
a config of one kind (`TrainConfig`: pretraining, `FinetuneConfig`: fine-tuning), which
`run_config(owner)` makes a dataclass. A shared field may name another default per owner
(`setting(5.3e-3, "...", finetune=2e-5)`); `run_config` gives the owner's class that default,
so `FinetuneConfig()` holds fine-tuning's values and its `--help` shows them. The flag's type
comes from the annotation. `elm-train`'s parsers, the YAML keys and the required-setting check
all read `settings_of(kind)`; nothing else lists settings.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BOTH = "both"


def setting(default: Any = None, help: str = "", *, choices: tuple[str, ...] | None = None,
            parse: Callable[[str], Any] | None = None, metavar: str | None = None, flag: bool = True,
            **owner_defaults: Any) -> Any:
    """A config field with what a user is told about it. `flag=False`: set by the run (derived or recorded)."""
    if flag and not help:
        raise ValueError("a setting a user can give needs its help text")
    metadata = {"help": help, "choices": choices, "parse": parse, "metavar": metavar, "flag": flag,
                "owner_defaults": owner_defaults}
    return dataclasses.field(default=default, metadata=metadata)


def run_config(owner: str, required: tuple[str, ...] = ()):
    """The class decorator of a run config: a dataclass whose own fields belong to `owner`, whose inherited fields
    take `owner`'s defaults where a setting names one, and whose `required` settings must be given."""
    def wrap(cls):
        own = cls.__dict__.get("__annotations__", {})
        for base in cls.__mro__[1:]:
            for f in getattr(base, "__dataclass_fields__", {}).values():
                if owner in f.metadata.get("owner_defaults", {}) and f.name not in own:
                    setattr(cls, f.name, dataclasses.field(default=f.metadata["owner_defaults"][owner],
                                                           metadata=f.metadata))
                    cls.__annotations__ = {**cls.__dict__.get("__annotations__", {}), f.name: f.type}
        for name in own:
            value = cls.__dict__.get(name)
            if isinstance(value, dataclasses.Field):
                setattr(cls, name, dataclasses.field(default=value.default, metadata={**value.metadata,
                                                                                       "owner": owner}))
        cls.OWNER, cls.REQUIRED = owner, tuple(required)
        return dataclass(cls)
    return wrap


@dataclass(frozen=True)
class Setting:
    name: str
    type: type            # what a flag's text is turned into (the annotation without None)
    default: Any
    help: str
    owner: str            # pretraining, finetune or both
    required: bool
    choices: tuple[str, ...] | None = None
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings_of(kind: type) -> list[Setting]:
    """The settings a user gives a run of `kind` (flags and YAML keys), in declaration order."""
    hints = typing.get_type_hints(kind)
    out = []
    for f in dataclasses.fields(kind):
        meta = f.metadata
        if not meta.get("flag", False):
            continue
        out.append(Setting(f.name, _flag_type(hints[f.name]), f.default, meta["help"], meta.get("owner", BOTH),
                           f.name in kind.REQUIRED, meta["choices"], meta["parse"], meta["metavar"]))
    return out


def _flag_type(annotation: Any) -> type:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) or annotation
