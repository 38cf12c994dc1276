"""The store: one implementation of the money rules for SQLite and PostgreSQL (``ports.Store``).

``engine`` runs operations (transactions, reads, migrations) on either
database; ``accounts``, ``jobs``, ``deferred``, ``images``, ``lifecycle`` and ``videos`` hold the operations by
subject, each written once over the schema in ``tables.py``.
"""

from __future__ import annotations

from maskserve.frontend.adapters.store.accounts import AccountRows
from maskserve.frontend.adapters.store.deferred import DeferredRows
from maskserve.frontend.adapters.store.engine import MIGRATIONS, database_url
from maskserve.frontend.adapters.store.images import ImageRows
from maskserve.frontend.adapters.store.jobs import JobRows
from maskserve.frontend.adapters.store.lifecycle import LifecycleRows
from maskserve.frontend.adapters.store.videos import VideoRows
from maskserve.frontend.config import Settings

__all__ = ["MIGRATIONS", "SqlStore", "build_store", "database_url"]


class SqlStore(AccountRows, JobRows, DeferredRows, ImageRows, LifecycleRows, VideoRows):
    """Every operation of the store over one set of connections."""


def build_store(settings: Settings) -> SqlStore:
    """The store the settings name (not yet open): SQLite in the data directory, or PostgreSQL."""
    return SqlStore(database_url(settings.database_url, settings.database_path))
