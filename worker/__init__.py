"""Job execution: the Celery app and task (scale-out) and the embedded worker (one machine).

Both run :func:`worker.runner.execute_job`; the database row is the job, the broker only
delivers its id.
"""
