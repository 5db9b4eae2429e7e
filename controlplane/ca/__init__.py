"""The control plane's CA: Istio's ``CreateCertificate`` with node authentication.

- :mod:`~controlplane.ca.authority`: keys, the chain to the root, signing CSRs.
- :mod:`~controlplane.ca.credentials`: standalone node credentials (signed tokens).
- :mod:`~controlplane.ca.auth`: callers (node credential or TokenReview), impersonation.
- :mod:`~controlplane.ca.service`: one request, authenticated, checked, signed, counted.
"""
