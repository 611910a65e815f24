"""hisp: a Direct Secure Messaging HISP (Health Information Service Provider).

See DESIGN.md for the layers; :mod:`hisp.core` holds the pure security core.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
