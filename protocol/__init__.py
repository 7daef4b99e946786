"""What the worker and the server say to each other, defined once and imported by both sides, and
what their processes tell a health check (protocol.liveness).

It imports nothing beyond the standard library, so a provider's worker needs none of the server's
dependencies. `VERSION` is the version of the node API both sides speak.
"""

VERSION = 1
