"""``reid demo``: synthetic source and target → the service → an adaptation job → a report.

:mod:`app.demo.run` orchestrates; :mod:`app.demo.plan` sizes the run; :mod:`app.demo.data`
draws the collections and measures the starting model; :mod:`app.demo.service` runs the
service in-process and :mod:`app.demo.client` speaks its HTTP API; :mod:`app.demo.watch`
follows the job; :mod:`app.demo.searches` queries the index; :mod:`app.demo.report` writes
the HTML page.
"""

from app.demo.client import ApiError, DemoError
from app.demo.plan import DemoOptions
from app.demo.run import run_demo

__all__ = ["ApiError", "DemoError", "DemoOptions", "run_demo"]
