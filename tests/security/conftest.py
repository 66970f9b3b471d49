"""The security battery: each test is one attack, named by it, against real gateways and sidecars.

Fixtures shared by the battery's modules live here; each module covers one family of attacks
(paths, bodies, headers, slow clients, HTTP/2 streams, admin port, keys, auth, leaks).
"""
