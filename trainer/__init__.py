"""The SpCL re-identification library: no web, database or queue imports."""
