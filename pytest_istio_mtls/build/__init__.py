"""Building what the backends run from the registries this project may use (the Go module proxy, PyPI): ``istio``
builds istiod, pilot-agent, kube-apiserver and etcd for the local backend (``pytest-istio-mtls build-istio``)."""
