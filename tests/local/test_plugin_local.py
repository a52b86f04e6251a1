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

from pytest_istio_mtls.backends.support import unsupported
from pytest_istio_mtls.scenario.loader import load_scenario

from .conftest import CONTROL_PLANE

BUILTIN = Path(__file__).parents[2] / "pytest_istio_mtls" / "scenarios"
FLIP = {"mtls": "plaintext", "plaintext": "mtls", "refused": "unavailable", "unavailable": "refused",
        "allowed": "blocked", "blocked": "allowed", "denied": "allowed"}


def failed_ids(result: pytest.RunResult) -> set[str]:
    return {line.split(" ", 1)[1].split(" - ")[0] for line in result.outlines if line.startswith("FAILED ")}


# The built-in scenarios this control plane runs (the emulated one refuses what it does not emulate: authz).
RUNNABLE = [path for path in sorted(BUILTIN.glob("*.yaml"))
            if unsupported(load_scenario(path), "local", CONTROL_PLANE) is None]


def test_builtin_library_passes_with_evidence_for_every_probe(pytester: pytest.Pytester) -> None:
    """All built-in rows pass, and report.json holds stats deltas, identity and a capture verdict per probe."""
    directory = pytester.mkdir("scenarios")
    for path in RUNNABLE:
        shutil.copy(path, directory / path.name)
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local",
                                           "--istio-report=report", "-p", "no:cacheprovider")
    total = sum(len(state.expectations) for path in RUNNABLE for state in load_scenario(path).states())
    result.assert_outcomes(passed=total, warnings=sum(len(load_scenario(path).warnings) for path in RUNNABLE))
    result.stdout.fnmatch_lines(["*Istio mTLS truth table*", f"total: {total} correct, 0 wrong, 0 errors"])
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert report["backend"] == "local"
    assert report["versions"]["envoy"]
    rows = [row for scenario in report["scenarios"] for row in scenario["rows"]]
    assert len(rows) == total
    for row in rows:
        evidence = row["evidence"]["evidence"]
        proxies = [p for p in (evidence["client_proxy"], evidence["server_proxy"]) if p]
        moved = [name for p in proxies for name, count in p["stats_delta"].items() if count]
        assert not evidence["faults"] and row["because"], row
        if row["observed"] == "mtls":  # the server sidecar completed this probe's handshake
            assert any(name.endswith("ssl.handshake") for name in evidence["server_proxy"]["stats_delta"]), row
        if row["observed"] == "denied":  # a sidecar's RBAC filter said no
            assert any("rbac" in name and "denied" in name for name in moved), row
        if row["observed"] in ("refused", "unavailable"):  # a sidecar counted what it refused
            assert moved, row
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
    for source in RUNNABLE:
        data = yaml.safe_load(source.read_text())
        if "steps" in data:
            continue  # tests/local/test_steps.py flips the rows of a scenario with steps
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
            processes.add(f"process:{pid}:{text}")  # whole: the run id may come late
    return netns | etc | state | processes


def other_runs(owner: int) -> set[str]:
    """Run ids of local runs that process `owner` did not create (a concurrent pytest's: not ours to count)."""
    root = Path("/run/pytest-istio-mtls")
    ids = set()
    for directory in root.iterdir() if root.is_dir() else ():
        try:
            pid = json.loads((directory / "state.json").read_text())["owner_pid"]
        except (OSError, ValueError, KeyError):
            continue
        if pid != owner:
            ids.add(directory.name.removeprefix(".new-"))
    return ids


RANDOM_DELAY = round(random.uniform(0.3, 4.0), 2)  # a different moment on every run; shown in the test id


@pytest.mark.parametrize(("delay", "sig"), [(0.6, signal.SIGINT), (1.1, signal.SIGINT), (1.7, signal.SIGINT),
                                            (2.6, signal.SIGINT), (3.4, signal.SIGINT), (1.9, signal.SIGTERM),
                                            (RANDOM_DELAY, signal.SIGINT)])
