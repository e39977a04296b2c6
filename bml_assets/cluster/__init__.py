"""The local cluster for tests and demos: PostgreSQL, Redis, moto's S3 server and Celery workers on 127.0.0.1.

A room of its own (ARCHITECTURE.md): it starts and stops the distributed parts that
``deploy/`` configures for real hosts, so the scale-out path (SPEC §10) can be run and
tested on one machine. One module per service, and ``local`` for the whole cluster
(``bml cluster up`` / ``down`` / ``run``). Nothing here is used by the product's own code
paths: they reach these services through ``BML_*`` settings and ``DAGSTER_HOME`` alone.
"""
