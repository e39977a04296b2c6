"""The replay room: a local Binance (Vision archive + USD-M REST) fed by a
deterministic synthetic market and/or real files, with fault switches. Tests, the
demo and the benchmarks run against it instead of the internet.

One job per module, bottom to top:

- ``clock.py``: market time (fixed, or running at a speed) and the wall clock
  the limits count.
- ``columns.py``: the exact-unit column type and how its values print.
- ``market.py``: the synthetic market's truth per symbol and day, and its universe.
- ``vision_archive.py``: which Vision files the market publishes, their names
  and URL layout.
- ``render.py``: columns → CSV → zip → CHECKSUM bytes.
- ``real_files.py``: real files from a folder, indexed by request path.
- ``rest/``: the USD-M REST side (``endpoints``, ``limits``, ``log``, ``service``,
  ``responses``, ``paths``).
- ``faults.py``: the fault rules.
- ``server.py``: HTTP serving and routing, applying the faults, ``serve()``.

WebSocket streams (issue 10: ``/public/stream`` and ``/market/stream`` over the same
market and clock, and a recorded file replayed in real time) belong in a ``ws/``
subpackage beside ``rest/``, reading ``market.py`` and ``clock.py`` the way
``rest/endpoints.py`` does; ``server.py`` only routes the upgrade to it.

The room imports ``bml_assets.domain`` and nothing else of the project: it is a
test double for ``sources/``, so it shares none of the client's code (a shared
URL builder or weight table would hide the client's mistakes).
"""
