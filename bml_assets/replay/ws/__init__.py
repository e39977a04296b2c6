"""The replay server's WebSocket side: USD-M combined streams over the synthetic
market (and a recorded file replayed in real time), with fault switches.

``streams.py`` names streams and paths and holds the frame type; ``synthetic.py``
makes the market's frames (depth, bookTicker, aggTrade, markPrice, forceOrder);
``recording.py`` replays a ``<local_ns> <json>`` recording and answers its depth
snapshots; ``service.py`` serves them with ``websockets`` and carries out the
WebSocket fault rules. ``ReplayServer`` (``server.py``) starts it beside the HTTP
side, on the same market, order book, clock and faults.
"""
