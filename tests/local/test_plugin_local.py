"""The whole product on the local backend: pytest runs of the built-in library, reports, flipped
expectations, interrupted runs, kept runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pytest_istio_mtls.scenario import load_scenario

BUILTIN = Path(__file__).parents[2] / "pytest_istio_mtls" / "scenarios"
FLIP = {"mtls": "plaintext", "plaintext": "mtls", "refused": "unavailable", "unavailable": "refused",
        "allowed": "blocked", "blocked": "allowed", "denied": "allowed"}


def failed_ids(result: pytest.RunResult) -> set[str]:
    return {line.split(" ", 1)[1].split(" - ")[0] for line in result.outlines if line.startswith("FAILED ")}


def test_builtin_library_passes_with_evidence_for_every_probe(pytester: pytest.Pytester) -> None:
    """All built-in rows pass, and report.json holds stats deltas, identity and a capture verdict per probe."""
    result = pytester.runpytest_subprocess("--istio-scenarios", "builtin", "--istio-backend=local",
                                           "--istio-report=report", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=62, warnings=1)
    result.stdout.fnmatch_lines(["*Istio mTLS truth table*", "total: 62 correct, 0 wrong, 0 errors"])
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert report["backend"] == "local"
    assert report["versions"]["envoy"]
    rows = [row for scenario in report["scenarios"] for row in scenario["rows"]]
    assert len(rows) == 62
    for row in rows:
        evidence = row["evidence"]["evidence"]
        proxies = [p for p in (evidence["client_proxy"], evidence["server_proxy"]) if p]
        assert any(p["stats_delta"] for p in proxies) or row["observed"] == "plaintext", row
        if row["observed"] in ("mtls", "plaintext"):
            assert evidence["capture"]["flow"], row
            assert evidence["capture"]["pcap"], row
        if row["observed"] == "mtls":
            assert evidence["peer_identity"].startswith("spiffe://cluster.local/ns/"), row
            assert evidence["capture"]["tls_records"] > 0 and not evidence["capture"]["marker_in_clear"], row
        if row["observed"] == "plaintext":
            assert evidence["capture"]["marker_in_clear"], row
    assert (pytester.path / "report" / "report.html").stat().st_size > 1000
    assert "| from \\ to |" in (pytester.path / "report" / "report.md").read_text()


@pytest.mark.parametrize("parity", [0, 1], ids=["even-rows", "odd-rows"])
def test_flipping_any_expectation_fails_exactly_that_item(pytester: pytest.Pytester, parity: int) -> None:
    """Flip every other row of every built-in scenario: exactly the flipped items fail, all others pass.

    The two runs together flip each row once and leave it alone once. A row is judged from its own
    observation only, so flipping several rows of a scenario at once still shows each one.
    """
    directory = pytester.mkdir("scenarios")
    flipped: set[str] = set()
    total = 0
    for source in sorted(BUILTIN.glob("*.yaml")):
        data = yaml.safe_load(source.read_text())
        total += len(data["expect"])
        rows = [i for i in range(len(data["expect"])) if i % 2 == parity]
        for i in rows:
            item = data["expect"][i]
            item["result"] = FLIP[item["result"]]
            item.pop("status", None)
        target = directory / source.name
        target.write_text(yaml.safe_dump(data, sort_keys=False))
        loaded = load_scenario(target)
        flipped.update(f"scenarios/{source.name}::{data['name']}::{loaded.expectations[i].pair}" for i in rows)
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "-p", "no:cacheprovider",
                                           "-rf", "-W", "ignore::UserWarning")
    assert failed_ids(result) == flipped
    result.assert_outcomes(passed=total - len(flipped), failed=len(flipped))
    result.stdout.fnmatch_lines(["*expected: *", "*observed: *", "*oracle: *"])


def test_junit_and_last_failed(pytester: pytest.Pytester) -> None:
    """--junitxml records each row with its observed result; --lf reruns only the failed row."""
    data = yaml.safe_load((BUILTIN / "02-mesh-strict.yaml").read_text())
    data["expect"][2]["result"] = "plaintext"
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "mesh.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "--junitxml=junit.xml")
    result.assert_outcomes(passed=6, failed=1)
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="istio_observed" value="refused"' in junit
    assert "expected: plaintext" in junit
    again = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "--lf")
    again.assert_outcomes(failed=1)


def snapshot() -> set[str]:
    """What local runs own (names carry the imtls- prefix): other programs' namespaces are not ours to count."""
    netns = {f"netns:{n}" for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
             if n.startswith("imtls-")}
    etc = {f"etc:{n}" for n in (os.listdir("/etc/netns") if os.path.isdir("/etc/netns") else [])
           if n.startswith("imtls-")}
    state_root = Path("/run/pytest-istio-mtls")
    state = {f"state:{p.name}" for p in state_root.iterdir()} if state_root.is_dir() else set()
    processes = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"imtls-" in command or b"/run/pytest-istio-mtls/" in command:  # control plane and Envoys too
            text = command.replace(b"\0", b" ").decode(errors="replace")
            processes.add(f"process:{pid}:{text[:200]}")
    return netns | etc | state | processes


