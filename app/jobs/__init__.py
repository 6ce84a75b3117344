"""Adaptation jobs: the database state machine and the broker outbox."""
