"""What a live run exposes to another user of the machine: nothing. Istio makes each sidecar's SDS socket 0666, so
the directories above it must keep others out; here an unprivileged user (nobody) tries every SDS socket, key,
token and CA file of a running mesh, and must fail on each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CONTROL_PLANE
from .lab import Lab
from .test_faults import deploy

# Run as nobody: for each path, can it be opened (files) or connected to (sockets)? Prints a JSON verdict per path.
TRY = """
import json, os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
found = {}
for path in json.loads(sys.stdin.read()):
    try:
        if path.endswith("socket"):
            s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(path); s.close()
        else:
            open(path, "rb").read(1)
        found[path] = "REACHED"
    except OSError as exc:
        found[path] = type(exc).__name__
print(json.dumps(found))
"""


def secrets_of(run_directory: Path) -> list[str]:
    """As root: every SDS socket, private key, token and CA file of the run."""
    found = []
    for root, _, files in os.walk(run_directory):
        for name in files:
            path = os.path.join(root, name)
            if name == "socket" or name.endswith((".pem", "-key.pem", ".key")) or "token" in name:
                found.append(path)
    return sorted(found)


@pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="SDS sockets exist with real pilot-agents (istiod) only")
def test_another_user_reaches_no_socket_key_token_or_ca_file_of_a_live_run(lab: Lab) -> None:
    deploy(lab)
    state = lab.backend.state
    assert state is not None
    targets = secrets_of(state.directory)
    sockets = [p for p in targets if p.endswith("socket")]
    assert sockets and any("key" in Path(p).name for p in targets), targets  # the test looks at the real thing
    for path in sockets:  # root reaches them: the sockets are live
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(path)
        probe.close()
    done = subprocess.run([sys.executable, "-c", TRY], input=json.dumps(targets), capture_output=True, text=True,
                          check=True)
    reached = {path: how for path, how in json.loads(done.stdout).items() if how == "REACHED"}
    assert reached == {}, f"another user reached: {sorted(reached)}"


@pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="the emulated control plane runs no API server or istiod")
def test_a_pod_reaches_only_istiods_mtls_port_and_nobody_anonymous_reaches_the_api_server(lab: Lab) -> None:
    """Pods need istiod's mTLS xDS port (15012) and nothing else of the control plane: not the API server (6443),
    not plaintext xDS (15010) nor the webhook port (15017). The API server answers no anonymous request."""
    from pytest_istio_mtls.backends.local.pods import BRIDGE_IP
    from pytest_istio_mtls.backends.local.system import in_netns

    deploy(lab)
    pod = lab.backend.pods["curl.legacy"]

    def reachable(port: int) -> bool:
        def connect() -> bool:
            try:
                socket.create_connection((BRIDGE_IP, port), timeout=2).close()
            except OSError:
                return False
            return True
        return in_netns(pod.netns, connect)

    assert {port: reachable(port) for port in (15012, 6443, 15010, 15017)} == {
        15012: True, 6443: False, 15010: False, 15017: False}
    relay = lab.backend.istiod.control.relay if lab.backend.istiod is not None else None
    assert relay is not None
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"https://127.0.0.1:{relay.port}/api/v1/namespaces", context=context, timeout=5)
    assert refused.value.code == 401  # no certificate, no token: anonymous, turned off
