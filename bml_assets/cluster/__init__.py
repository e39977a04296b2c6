"""The local cluster for tests and demos: PostgreSQL, Redis, moto's S3 server, Celery workers, on 127.0.0.1."""
