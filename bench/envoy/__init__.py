"""A pair of Envoy proxies doing an mTLS tunnel: the sidecar-style reference data path.

``pki`` makes the certificates, ``bootstrap`` the static configurations (pure
functions of addresses and file paths), ``proxy`` runs Envoy inside a namespace.
"""
