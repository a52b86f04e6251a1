"""``pytest-istio-mtls crosscheck``: the oracle measured against real istiod on generated scenarios.

``generate`` holds the Hypothesis strategies, ``runner`` the loop on the local backend, ``cli`` the command.
Importing this package needs Hypothesis (the ``local`` extra); ``pytest_istio_mtls.cli`` imports it lazily.
"""
