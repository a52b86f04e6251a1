"""Building what the backends run from the registries this project may use (the Go module proxy, Debian packages,
PyPI): ``istio`` builds istiod, pilot-agent, kube-apiserver and etcd for the local backend (``build-istio``),
``kind`` (with ``images``) kind, the Kubernetes binaries and every image a kind cluster with Istio needs
(``build-kind``)."""
