"""The ablation spec: which candidate corpora (variants) to train a proxy model on, with which seeds, scored how.

    name: prose-vs-code
    model: tiny                  # a preset (model/presets.py): the proxy
    steps: 100                   # or tokens: 50M (exactly one), turned into steps by the run's batch
    seeds: [0, 1]
    tasks: [openelm-zero-shot]   # lm-eval tasks or the project's task sets, as `elm-train eval --tasks`
    include_path: tasks/         # optional: a folder of local task YAMLs
    aggregate: bpb               # optional: what ranks the variants (mean over tasks); bpb, acc or acc_norm
    train: {max_lr: 0.01}        # optional: run settings of every trial
    variants:
      - name: web-books
        manifest: manifests/openelm.yaml
        sample: true             # built from the offline sample mirror (elm-corpus build --sample)
        weights: {refinedweb: 1, redpajama-books: 1}
        train: {micro_batch_size: 4}   # optional: this variant's run settings, over the spec's

Paths are relative to the spec file. `load_spec` checks the whole spec at the edge, as corpus.manifest checks a
manifest, and lists every problem as `file:line: field: message` in one AblationSpecError: the shapes, then what
needs the disk (each manifest loads; weights name its sources; include_path is a folder), then the `train:` keys,
read against the settings `elm-train train` takes (`settings_of(TrainConfig)`, the one list of them), and whether
each variant's settings make a run that `resolve_config` accepts. Keys the ablation sets itself are refused in
`train:` with what sets them.

Two identities let a rerun reuse work:
- `corpus_identity`: what decides the bytes of a variant's corpus (the manifest file, its build fingerprint inputs,
  the sample flag), not the weights, which only mix it: variants that differ only in weights share one build.
- `trial_identity`: what decides a trained proxy (the corpus, the mixture it targets, the run settings as given,
  the model, the steps, the seed). A finished trial whose identity is unchanged is still valid; a variant added
  later adds trials without changing the others'. Code defaults (a preset's learning rate) are not in it.
"""
from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError, field_validator,
                      model_validator)

from corpus.manifest import (Manifest, ManifestError, TokenCount, digest, field_name, line_index, load_manifest,
                             nearest_line, read_card, validation_problems)
from corpus.mixing.sources import mixture_weights
from corpus.tasks.sets import task_names
from model.ablate.intervals import HIGHER_IS_BETTER
from model.presets import PRESETS
from model.train.config import ConfigError, TrainConfig, merge_settings, resolve_config
from model.train.settings import Setting, settings_of

# Run settings the ablation decides for every trial, and where a spec gives them instead of under `train:`.
SET_BY_ABLATION: dict[str, str] = {
    "model": "the spec's `model`",
    "steps": "the spec's `steps` or `tokens`",
    "seed": "the spec's `seeds`",
    "weights": "the variant's `weights`",
    "corpus": "the variant's `manifest` and `sample` (the ablation builds the corpus)",
    "manifest": "the variant's `manifest`",
    "stream": "the variant's `manifest` and `sample` (the ablation trains on built corpora)",
    "stream_sample": "the variant's `sample`",
    "out": "elm-train ablate's --out (each trial gets its own run folder)",
}

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$"  # a variant's name goes into folder names


