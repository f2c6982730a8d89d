"""Data contract, validation, identity resolution, synthetic world and customer features."""
