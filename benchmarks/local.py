"""Benchmark of the local backend; prints figures, asserts nothing.

Measured in one run (needs root and Envoy, like the local backend):

1. suite: wall time of `pytest --istio-scenarios builtin --istio-backend=local` (target ≤ 20 s on 2 cores);
2. probe: the tool's time per probe, evidence included (stats deltas, capture, access logs, verdict),
   against raw `curl` through the same two sidecars (target ratio ≤ 1.5);
3. switch: a policy switch as the tool does it (derive the config from the policies, write it, wait
   until every sidecar serves it) against Envoy's raw reload of the same files (rename the listener
   and cluster files of every sidecar, poll until each accepted both) (target ratio ≤ 3);
4. memory: peak resident memory of the pytest process and of all sidecars and apps during the suite
   (with istiod: the control plane's etcd, kube-apiserver and istiod too);
5. with --control-plane=istiod (the default): the control plane's start from cached binaries and
   `pytest-istio-mtls build-istio` when its build is cached (the cold build is in docs/real-istio.md).
   Targets on 2 cores: the suite <= 60 s including the control plane's start, median switch <= 1.5 s.
   Envoy's raw reload is a file rename, which only the emulated control plane has: measured there.

Usage: sudo python benchmarks/local.py [--control-plane istiod|emulated] [--probes N] [--switches N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from pytest_istio_mtls.backends.local import LocalBackend, prober
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.model import Scenario, default_topology
from pytest_istio_mtls.options import Settings
from pytest_istio_mtls.scenario.loader import load_scenario

ROOT = Path(__file__).resolve().parents[1]
STRICT = """
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: app}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: frontend, to: backend, result: mtls}
"""


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tagged_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"imtls-" in command or b"/run/pytest-istio-mtls/" in command:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def suite(control_plane: str) -> dict[str, float]:
    """Run the built-in library once, sampling memory every 50 ms."""
    peaks = {"tool_mib": 0.0, "mesh_mib": 0.0}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "pytest", "--istio-scenarios", "builtin",
                                "--istio-backend=local", f"--istio-control-plane={control_plane}", "-q",
                                "-p", "no:cacheprovider", "-W", "ignore::UserWarning"],
                               cwd="/tmp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks["tool_mib"] = max(peaks["tool_mib"], rss_kib(process.pid) / 1024)
            peaks["mesh_mib"] = max(peaks["mesh_mib"], sum(rss_kib(p) for p in tagged_pids()) / 1024)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    summary = output.decode().strip().splitlines()[-1]
    if process.returncode != 0:
        raise SystemExit(f"the suite failed: {summary}")
    return {"suite_s": wall, **peaks, "suite_summary": summary}  # type: ignore[dict-item]


def probe_and_switch(control_plane: str, probes: int, switches: int, directory: Path) -> dict[str, float]:
    backend = LocalBackend(Settings(backend="local", control_plane=control_plane, timeout=30),
                           progress=lambda message: None)
    started = time.perf_counter()
    backend.start()
    start_s = time.perf_counter() - started
    try:
        path = directory / "strict.yaml"
        path.write_text(STRICT)
        strict = load_scenario(path)
        open_ = Scenario(name="open", path=path, topology=default_topology())
        backend.deploy(strict.topology, strict.mesh)
        backend.apply(strict)
        expectation = strict.expectations[0]

        # The tool: full probes, evidence and verdict included, one batch.
        batch = [Probe(expectation.source, expectation.target, expectation.port) for _ in range(probes)]
        started = time.perf_counter()
        observations = backend.probe(batch)
        verdicts = [decide(o) for o in observations]
        tool_probe = (time.perf_counter() - started) / probes
        assert all(v.result is not None and v.result.value == "mtls" for v in verdicts), verdicts[0].error

        # Raw curl through the same two sidecars.
        client = backend.pods["frontend.app"]
        curl = shutil.which("curl") or "curl"
        command = ["ip", "netns", "exec", client.netns, curl, "-s", "-o", "/dev/null", "-w", "%{http_code}",
                   f"http://{expectation.target.host}:{expectation.port.port}/headers"]
        started = time.perf_counter()
        for _ in range(probes):
            code = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            assert code == "200", code
        curl_probe = (time.perf_counter() - started) / probes

        # Policy switch, as the tool does it (every sidecar confirmed) ...
        tool_switch = []
        for index in range(switches):
            scenario = strict if index % 2 else open_
            started = time.perf_counter()
            backend.apply(scenario)
            tool_switch.append(time.perf_counter() - started)
        figures = {"start_s": start_s, "tool_probe_ms": tool_probe * 1000, "curl_probe_ms": curl_probe * 1000,
                   "probe_ratio": tool_probe / curl_probe, "tool_switch_ms": statistics.median(tool_switch) * 1000}
        if control_plane == "istiod":
            return figures
        # ... against Envoy's raw reload of the same change: rename the listener and cluster files of
        # every sidecar, poll until each has accepted both.
        sidecars = [pod for pod in backend.pods.values() if pod.files is not None]
        documents = {(pod.ref, kind): json.loads(path.read_text()) for pod in sidecars
                     for kind, path in (("lds", pod.files.lds), ("cds", pod.files.cds))}  # type: ignore[union-attr]
        accepted = "/stats?filter=^(listener_manager.lds|cluster_manager.cds).update_success$"
        raw_switch = []
        for index in range(switches):
            before = {pod.ref: prober.admin(pod.netns, accepted) for pod in sidecars}
            staged = []
            for pod in sidecars:
                assert pod.files is not None
                for kind, path in (("lds", pod.files.lds), ("cds", pod.files.cds)):
                    document = documents[(pod.ref, kind)]
                    document["version_info"] = f"raw-{index}"
                    temporary = path.with_suffix(".raw")
                    temporary.write_text(json.dumps(document))
                    staged.append((temporary, path))
            started = time.perf_counter()
            for temporary, path in staged:
                os.replace(temporary, path)
            waiting = set(before)
            while waiting:
                for pod in sidecars:
                    if pod.ref in waiting:
                        counts = prober.admin(pod.netns, accepted).split()
                        old = before[pod.ref].split()
                        if counts[1] != old[1] and counts[3] != old[3]:
                            waiting.discard(pod.ref)
            raw_switch.append(time.perf_counter() - started)
        return {**figures, "raw_switch_ms": statistics.median(raw_switch) * 1000,
                "switch_ratio": statistics.median(tool_switch) / statistics.median(raw_switch)}
    finally:
        backend.stop(keep=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=200, help="probes per measurement (default 200)")
    parser.add_argument("--switches", type=int, default=20, help="policy switches per measurement (default 20)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--control-plane", choices=("istiod", "emulated"), default="istiod",
                        help="what configures the sidecars (default istiod)")
    options = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the local backend needs root: sudo python benchmarks/local.py")
    import tempfile

    figures: dict[str, object] = {"control_plane": options.control_plane}
    if options.control_plane == "istiod":
        started = time.perf_counter()
        subprocess.run([shutil.which("pytest-istio-mtls") or "pytest-istio-mtls", "build-istio"], check=True,
                       capture_output=True)
        figures["build_warm_s"] = time.perf_counter() - started
    figures.update(suite(options.control_plane))
    with tempfile.TemporaryDirectory() as directory:
        figures.update(probe_and_switch(options.control_plane, options.probes, options.switches, Path(directory)))
    figures["cpus"] = os.cpu_count()
    if options.json:
        print(json.dumps(figures, indent=2))
        return
    istiod = options.control_plane == "istiod"
    if istiod:
        print(f"build-istio, cached   {figures['build_warm_s']:7.2f} s   (manifest and sha256 checked)")
        print(f"control plane start   {figures['start_s']:7.2f} s   (etcd, kube-apiserver, CRDs, istiod; "
              "cached binaries)")
    print(f"built-in suite        {figures['suite_s']:7.2f} s   ({figures['suite_summary']}; target <= "
          f"{60 if istiod else 20} s)")
    print(f"probe, tool           {figures['tool_probe_ms']:7.2f} ms  (evidence and verdict included)")
    print(f"probe, raw curl       {figures['curl_probe_ms']:7.2f} ms  (ip netns exec curl through the same sidecars)")
    print(f"probe ratio           {figures['probe_ratio']:7.2f}     (target <= 1.5)")
    print(f"switch, tool          {figures['tool_switch_ms']:7.2f} ms  (median; all sidecars confirmed"
          + ("; target <= 1500 ms)" if istiod else ")"))
    if not istiod:
        print(f"switch, raw Envoy     {figures['raw_switch_ms']:7.2f} ms  (median; same files renamed, "
              "acceptance polled)")
        print(f"switch ratio          {figures['switch_ratio']:7.2f}     (target <= 3)")
    print(f"peak memory, pytest   {figures['tool_mib']:7.1f} MiB")
    print(f"peak memory, mesh     {figures['mesh_mib']:7.1f} MiB (all sidecars and apps, RSS)")


if __name__ == "__main__":
    main()
