"""Shared test fixtures: one local Ray per test session, offline Hugging Face, small real data."""
from __future__ import annotations

import os

import pytest

os.environ["RAY_AUTH_MODE"] = "token"  # as the project runs Ray; children (CLI runs, clusters) inherit it
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_session():
    """A single local Ray for the whole test session, started as the CLIs start theirs (about 4 s and 1.8 GB)."""
    import ray

    from pipelines.runner import start_ray
    start_ray(workers=2)
    yield ray
    ray.shutdown()


def shaped_random_state(config, seed: int) -> dict:
    """Seeded OpenELM weights in which every layer shapes the logits: norm weights off 1, residual projections at
    full size (the default init keeps them small), so a wrong layer shows in the outputs."""
    import torch

    from model.openelm import OpenELM
    torch.manual_seed(seed)
    model = OpenELM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2 and "token_embeddings" not in name:
                p.normal_(std=p.shape[1] ** -0.5)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tokenizer():
    from corpus.tokenizer.tokenizer import Tokenizer
    return Tokenizer()


def write_token_corpus(folder, tokenizer, documents: dict, name: str = "trainer-test"):
    """A built-corpus folder (shards + corpus.json in the build's layout) from real text, one source per key.

    Each document becomes one BOS..EOS chunk; the manifest entry of a source reuses an
    `manifests/openelm.yaml` source of the same group so the folder passes manifest validation.
    """
    from pathlib import Path

    from corpus.manifest import load_manifest
    from corpus.store.files import atomic_write_json

    from corpus.store.writer import write_shard
    folder = Path(folder)
    template = load_manifest(Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml")
    base = template.sources[0]
    sources, entries, total = [], {}, 0
    for source_name, texts in documents.items():
        chunks = [ids for ids in tokenizer.encode(list(texts)) if len(ids) > 2]
        meta = write_shard(folder / "shards" / source_name / "u00000", chunks, {"source": source_name})
        sources.append(base.model_copy(update={"name": source_name, "tokens": meta["tokens"], "weight": None}))
        entries[source_name] = {"shards": [{"unit": "u00000", "bin": f"shards/{source_name}/u00000.bin",
                                            "idx": f"shards/{source_name}/u00000.idx", "chunks": meta["chunks"],
                                            "tokens": meta["tokens"]}],
                                "totals": {"chunks_kept": meta["chunks"], "tokens": meta["tokens"]}}
        total += meta["tokens"]
    manifest = template.model_copy(update={"name": name, "sources": sources})
    atomic_write_json(folder / "corpus.json", {
        "name": name, "status": "complete", "manifest": {"path": None, "dump": manifest.model_dump(mode="json")},
        "manifest_fingerprint": manifest.build_fingerprint(tokenizer.sha256), "tokenizer": tokenizer.describe(),
        "sources": entries, "totals": {"tokens": total}})
    return folder


@pytest.fixture(scope="session")
def token_corpus(tmp_path_factory, tokenizer):
    """About 0.8M tokens of real text in three sources: KJV chapters, stdlib code, Python's reference docs."""
    from corpus.mirror.text import doc_topics, kjv_chapters, stdlib_sources
    documents = {
        "kjv": [p.text for p in kjv_chapters()[:600]],
        "stdlib": [p.text for p in stdlib_sources()[:60]],
        "pydoc": [p.text for p in doc_topics()],
    }
    return write_token_corpus(tmp_path_factory.mktemp("corpora") / "trainer-test", tokenizer, documents)


@pytest.fixture(scope="session")
def sample_mirror(tmp_path_factory):
    """The offline sample mirror of manifests/openelm.yaml, written once per session into ``<tmp>/sample``.

    Where ``ELM_CORPUS_DATA=<tmp>`` (the mirror's parent) points the CLI, its ``--sample`` reads these very paths.
    """
    from pathlib import Path

    from corpus.manifest import load_manifest
    from corpus.mirror.mirror import ensure_mirror
    manifest = load_manifest(Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml")
    return ensure_mirror(manifest, tmp_path_factory.mktemp("data") / "sample")


@pytest.fixture(scope="session")
def sample_corpus(sample_mirror, tmp_path_factory, ray_session):
    """`elm-corpus build manifests/openelm.yaml --sample`, built once per session; yields its BuildResult."""
    from pathlib import Path

    from pipelines.build import build
    manifest = Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml"
    out = tmp_path_factory.mktemp("corpora") / "openelm-sample"
    return build(manifest, out, sample=True, workers=2, progress=False, mirror_root=sample_mirror)


@pytest.fixture(scope="session")
def cloze_tasks_written(sample_mirror, tmp_path_factory):
    """`elm-corpus tasks cloze OUT --items 40` once per session, with the session's mirror as the data folder's:
    its folder, exit code and printed lines (tests of the command, and the ablation's tasks)."""
    import contextlib
    import io
    from pathlib import Path
    from types import SimpleNamespace

    from pipelines.cli import main
    out, printed = tmp_path_factory.mktemp("cloze") / "tasks", io.StringIO()
    manifest = Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml"
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("ELM_CORPUS_DATA", str(Path(sample_mirror).parent))
        rc = main(["tasks", "cloze", str(out), "--manifest", str(manifest), "--items", "40"])
    return SimpleNamespace(out=out, rc=rc, stdout=printed.getvalue(), items=40)


@pytest.fixture(scope="session")
def chromium():
    """One headless Chromium for the session's HTML page tests (tests/browser.py); skips where none can be had."""
    import subprocess

    from browser import SETUP_CHROMIUM, HeadlessChromium, find_chromium
    binary = find_chromium()
    if binary is None and SETUP_CHROMIUM.exists():
        subprocess.run(["bash", str(SETUP_CHROMIUM)], check=False, timeout=600)
        binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium: /usr/bin/chromium is absent and tests/setup_chromium.sh could not install "
                    "Debian's chromium here (needs apt-get and root or password-less sudo)")
    browser = HeadlessChromium(binary)
    yield browser
    browser.close()


class S3Server:
    """A running S3-compatible endpoint (moto's server over HTTP) and a client of it, for tests."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def bucket(self, name: str) -> str:
        """Create the bucket ``name`` (if missing) and return its URI."""
        import fsspec
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server for the session: moto's ``ThreadedMotoServer`` on a free local port, which s3fs reaches
    through ``AWS_ENDPOINT_URL``. The ``AWS_*`` variables point at it for the session only (restored after it);
    ``AWS_CONFIG_FILE`` and ``AWS_SHARED_CREDENTIALS_FILE`` point nowhere, so no real profile can leak in."""
    import logging
    import socket

    server_module = pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[dev]')")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}.items():
        patch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        patch.delenv(name, raising=False)
    try:
        yield S3Server(endpoint)
    finally:
        patch.undo()
        server.stop()


@pytest.fixture(scope="session")
def planted_corpus(tmp_path_factory, ray_session):
    """The two planted sources of tests/planted_duplicates.py built once with their manifest's dedup block (one
    unit per file, 2 workers): (build result, documents, plants). Its manifest is ``planted-corpus.yaml`` beside
    the corpus folder. Readers only: a test that changes it works on a copy."""
    from pipelines.build import build
    from planted_duplicates import write_planted
    root = tmp_path_factory.mktemp("planted")
    manifest, documents, plants = write_planted(root)
    result = build(manifest, root / "corpus", workers=2, progress=False)
    assert result.status == "complete"
    return result, documents, plants
