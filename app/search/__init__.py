"""Search indexes (their state and cache) and queries against them."""