class AblationSpecError(ValueError):
    """A spec that cannot be used; ``problems`` holds one ``file:line: field: message`` each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Variant(_Strict):
    """One candidate corpus: a manifest built (from the sample mirror or upstream) and mixed by `weights`."""
    name: str = Field(pattern=_NAME)
    manifest: str
    sample: bool = False
    weights: dict[str, float] | None = None  # None: the manifest's target shares
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _mixable(cls, weights: dict[str, float] | None):
        if weights is None:
            return None
        negative = sorted(name for name, w in weights.items() if not w >= 0)
        if negative:
            raise ValueError(f"weights of {negative} are negative or not numbers; a weight is >= 0")
        if not sum(weights.values()) > 0:
            raise ValueError("every weight is zero or none is given, so nothing would be sampled")
        return weights


class AblationSpec(_Strict):
    name: str = Field(pattern=_NAME)
    model: str
    steps: int | None = Field(None, gt=0)
    tokens: TokenCount | None = None
    seeds: list[StrictInt] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    include_path: str | None = None
    aggregate: Literal[tuple(HIGHER_IS_BETTER)] = "bpb"  # type: ignore[valid-type]
    train: dict[str, Any] = Field(default_factory=dict)
    variants: list[Variant] = Field(min_length=1)
    # Where the spec was read from (paths in it are relative to its folder); not part of the YAML.
    path: str | None = Field(None, exclude=True)
    _manifests: dict[Path, Manifest] = PrivateAttr(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _preset(cls, name: str):
        if name not in PRESETS:
            raise ValueError(f"{name!r} is not a model preset; choose one of {', '.join(PRESETS)}")
        return name

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]):
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds {repeated} appear more than once; each seed trains one proxy per variant")
        return seeds

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value: Any):
        if isinstance(value, str):  # `tasks: arc_easy,piqa`, as on eval's command line
            value = [name.strip() for name in value.split(",")]
        if isinstance(value, list) and any(not isinstance(n, str) or not n.strip() for n in value):
            raise ValueError(f"{value!r}: every task is a non-empty name (an lm-eval task or a task set)")
        return value

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of 'steps' (optimizer steps) or 'tokens' (tokens per trial)")
        if self.tokens is not None and self.tokens <= 0:
            raise ValueError(f"tokens must be positive, got {self.tokens}")
        return self

    # ------------------------------------------------------------ what the orchestrator reads

    @property
    def folder(self) -> Path:
        return Path(self.path).parent if self.path else Path(".")

    @property
    def include_dir(self) -> Path | None:
        return self.folder / self.include_path if self.include_path is not None else None

    @property
    def task_list(self) -> list[str]:
        """The lm-eval tasks the spec's names mean (sets expanded), each once, in order."""
        return task_names(",".join(self.tasks))

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"the spec {self.name!r} has no variant {name!r}; it has {[v.name for v in self.variants]}")

    def manifest_path(self, variant: Variant) -> Path:
        return (self.folder / variant.manifest).resolve()

    def manifest(self, variant: Variant) -> Manifest:
        """The variant's manifest, loaded once per file (first when the spec was)."""
        path = self.manifest_path(variant)
        if path not in self._manifests:
            self._manifests[path] = load_manifest(path)
        return self._manifests[path]

    def train_settings(self, variant: Variant) -> dict[str, Any]:
        """The run settings the spec gives a variant's trials: the spec's `train`, then the variant's over it."""
        return {**self.train, **variant.train}

    def steps_for(self, variant: Variant) -> int:
        """Optimizer steps of the variant's trials: `steps`, or `tokens` over the run's global batch, rounded up."""
        if self.steps is not None:
            return self.steps
        merged = merge_settings({**self.train_settings(variant), "model": self.model}, None)
        return math.ceil(self.tokens / merged["global_batch_tokens"])

    def run_settings(self, variant: Variant, seed: int) -> dict[str, Any]:
        """The run config of one trial (`elm-train train --config` keys), less `corpus` and `out`, which the
        orchestrator gives: where it built the variant's corpus and where the trial's run folder is."""
        settings = {**self.train_settings(variant), "model": self.model, "steps": self.steps_for(variant),
                    "seed": seed}
        if variant.weights is not None:
            settings["weights"] = dict(variant.weights)
        return settings


# ---------------------------------------------------------------- identities

def corpus_identity(spec: AblationSpec, variant: Variant, tokenizer_sha256: str | None = None) -> dict[str, Any]:
    """What decides the bytes of the variant's corpus: the manifest file, the build's fingerprint inputs (text rules,
    sources less their weights, dedup, decontamination, tokenizer) and the sample flag. The tokenizer stands as the
    manifest names it unless its sha256 is given."""
    manifest = spec.manifest(variant)
    tokenizer = tokenizer_sha256 or f"spec:{manifest.tokenizer.model}"
    return {"manifest": str(spec.manifest_path(variant)), "sample": variant.sample,
            "build": manifest.fingerprint_parts(tokenizer)}


def trial_identity(spec: AblationSpec, variant: Variant, seed: int,
                   tokenizer_sha256: str | None = None) -> dict[str, Any]:
    """What decides one trained proxy: its corpus, the shares it targets (the weights normalised, sources of weight
    zero left out: they mix the same), the run settings the spec gives, the model, the steps and the seed. Names
    (the spec's, the variant's) are not in it: renaming keeps a finished trial."""
    raw = mixture_weights(variant.weights, spec.manifest(variant))
    total = sum(raw.values())
    return {"corpus": corpus_identity(spec, variant, tokenizer_sha256),
            "mixture": {name: w / total for name, w in sorted(raw.items()) if w > 0},
            "train": spec.train_settings(variant), "model": spec.model, "steps": spec.steps_for(variant),
            "seed": seed}


def identity_key(identity: dict[str, Any]) -> str:
    """A stable digest of an identity (sha256 of its canonical JSON): equal identities, equal keys."""
    return digest(identity)


def shared_builds(spec: AblationSpec, tokenizer_sha256: str | None = None) -> dict[str, list[str]]:
    """Corpus key -> the variants built from that corpus, in spec order: one build serves them all."""
    out: dict[str, list[str]] = {}
    for v in spec.variants:
        out.setdefault(identity_key(corpus_identity(spec, v, tokenizer_sha256)), []).append(v.name)
    return out


