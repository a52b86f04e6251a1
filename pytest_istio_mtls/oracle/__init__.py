"""The oracle: Istio's rules, in one place. ``mtls`` says what a client experiences on a connection (PeerAuthentication,
auto mTLS, the outcome), ``destinationrules`` which DestinationRule and TLS settings a client sidecar uses, ``authz``
what AuthorizationPolicy decides, and ``chain`` the decision chain that ``explain`` prints. Rule ids refer to
docs/semantics.md, which cites the Istio sources behind each. It predicts and explains; it never decides a verdict.
"""
