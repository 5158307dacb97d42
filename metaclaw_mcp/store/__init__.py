"""SQLite store: schema, migrations and async access."""
from .db import Database, apply_migrations, dumps, set_kv, utcnow

__all__ = ["Database", "apply_migrations", "dumps", "set_kv", "utcnow"]
