"""Words people read: the missing-Docker hint, `cleanup --run` with an unknown id, counts in English."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_istio_mtls.backends import BackendUnavailable
from pytest_istio_mtls.backends.kube.cluster import check_docker
from pytest_istio_mtls.model.diagnostics import plural


def test_docker_not_installed_says_install_not_start() -> None:
    """Without a `docker` binary, "start Docker" is the wrong fix: say it is not on PATH and to install it."""
    with pytest.raises(BackendUnavailable) as raised:
        check_docker(env={}, which=lambda _: None)
    assert str(raised.value) == ("the kind backend needs Docker, but `docker` is not on PATH; install Docker, or "
                                 "run without a cluster: --istio-backend=local")


def test_docker_installed_but_down_says_start() -> None:
    """With the client present and the daemon down, starting Docker is the fix."""

    def run(*_: object, **__: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock")

    with pytest.raises(BackendUnavailable) as raised:
        check_docker(env={}, which=lambda _: "/usr/bin/docker", run=run)
    assert str(raised.value).endswith("; start Docker, or run without a cluster: --istio-backend=local")


@pytest.mark.skipif(os.geteuid() != 0, reason="cleanup needs root")
def test_cleanup_of_an_unknown_run_fails(tmp_path: Path) -> None:
    """`cleanup --run nosuch` exits 1 and says which runs exist, instead of "nothing to remove" and 0."""
    state = tmp_path / "state"
    (state / "a1b2c3").mkdir(parents=True)
    (state / "a1b2c3/state.json").write_text(f'{{"run_id": "a1b2c3", "owner_pid": {os.getpid()}, "kept": true}}')
    env = {**os.environ, "ISTIO_MTLS_LOCAL_STATE": str(state)}  # this test's own runs, never the machine's
    done = subprocess.run([sys.executable, "-m", "pytest_istio_mtls", "cleanup", "--run", "a1b2c4"],
                          capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", (
        "error: no local run 'a1b2c4' here; did you mean 'a1b2c3'?\n"
        "    fix: use a run id printed when a run was kept (a1b2c3), or run `pytest-istio-mtls cleanup` without "
        "--run\n"))
    assert (state / "a1b2c3/state.json").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="cleanup needs root")
def test_cleanup_of_a_run_in_use_fails(tmp_path: Path) -> None:
    """A run whose pytest process is alive and that is not kept is left alone, and cleanup says so with exit 1."""
    state = tmp_path / "state"
    (state / "a1b2c3").mkdir(parents=True)
    (state / "a1b2c3/state.json").write_text(f'{{"run_id": "a1b2c3", "owner_pid": {os.getpid()}}}')  # python: us
    env = {**os.environ, "ISTIO_MTLS_LOCAL_STATE": str(state)}
    done = subprocess.run([sys.executable, "-m", "pytest_istio_mtls", "cleanup", "--run", "a1b2c3"],
                          capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", (
        "error: run a1b2c3 belongs to a pytest process that is still running; it tears itself down when it ends\n"))
    assert (state / "a1b2c3/state.json").exists()


@pytest.mark.parametrize(("count", "word", "text"), [
    (0, "error", "0 errors"), (1, "error", "1 error"), (2, "policy", "2 policies"), (1, "policy", "1 policy"),
    (3, "key", "3 keys"), (2, "pass", "2 passes"), (1, "pair", "1 pair"), (1, "agrees", "1 agrees"),
])
def test_plural(count: int, word: str, text: str) -> None:
    assert plural(count, word, "agree" if word == "agrees" else "") == text


def test_the_oracle_line_of_an_unpredictable_row_says_unknown_once(write_scenario: Callable[..., Path]) -> None:
    """A failure message's oracle line reads ``oracle:   unknown: <why>``, never ``unknown: unknown:``."""
    from pytest_istio_mtls.oracle.mtls import predict
    from pytest_istio_mtls.run import Outcome
    from pytest_istio_mtls.scenario.loader import load_scenario

    from .test_cli import UNMODELLED

    scenario = load_scenario(write_scenario(UNMODELLED))
    row = scenario.expectations[0]
    outcome = Outcome(scenario, row, predict(scenario, row.source, row.target, row.port), error="probe failed")
    assert outcome.message().splitlines()[3] == ("  oracle:   unknown: EnvoyFilter foo/tweak applies to httpbin.foo "
                                                 "and is not modelled")
