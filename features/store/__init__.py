"""The feature store: feature definitions, the batch engines (DuckDB, Spark) and their store scan,
the streaming updater and the online store (SQLite, Redis)."""
