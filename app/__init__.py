"""HTTP service: API, persistence and storage (built in later issues)."""
