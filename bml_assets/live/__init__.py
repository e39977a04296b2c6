"""The live collector (SPEC §9, issue 10): a long-running process outside Dagster runs that
keeps the exchange's WebSocket streams, the local order books and the minute aggregation,
and reports to Dagster through the ledger. Each module's docstring says what it holds."""
