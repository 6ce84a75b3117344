"""Shared by the API and the workers: database, ORM rows, settings, storage paths."""
