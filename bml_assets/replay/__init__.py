"""The replay room: a local Binance (Vision archive + USD-M REST and streams) fed by a
deterministic synthetic market and/or real files, with fault switches. Tests, the
demo and the benchmarks run against it instead of the internet.

One job per module, bottom to top:

- ``clock.py``: market time (fixed, or running at a speed) and the wall clock
  the limits count.
- ``columns.py``: the exact-unit column type and how its values print.
- ``market.py``: the synthetic market's truth per symbol and day, and its universe.
- ``order_book.py``: the market's depth book at any instant, update by update.
- ``vision_archive.py``: which Vision files the market publishes, their names
  and URL layout.
- ``render.py``: columns → CSV → zip → CHECKSUM bytes.
- ``real_files.py``: real files from a folder, indexed by request path.
- ``rest/``: the USD-M REST side (``endpoints``, ``limits``, ``log``, ``service``,
  ``responses``, ``paths``).
- ``ws/``: the WebSocket side (``streams``: names, paths and frames;
  ``synthetic``: the market's streams; ``recording``: a recorded file replayed in
  real time; ``service``: the ``websockets`` server and its faults), reading
  ``market.py``, ``order_book.py`` and ``clock.py`` the way ``rest/`` does.
- ``faults.py``: the fault rules (HTTP and WebSocket).
- ``hosts.py``: the host names both sides answer (the guard against web pages).
- ``server.py``: HTTP serving and routing, applying the faults, starting the
  WebSocket side beside it, ``serve()``.

The room imports ``bml_assets.domain`` and nothing else of the project: it is a
test double for ``sources/``, so it shares none of the client's code (a shared
URL builder or weight table would hide the client's mistakes).
"""