# ---------------------------------------------------------------- loading with line numbers

def load_spec(path: str | Path) -> AblationSpec:
    return parse_spec(read_card(path, "spec", AblationSpecError), str(path))


def parse_spec(text: str, path: str = "<string>") -> AblationSpec:
    """The checked spec in `text`; paths in it are relative to `path`'s folder."""
    try:
        node, data = yaml.compose(text), yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise AblationSpecError([f"{path}:{mark.line + 1 if mark else 1}: (yaml): not valid YAML: "
                                 f"{getattr(e, 'problem', None) or e}"]) from None
    if not isinstance(data, dict):
        raise AblationSpecError([f"{path}:1: (top level): a spec is a mapping of keys, got {type(data).__name__}"])
    lines = line_index(node)
    try:
        spec = AblationSpec.model_validate(data).model_copy(update={"path": path})
    except ValidationError as e:
        raise AblationSpecError(validation_problems(e, lines, path)) from None
    problems = [f"{path}:{nearest_line(lines, loc)}: {field_name(loc)}: {message}"
                for loc, message in _cross_checks(spec)]
    if problems:
        raise AblationSpecError(problems)
    return spec


def _cross_checks(spec: AblationSpec) -> list[tuple[tuple, str]]:
    """(key path, problem) for what the shapes cannot say: names, files, sources, run settings; then, when all of
    that holds, variants that would train the same proxies."""
    problems = list(_names_files_and_settings(spec))
    return problems or list(_same_trials(spec))


def _names_files_and_settings(spec: AblationSpec):
    if spec.include_dir is not None and not spec.include_dir.is_dir():
        yield ("include_path",), f"{spec.include_path!r}: no such folder (relative to the spec's folder)"
    settings = {s.name: s for s in settings_of(TrainConfig)}
    yield from _train_keys(spec.train, ("train",), settings)
    first: dict[str, int] = {}
    for i, v in enumerate(spec.variants):
        if v.name in first:
            yield ("variants", i, "name"), f"{v.name!r} is the name of variants[{first[v.name]}] too"
        first.setdefault(v.name, i)
        yield from _train_keys(v.train, ("variants", i, "train"), settings)
        try:
            manifest = spec.manifest(v)
        except ManifestError as e:
            yield ("variants", i, "manifest"), f"{v.manifest!r} cannot be used: " + "; ".join(e.problems)
            continue
        names = [s.name for s in manifest.sources]
        for source in v.weights or {}:
            if source not in names:
                yield (("variants", i, "weights", source),
                       f"{source!r} is not a source of {v.manifest} ({manifest.name}); its sources: {', '.join(names)}")
    yield from _run_problems(spec, settings)


def _train_keys(values: dict[str, Any], where: tuple, settings: dict[str, Setting]):
    for key, value in values.items():
        if key in SET_BY_ABLATION:
            yield where + (key,), f"set by the ablation, not under train: give it as {SET_BY_ABLATION[key]}"
        elif key not in settings:
            near = difflib.get_close_matches(key, settings, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known settings: {', '.join(sorted(settings))}"
            yield where + (key,), f"unknown run setting; {hint}"
        elif not _fits(value, settings[key].type):
            yield where + (key,), f"{value!r} is not a {settings[key].type.__name__} ({settings[key].help})"


def _fits(value: Any, kind: type) -> bool:
    if value is None:  # the default, as in a run config
        return True
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _run_problems(spec: AblationSpec, settings: dict[str, Setting]):
    """Each variant's settings as `elm-train train` would resolve them: a batch that does not divide, a value out
    of its choices, is found here rather than after the corpora are built."""
    clean = all(k in settings and k not in SET_BY_ABLATION and _fits(val, settings[k].type)
                for values in (spec.train, *(v.train for v in spec.variants)) for k, val in values.items())
    if not clean:
        return  # the keys' own problems are reported; resolving would only repeat them
    for i, v in enumerate(spec.variants):
        try:
            resolve_config(spec.run_settings(v, spec.seeds[0]), None)
        except (ConfigError, TypeError, ValueError) as e:
            where = ("variants", i, "train") if v.train else ("train",) if spec.train else ("variants", i)
            yield where, f"the run settings of variant {v.name!r} do not make a run: {e}"


def _same_trials(spec: AblationSpec):
    """Two variants that would train the same proxies are one variant twice."""
    seen: dict[str, str] = {}
    for i, v in enumerate(spec.variants):
        key = identity_key(trial_identity(spec, v, 0))
        if key in seen and seen[key] != v.name:
            yield ("variants", i), (f"variant {v.name!r} trains the same proxies as {seen[key]!r} (same corpus, "
                                    f"mixture and settings); drop one or change what it tests")
        seen.setdefault(key, v.name)
