"""``reid demo``: synthetic source and target → the service → an adaptation job → a report.

:mod:`demo.run` orchestrates; :mod:`demo.plan` sizes the run; :mod:`demo.data`
draws the datasets and measures the starting model; :mod:`demo.service` runs the
service in-process and :mod:`demo.client` speaks its HTTP API; :mod:`demo.watch`
follows the job; :mod:`demo.searches` queries the index; :mod:`demo.report` writes
the HTML page.
"""

from demo.client import ApiError, DemoError
from demo.plan import DemoOptions
from demo.run import run_demo

__all__ = ["ApiError", "DemoError", "DemoOptions", "run_demo"]
