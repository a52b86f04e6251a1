"""Judging a probe on its evidence alone: ``observation`` is what a backend hands over (what the client saw, both
sidecars' stats and access logs, the peer identity, the capture), ``stats``, ``accesslog``, ``identity`` and
``capture`` read what a real istio-proxy and the local sidecars both produce, and ``verdict`` decides. Nothing here
reads the oracle or the expectations.
"""