def test_interrupted_run_leaves_nothing_behind(delay: float, sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) at various moments of a run: no netns, process, /etc/netns entry or key file remains."""
    before = snapshot()
    # The child must start with SIGINT at its default, as from a shell prompt. A command a script starts with `&`
    # inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler: the test would send Ctrl-C to
    # a deaf child. A handler (unlike SIG_IGN) is not inherited across exec, so setting one here is enough.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, "-m", "pytest", "--istio-scenarios", "builtin",
                                    "--istio-backend=local", "-p", "no:cacheprovider", "-q"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/tmp")
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(delay)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)
    others = other_runs(process.pid)  # so that this test may run beside other local runs
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


# --------------------------------------------------------------------------- a new user's session, on the
# emulated control plane (a mesh in about a second: these tests are about pytest, not about istiod)

EMULATED = ("--istio-backend=local", "--istio-control-plane=emulated", "-p", "no:randomly")
STRICT_APP = """
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: app}
  spec: {mtls: {mode: STRICT}}
"""
ROWS = """
  - {from: frontend, to: backend, result: mtls}
  - {from: frontend, to: backend, request: {method: POST, path: /post}, result: %s}
  - {from: plaintext, to: backend, result: refused}
"""
IDS = ["scenarios/one.yaml::one::frontend.app->backend.app:8080",
       "scenarios/one.yaml::one::frontend.app->backend.app:8080:POST:/post",
       "scenarios/one.yaml::one::plaintext.legacy->backend.app:8080"]


def write(pytester: pytest.Pytester, name: str, text: str) -> None:
    (pytester.path / "scenarios").mkdir(exist_ok=True)
    (pytester.path / "scenarios" / name).write_text(text)


def one(post: str = "allowed") -> str:
    """Scenario `one`: namespace app STRICT; the POST row expects `post`."""
    return f"name: one\npolicies: |{STRICT_APP}expect:{ROWS % post}"


def test_ids_round_trip_through_last_failed_and_stepwise(pytester: pytest.Pytester) -> None:
    """A failing row with a request is found again by --lf and --sw (pytest 9 read `[...]` as parameters)."""
    write(pytester, "one.yaml", one(post="blocked"))
    first = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-q")
    first.assert_outcomes(passed=2, failed=1)
    first.stdout.fnmatch_lines([f"FAILED {IDS[1]} - *"])
    again = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--lf")
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure"])
    again.assert_outcomes(failed=1, deselected=2)
    pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--sw").assert_outcomes(passed=1, failed=1)
    stepwise = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--sw")
    stepwise.stdout.fnmatch_lines(["stepwise: skipping 1 already passed items (cache from *"])
    stepwise.assert_outcomes(failed=1, deselected=1)


def test_verbose_prints_each_node_id_once(pytester: pytest.Pytester) -> None:
    """`pytest -v` lines are node ids that paste back (no `::` for dots), each once (progress no longer
    splits the first item's line); without -v the file's line is printed once too."""
    write(pytester, "one.yaml", one())
    verbose = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-v")
    verbose.stdout.fnmatch_lines([f"{IDS[0]} PASSED *", f"{IDS[1]} PASSED *", f"{IDS[2]} PASSED *"],
                                 consecutive=True)
    assert [line for line in verbose.outlines if line.startswith("scenarios/")] == [
        line for line in verbose.outlines if line.startswith(tuple(f"{i} PASSED" for i in IDS))]
    quiet = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED)
    quiet.stdout.fnmatch_lines(["[[]istio-mtls[]] scenario one: probing 3 connections", "",
                                "scenarios/one.yaml ... *[[]100%[]]"], consecutive=True)
    assert sum(line.startswith("scenarios/one.yaml") for line in quiet.outlines) == 1


def test_stop_on_first_failure_counts_agree_with_pytest(pytester: pytest.Pytester) -> None:
    """-x: the row pytest never ran is `not run` in the table, so both say 1 passed (correct), 1 failed (wrong)."""
    write(pytester, "one.yaml", one(post="blocked"))
    result = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-x", "--istio-report=report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["1 correct, 1 wrong, 0 errors, 1 not run"])
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert [row["status"] for row in report["scenarios"][0]["rows"]] == ["correct", "wrong", "not run"]
    assert report["interrupted"] is False


def test_interrupted_run_reports_every_row_and_says_so(pytester: pytest.Pytester) -> None:
    """SIGTERM after the second row: report.json says interrupted and lists every collected row, the rows
    not run as `not run`; the terminal's table agrees with pytest's count."""
    write(pytester, "one.yaml", one())
    write(pytester, "two.yaml", "name: two\nexpect:\n  - {from: frontend, to: backend, result: mtls}\n"
                                "  - {from: plaintext, to: backend, result: plaintext}\n")
    pytester.makeconftest(f'''
        import os, signal

        def pytest_runtest_logfinish(nodeid, location):
            if nodeid == "{IDS[1]}":
                os.kill(os.getpid(), signal.SIGTERM)  # what CI cancellation sends
    ''')
    result = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--istio-report=report")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["2 correct, 0 wrong, 0 errors, 1 not run"])
    result.stdout.fnmatch_lines(["0 correct, 0 wrong, 0 errors, 2 not run", "",
                                 "total: 2 correct, 0 wrong, 0 errors, 3 not run", "",
                                 "run interrupted: 3 of 5 rows not run"], consecutive=True)
    result.stdout.fnmatch_lines(["*= 2 passed in *"])
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert report["interrupted"] is True
    assert report["counts"] == {"correct": 2, "wrong": 0, "error": 0, "predicted": 0, "not run": 3}
    rows = [(s["name"], row["status"], row["message"]) for s in report["scenarios"] for row in s["rows"]]
    not_run = "the run was interrupted before this row ran"
    assert rows == [("one", "correct", ""), ("one", "correct", ""), ("one", "not run", not_run),
                    ("two", "not run", not_run), ("two", "not run", not_run)]


def test_keep_on_failure_keeps_the_first_failing_scenario(pytester: pytest.Pytester,
                                                          leftovers: Callable[[str], list[str]]) -> None:
    """Three scenarios, the second fails: its pods stay (not the last one's), later scenarios are not deployed
    (skipped, `not run`), and the end says which scenario is kept and how to keep another."""
    write(pytester, "a.yaml", "name: alpha\nexpect:\n  - {from: frontend, to: backend, result: mtls}\n")
    write(pytester, "b.yaml", "name: bravo\ntopology:\n  namespaces: {bravo: {sidecars: true}}\n  workloads:\n"
                              "    - {name: server, namespace: bravo, ports: [{name: http, port: 8000}]}\n"
                              "    - {name: client, namespace: bravo}\n"
                              "expect:\n  - {from: client, to: server, result: plaintext}\n")
    write(pytester, "c.yaml", "name: charlie\nexpect:\n  - {from: plaintext, to: backend, result: plaintext}\n")
    result = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--istio-keep=on-failure", "-rs")
    line = next((line for line in result.outlines if line.startswith("local run ") and " kept:" in line), "")
    run_id = line.split()[2] if line else ""
    try:
        result.assert_outcomes(passed=1, failed=1, skipped=1)
        result.stdout.fnmatch_lines([
            "SKIPPED [[]1[]] scenarios/c.yaml: --istio-keep=on-failure keeps the mesh of scenario 'bravo' "
            "(scenarios/b.yaml), which failed first, so no later scenario is deployed; run scenarios/c.yaml alone "
            "to test (and keep) this one"])
        result.stdout.fnmatch_lines([
            "kept: scenario 'bravo' (scenarios/b.yaml), the first that failed; 1 later scenario not deployed so "
            "that its mesh stays as it failed (to keep another, run its file alone with --istio-keep=on-failure)",
            "local run * kept: 2 pods with their proxies and apps still running, policies of scenario 'bravo' "
            "in force."], consecutive=True)
        result.stdout.fnmatch_lines(["charlie  (scenarios/c.yaml)", "*", "plaintext.legacy  not run",
                                     "0 correct, 0 wrong, 0 errors, 1 not run"], consecutive=True)
        result.stdout.fnmatch_lines([f"  network namespaces: ip netns list | grep {run_id}",
                                     f"  server.bravo: ip netns exec imtls-{run_id}-server.bravo sh *",
                                     f"  client.bravo: ip netns exec imtls-{run_id}-client.bravo sh *",
                                     "  proxy admin: *"], consecutive=True)
        kept = leftovers(run_id)
        assert sorted(entry for entry in kept if entry.startswith("netns ")) == [
            f"netns imtls-{run_id}-{name}" for name in ("client.bravo", "hub", "server.bravo")]
    finally:
        if run_id:
            subprocess.run([shutil.which("pytest-istio-mtls") or "pytest-istio-mtls", "cleanup", "--run", run_id],
                           capture_output=True, check=False)


def test_fixture_probes_are_rows_of_the_report(pytester: pytest.Pytester) -> None:
    """--istio-report with the Python fixtures: each test's probes are a scenario named after the test, each row
    judged by what the test asserted about that probe."""
    (pytester.path / "test_mesh.py").write_text(f'''STRICT = """{STRICT_APP}"""


def test_strict(istio_policies, istio_probe):
    with istio_policies(STRICT):
        assert istio_probe("frontend.app", "backend.app:8080").result == "mtls"
        assert istio_probe("plaintext.legacy", "backend.app").result == "refused"


def test_wrong_guess(istio_probe):
    assert istio_probe("plaintext.legacy", "backend.app").result == "mtls"
''')
    result = pytester.runpytest_subprocess(*EMULATED, "--istio-report=report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "test_strict  (test_mesh.py)",
        "                  backend.app:8080",
        "frontend.app      ✓ mtls",
        "plaintext.legacy  ✓ refused",
        "2 correct, 0 wrong, 0 errors",
        "",
        "test_wrong_guess  (test_mesh.py)",
        "                  backend.app:8080",
        "plaintext.legacy  ✗ plaintext (exp mtls)",
        "0 correct, 1 wrong, 0 errors",
        "  ✗ plaintext.legacy->backend.app:8080 expected mtls, observed plaintext",
    ], consecutive=True)
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    assert [(s["name"], s["policies"], [r["status"] for r in s["rows"]]) for s in report["scenarios"]] == [
        ("test_strict", ["PeerAuthentication app/default"], ["correct", "correct"]),
        ("test_wrong_guess", [], ["wrong"])]
    assert report["scenarios"][1]["rows"][0]["message"].startswith(
        "plaintext.legacy->backend.app:8080 in test test_wrong_guess\n  expected: mtls\n  observed: plaintext")
    assert (pytester.path / "report" / "report.html").is_file() and (pytester.path / "report" / "report.md").is_file()


def test_local_without_capabilities_stops_once_with_the_fix(pytester: pytest.Pytester) -> None:
    """Root without CAP_SYS_ADMIN (an unprivileged container): one message naming the fix, not an error per row."""
    write(pytester, "one.yaml", one())
    result = pytester.run(which_setpriv(), "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", sys.executable,
                          "-m", "pytest", "--istio-scenarios", *EMULATED, "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "! istio-mtls: the local backend cannot run here: the local backend needs CAP_SYS_ADMIN to create network "
        "namespaces, which this root process lacks (an unprivileged container?); fix: start the container with "
        "--privileged (or --cap-add NET_ADMIN --cap-add SYS_ADMIN), or use --istio-backend=kind !",
        "no tests ran in *"], consecutive=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def which_setpriv() -> str:
    found = shutil.which("setpriv")
    assert found, "setpriv (util-linux) is needed by the local backend and this test"
    return found


def test_a_run_killed_with_sigkill_is_swept_with_one_line(pytester: pytest.Pytester,
                                                          leftovers: Callable[[str], list[str]]) -> None:
    """`kill -9` leaves a run behind; the next run removes it and says so (the line used to be captured)."""
    write(pytester, "one.yaml", one())
    log = pytester.path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen([sys.executable, "-m", "pytest", "--istio-scenarios", *EMULATED,
                                  "-p", "no:cacheprovider"], cwd=pytester.path, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while "deploying" not in log.read_text() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # waits for the run to exist, then kills it at once
    first.kill()
    first.wait()
    run_id = log.read_text().split("local backend: run ", 1)[1].split(",", 1)[0]
    assert leftovers(run_id), "the killed run must have left something to sweep"
    result = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([f"[[]istio-mtls[]] removed a stale local run: run {run_id}: removed * network "
                                 "namespace*, * process*"])
    assert not leftovers(run_id)


def test_a_root_namespace_outside_the_topology_holds_mesh_wide_policies(pytester: pytest.Pytester) -> None:
    """meshConfig.rootNamespace that no workload lives in (as `import` writes for many clusters) still exists."""
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "root.yaml").write_text("""\
name: other-root
mesh: {rootNamespace: mesh-root}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: mesh-root}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: frontend.app, to: backend.app, result: mtls}
  - {from: plaintext.legacy, to: backend.app, result: refused}
""")
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
