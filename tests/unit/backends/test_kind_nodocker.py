"""Without Docker, ``pytest --istio-backend=kind`` must stop in seconds, exit non-zero and say, once per
item and without a traceback, that Docker is missing and that the local backend needs none."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from ..kube_replay import replay

SCENARIO = """\
name: docker-check
topology:
  namespaces:
    foo: {sidecars: true}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
"""


def run_without_docker(pytester: pytest.Pytester, bin_dir: Path) -> tuple[pytest.RunResult, float]:
    scenarios = pytester.mkdir("scenarios")
    (scenarios / "check.yaml").write_text(SCENARIO)
    start = time.monotonic()
    result = pytester.run(sys.executable, "-m", "pytest", "--istio-scenarios", str(scenarios),
                          "--istio-backend=kind", "-p", "no:cacheprovider", timeout=60)
    return result, time.monotonic() - start


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing may be downloaded either
    monkeypatch.delenv("KIND_EXPERIMENTAL_PROVIDER", raising=False)
    return path


def assert_one_clear_message(result: pytest.RunResult, seconds: float, reason: str) -> None:
    output = result.stdout.str() + result.stderr.str()
    assert result.ret != 0
    assert seconds < 30
    assert "Traceback" not in output
    assert reason in output
    assert "Docker" in output and "--istio-backend=local" in output
    assert not (Path(os.environ["XDG_CACHE_HOME"])).exists()


def test_no_docker_on_path_fails_fast_without_traceback(pytester: pytest.Pytester, bin_dir: Path) -> None:
    result, seconds = run_without_docker(pytester, bin_dir)
    assert_one_clear_message(result, seconds, "`docker` is not on PATH")


@pytest.mark.skipif(shutil.which("sh", path="/bin:/usr/bin") is None, reason="needs a POSIX shell")
def test_docker_daemon_down_fails_fast_without_traceback_replay(pytester: pytest.Pytester, bin_dir: Path) -> None:
    """A ``docker`` that answers like the real client with no daemon (replayed stderr, exit 1)."""
    sh = shutil.which("sh", path="/bin:/usr/bin")
    fake = bin_dir / "docker"
    message = replay("docker_info_no_daemon.txt").strip()
    fake.write_text(f"#!{sh}\nprintf '%s\\n' {shlex.quote(message)} >&2\nexit 1\n")
    fake.chmod(0o755)
    result, seconds = run_without_docker(pytester, bin_dir)
    assert_one_clear_message(result, seconds, "Cannot connect to the Docker daemon")
