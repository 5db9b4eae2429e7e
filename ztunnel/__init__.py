"""ztunnel: the node-local L4 proxy (HBONE over mTLS, L4 policy, telemetry)."""
