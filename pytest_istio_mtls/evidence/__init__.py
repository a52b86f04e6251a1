"""Evidence readers shared by every backend: Envoy stats, access logs, peer identity, packet captures.

They parse what a real istio-proxy and the local Envoy sidecars both produce, so a verdict reached
on the local backend rests on the same readings as one reached on a real cluster.
"""
