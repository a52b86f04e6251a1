"""The local backend: real Envoy sidecars in Linux network namespaces (needs root).

``backend`` is the ``Backend`` (lifecycle, policies in force); its parts are ``pods`` (network namespaces,
interception, hosts files, the processes in a pod, each sidecar's configuration), ``probing`` (one probe at a
time, joined to its evidence through conntrack) and ``logs`` (the sidecars' access logs, diagnostics). The
control plane is ``controlplane`` + ``istiod`` (real istiod, kube-apiserver, etcd) with ``agent`` (pilot-agent),
``kubelet`` and ``routing``; ``envoy`` writes the emulated control plane's configurations.
"""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
