"""The Alembic environment of the store (``env.py``, ``versions/``), run by :func:`hisp.adapters.storage.upgrade`.

Spec: issue 5 ("SQLAlchemy 2 models and Alembic migrations").
"""
