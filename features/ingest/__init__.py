"""Ingestion: the data contract, validation and quarantine, hashed identifiers and erasure
tombstones, identity resolution, the event store and a customer's history read from it."""
