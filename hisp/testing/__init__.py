"""Public test helpers: a development PKI builder, fixture loaders, and loopback servers.

- :mod:`hisp.testing.pki`: :class:`~hisp.testing.pki.TestPKI` and hand-built messages.
- :mod:`hisp.testing.http`: an HTTP server whose answers each test sets (bundles, CRLs, AIA).
- :mod:`hisp.testing.bind`: a real BIND ``named`` authoritative for zones given as text.
- :mod:`hisp.testing.slapd`: a real OpenLDAP ``slapd`` loaded from LDIF text.
- :mod:`hisp.testing.process`: free ports, dead targets (:func:`~hisp.testing.process.refused_port`,
  :func:`~hisp.testing.process.black_hole`) and the managed child process both servers use.
- :mod:`hisp.testing.responder`: our own DNS responder in a background thread.
- :mod:`hisp.testing.hostile_dns`: a scriptable hostile DNS server (SERVFAIL, malformed CERT, TXT floods, AD).
- :mod:`hisp.testing.hosting`: a hosted domain's certificates and configuration file on disk.
- :mod:`hisp.testing.fixtures`: the pytest fixtures ``bind_factory`` and ``slapd_factory``.
"""
