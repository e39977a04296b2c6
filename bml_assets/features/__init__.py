"""Pure transforms from parsed source tables to the lake's tables (Arrow in, Arrow out).

One module per job: ``klines`` (the four 1m kline streams), ``trade_flow`` (aggTrades
per minute), ``book`` (bookTicker per minute), ``metrics`` (5-minute snapshots as
observations), ``funding`` (settlements and the funding step functions),
``slow_series`` (the as-of join with its forward-fill bound), ``minute_view`` (the
minute view's assembly), ``coverage`` (how much of its day a stream table covers, and
filling it from a second source) and ``timegrid`` (the Arrow/numpy time helpers they share;
the minute arithmetic itself is ``domain/minutes.py``). No I/O, no Dagster.
"""
