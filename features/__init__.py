"""Data in, features out: ingestion (`ingest/`), the feature store (`store/`) and, apart from the
product's data path, the synthetic world with its ground truth (`synthetic/`)."""
