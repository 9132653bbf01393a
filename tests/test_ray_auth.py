"""Ray's token authentication stays on: while the project's own Ray runs, a process without its token cannot join."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.runner import require_token_auth

JOIN = ("import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print('ran', ray.get(ray.remote(lambda: 6 * 7).remote()))")


def join(address: str, home, **env: str) -> subprocess.CompletedProcess:
    """A process of another user (its own home folder, none of Ray's auth variables) joining ``address``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # One connection attempt instead of Ray's twenty one-second retries: a refusal is final.
    clean.update(HOME=str(home), RAY_gcs_server_port_wait_time_s="1", **env)
    return subprocess.run([sys.executable, "-c", JOIN.format(address=address)], env=clean, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def network_address(ray_session) -> str:
    """The GCS address of the session's Ray on the machine's network address (what another host would reach)."""
    node = ray_session.util.get_node_ip_address()
    port = ray_session.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    return f"{node}:{port}"


def test_the_project_runs_ray_with_token_authentication(ray_session):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    assert os.environ["RAY_AUTH_MODE"] == "token" and is_token_auth_enabled()


@pytest.mark.parametrize("env", [{}, {"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}],
                         ids=["no-token", "auth-disabled", "wrong-token"])
def test_a_process_without_the_token_cannot_join_or_run_a_task(network_address, tmp_path, env):
    refused = join(network_address, tmp_path, **env)
    assert refused.returncode != 0 and "ran 42" not in refused.stdout
    assert "Authentication token is missing or incorrect" in refused.stderr, refused.stderr[-2000:]


def test_a_process_with_the_token_joins(network_address, tmp_path):
    """The control: the same join with the user's token runs its task, so the refusals above are the token's."""
    token = os.path.expanduser("~/.ray/auth_token")
    joined = join(network_address, tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    assert joined.returncode == 0 and "ran 42" in joined.stdout, joined.stderr[-2000:]


def test_turning_authentication_off_is_refused_with_the_way_out(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ValueError, match="RAY_AUTH_MODE=disabled: elm-corpus runs Ray only with token authentication"):
        require_token_auth()


def test_a_streamed_training_run_with_authentication_off_is_refused_in_one_line(sample_mirror, tmp_path, monkeypatch,
                                                                                capsys):
    from model.cli import main
    monkeypatch.setenv("ELM_CORPUS_DATA", str(sample_mirror.parent))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    manifest = str(Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml")
    assert main(["--stream", "--manifest", manifest, "--stream-sample", "--model", "tiny", "--steps", "2",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("elm-train: RAY_AUTH_MODE=disabled: elm-corpus runs Ray only with token authentication")
    assert len(err.splitlines()) == 1


def test_a_build_with_authentication_off_is_refused_in_one_line_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    from pipelines.cli import main
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    manifest = str(Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml")
    assert main(["build", manifest, "--sample", "--out", str(tmp_path / "corpus")]) == 2
    err = capsys.readouterr().err.strip()
    assert "RAY_AUTH_MODE=disabled: elm-corpus runs Ray only with token authentication" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "corpus").exists()
