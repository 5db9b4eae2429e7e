"""ztunnel's proxy: HBONE framing, the connection pool, and (later) the listeners."""
