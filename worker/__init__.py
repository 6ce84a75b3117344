"""Celery tasks that run trainer jobs (built in later issues)."""
