"""The REST side of the replay server: Binance USD-M answers for the synthetic market.

All without sockets; ``server.py`` routes ``/fapi/...`` and ``/futures/data/...``
to ``RestService`` (``service.py``), which admits a request under the limits
(``limits.py``: weights, the per-IP window, 429 then the 418 ban), has
``RestApi`` answer it (``endpoints.py``: the endpoints over the market at the
clock's now), and logs it (``log.py``). The answer and error forms live in
``responses.py``, the REST URL layout in ``paths.py``.
"""
