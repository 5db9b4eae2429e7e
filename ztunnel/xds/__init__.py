"""The xDS edge: Istio's workload API messages become ztunnel's domain types here."""
