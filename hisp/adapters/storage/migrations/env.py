"""Alembic environment: migrates the connection that :func:`hisp.adapters.storage.upgrade` passes in.

``upgrade`` runs inside a transaction it opened (and, on PostgreSQL, under an advisory lock, so that nodes
starting together migrate one at a time). Offline mode (``alembic upgrade --sql``) renders SQL for the
``sqlalchemy.url`` of the Alembic config.
"""

from __future__ import annotations

from alembic import context

from hisp.adapters.storage.models import Base

config = context.config
connection = config.attributes.get("connection")

if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif connection is None:
    raise RuntimeError("run migrations with hisp.adapters.storage.upgrade(url), which passes a connection")
else:
    context.configure(connection=connection, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
