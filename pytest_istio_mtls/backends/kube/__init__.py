"""Shared machinery of the backends that drive a real Kubernetes cluster with Istio (kind, existing).

One job per module: tools (verified downloads), versions (what to install), manifests (what to
apply), naming (per-run namespaces), client (the API), workloads, istio, cluster (kind), apply
(policies in order), propagation (proxies enforce them), probes (the curl batch), evidence
(stats, logs, captures), observe (a batch of probes into observations), diagnostics.
"""
