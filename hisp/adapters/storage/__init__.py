"""Storage adapter: the durable message store, queue, audit log and tracking store (SQLAlchemy 2, Alembic).

- :class:`SqlStore` implements :class:`hisp.ports.MessageStore`, :class:`hisp.ports.Queue`,
  :class:`hisp.ports.AuditLog` and :class:`hisp.ports.TrackingStore` (timely-and-reliable tracking of
  outgoing messages, DN-7..DN-10); :meth:`SqlStore.open` migrates and opens a storage URL.
- :func:`upgrade` runs the migrations (at start-up); :func:`open_engine` and :func:`default_url` make engines
  (SQLite in WAL mode beside the config by default, ``postgresql+psycopg://...`` in production).
- :data:`TRANSITIONS` / :func:`check_transition`: the recipient state machine, as a table.

Spec: DESIGN.md sections 1-3, issue 5 ("Durable queue and pipeline"), issue 6 (tracking).
"""

from __future__ import annotations

from hisp.adapters.storage.engine import default_url, open_engine
from hisp.adapters.storage.migrate import current_revision, head_revision, upgrade
from hisp.adapters.storage.spool import Spool
from hisp.adapters.storage.states import TRANSITIONS, check_transition
from hisp.adapters.storage.store import DEFAULT_INLINE_MAX, SqlStore

__all__ = [
    "DEFAULT_INLINE_MAX",
    "TRANSITIONS",
    "Spool",
    "SqlStore",
    "check_transition",
    "current_revision",
    "default_url",
    "head_revision",
    "open_engine",
    "upgrade",
]
