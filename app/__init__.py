"""The HTTP service and the domain it shares with the workers.

Layers, imports pointing down only:

- ``app.api``: FastAPI routes, thin (request in, domain call, response out);
- ``app.datasets``, ``app.jobs``, ``app.search``: one package per domain, holding its
  database state machine and storage rules; ``worker`` imports these too;
- ``app.core``: database, ORM rows, settings, storage paths, the loading cache.

``app.main.create_app`` assembles the routes; it is given a job dispatcher
(``app.jobs.dispatch``) and never imports ``worker``.
"""
