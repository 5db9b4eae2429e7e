"""Programs that run inside pod namespaces: ``python -m lab.workloads.<program>``.

- ``http_echo``: HTTP/1.1 server answering a fixed text plus the client address it saw.
- ``tcp_echo``: TCP server that echoes bytes back (or swallows them and reports a digest).
- ``client``: HTTP requests and bulk transfers with checksums.

They use only the standard library (plus uvloop when present), so they start fast.
"""