def other_live_runs(owner: int) -> set[str]:
    """Run ids of local runs owned by a live process other than `owner` (a concurrent pytest: not ours)."""
    root = Path("/run/pytest-istio-mtls")
    ids = set()
    for directory in root.iterdir() if root.is_dir() else ():
        try:
            pid = json.loads((directory / "state.json").read_text())["owner_pid"]
        except (OSError, ValueError, KeyError):
            continue
        if pid != owner and os.path.exists(f"/proc/{pid}"):
            ids.add(directory.name.removeprefix(".new-"))
    return ids


RANDOM_DELAY = round(random.uniform(0.3, 4.0), 2)  # a different moment on every run; shown in the test id


@pytest.mark.parametrize(("delay", "sig"), [(0.6, signal.SIGINT), (1.1, signal.SIGINT), (1.7, signal.SIGINT),
                                            (2.6, signal.SIGINT), (3.4, signal.SIGINT), (1.9, signal.SIGTERM),
                                            (RANDOM_DELAY, signal.SIGINT)])
def test_interrupted_run_leaves_nothing_behind(delay: float, sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) at various moments of a run: no netns, process, /etc/netns entry or key file remains."""
    before = snapshot()
    process = subprocess.Popen([sys.executable, "-m", "pytest", "--istio-scenarios", "builtin",
                                "--istio-backend=local", "-p", "no:cacheprovider", "-q"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/tmp")
    time.sleep(delay)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    others = other_live_runs(process.pid)  # so that this test may run beside other local runs
    left = {entry for entry in snapshot() - before if not any(run_id in entry for run_id in others)}
    assert not left, f"left behind after {sig.name} at {delay}s: {sorted(left)}\n{output.decode()[-2000:]}"
    assert b"Traceback" not in output or b"KeyboardInterrupt" in output


def test_kept_run_is_live_and_cleanup_removes_it(pytester: pytest.Pytester,
                                                 leftovers: Callable[[str], list[str]]) -> None:
    """--istio-keep=on-failure keeps a failing run, prints how to inspect it, and `cleanup` removes it."""
    data = yaml.safe_load((BUILTIN / "02-mesh-strict.yaml").read_text())
    data["expect"][0]["result"] = "plaintext"
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "mesh.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "--istio-keep=on-failure")
    result.assert_outcomes(passed=6, failed=1)
    line = next(line for line in result.outlines if line.startswith("local run ") and " kept:" in line)
    run_id = line.split()[2]
    assert "policies of scenario 'mesh-strict' in force" in line
    assert leftovers(run_id), "a kept run must keep its namespaces and proxies"
    command = next(line for line in result.outlines if "a request: " in line).split("a request: ")[1]
    answer = subprocess.run(command.split(), capture_output=True, text=True, check=False)
    assert "X-Forwarded-Client-Cert" in answer.stdout  # the kept mesh still serves mTLS
    cleanup = subprocess.run([shutil.which("pytest-istio-mtls") or "pytest-istio-mtls", "cleanup", "--run", run_id],
                             capture_output=True, text=True, check=False)
    assert cleanup.returncode == 0, cleanup.stderr
    assert not leftovers(run_id)


def test_fixtures_for_python_tests(pytester: pytest.Pytester) -> None:
    """istio_policies applies and removes policies; istio_probe returns judged observations (README example)."""
    pytester.makepyfile('''
        STRICT_APP = """
        apiVersion: security.istio.io/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: app}
        spec: {mtls: {mode: STRICT}}
        """

        def test_strict_then_open(istio_policies, istio_probe):
            with istio_policies(STRICT_APP) as scenario:
                assert [p.ref for p in scenario.policies] == ["PeerAuthentication app/default"]
                assert istio_probe("frontend.app", "backend.app:8080").result == "mtls"
                refused = istio_probe("plaintext.legacy", "backend.app")
                assert refused.result == "refused", refused.verdict.error
                assert refused.prediction.result == "refused"
            assert istio_probe("plaintext.legacy", "backend.app").result == "plaintext"

        def test_bad_policy_is_reported(istio_policies):
            import pytest
            from pytest_istio_mtls import ScenarioError
            with pytest.raises(ScenarioError, match="invalid mtls.mode 'STICT'"):
                with istio_policies(STRICT_APP.replace("STRICT", "STICT")):
                    pass
    ''')
    result = pytester.runpytest_subprocess("--istio-backend=local", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_xdist_workers_each_run_a_mesh_and_the_controller_merges_one_report(pytester: pytest.Pytester) -> None:
    """`pytest -n 2`: each worker deploys its own mesh (two concurrent local runs that must not sweep each
    other), and the controller prints one truth table and writes one report with every worker's rows."""
    files = [BUILTIN / "03-namespace-strict.yaml", BUILTIN / "06-port-level-disable.yaml"]
    items = sum(len(load_scenario(f).expectations) for f in files)
    result = pytester.runpytest_subprocess("--istio-scenarios", *map(str, files), "--istio-backend=local",
                                           "-n", "2", "--dist", "loadscope", "--istio-report=report",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=items)
    assert sum(1 for line in result.outlines if "Istio mTLS truth table" in line) == 1
    result.stdout.fnmatch_lines([f"total: {items} correct, 0 wrong, 0 errors"])
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert sorted(s["name"] for s in report["scenarios"]) == sorted(load_scenario(f).name for f in files)
    assert sum(len(s["rows"]) for s in report["scenarios"]) == items
