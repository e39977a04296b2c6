"""A local Binance-Vision-compatible HTTP server fed by a deterministic synthetic
market (``market.py``), with real-file serving and fault switches (``server.py``);
tests, the demo and the benchmarks run against it instead of the internet."""
