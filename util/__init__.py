"""Utilities: seeding, metrics, image I/O, config loading, logging."""
