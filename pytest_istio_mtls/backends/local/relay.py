"""A loopback TCP relay from this process's network namespace into a run's hub namespace.

The local control plane (etcd, kube-apiserver, istiod) lives inside the run's hub namespace, like a
cluster's control plane on its own network, so the root namespace is never configured and two runs
never compete for ports. The plugin's Kubernetes client reaches the API server through this relay:
a listener on 127.0.0.1:<free port> here whose every connection is joined byte for byte to a socket
opened inside the hub (TLS passes through untouched).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from .system import netns_socket


class Relay:
    def __init__(self, netns: str, target: tuple[str, int]) -> None:
        self.netns = netns
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"relay-{netns}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = netns_socket(self.netns)
            upstream.settimeout(10)
            upstream.connect(self.target)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        selector = selectors.DefaultSelector()
        selector.register(client, selectors.EVENT_READ, upstream)
        selector.register(upstream, selectors.EVENT_READ, client)
        try:
            while not self._closed.is_set():
                for key, _ in selector.select(timeout=1.0):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
