"""The live collector's core (issue 10, SPEC §9), without any networking.

A room of its own above ``lake/`` and ``sources/`` (ARCHITECTURE.md): no Dagster; it
reports through the ledger (the ``live_1m`` partitions and their provenance).

Modules: ``frames`` (one parser per message type, the typed errors), ``book`` (the local
order book), ``aggregate`` (per-minute accumulation, coverage, the row), ``core``
(``LiveCore``, the handler), ``spool`` (the raw spool), ``sink`` (closed minutes into the
lake), ``rebuild`` (spool or recording lines through the same path; ``bml live-rebuild``).

Wiring a collector process to it
--------------------------------
One ``LiveCore`` per shard of symbols, fed from one thread (the event loop)::

    lake, ledger = Lake.from_settings(settings), Ledger(settings.state_url)  # ledger.init() first
    spool = SpoolWriter(spool_store(lake.store, settings.host_dir), started_ns=time.time_ns())
    core = LiveCore(symbols, sink=LiveSink(lake, ledger), spool=spool)

    # per WebSocket frame, as received (text or bytes), on the /public or /market connection:
    core.on_frame("public", raw, time.time_ns(), connection=conn_id)
    # per connection event (conn_id: any JSON-able id, new for each new socket; a rotation
    # that opens the new socket before closing the old one just uses two ids: repeats
    # delivered by both are recognised by their ids and dropped):
    core.on_connection("market", "connected", time.time_ns(), connection=conn_id)
    core.on_connection("market", "dropped", time.time_ns(), reason="ping timeout", connection=conn_id)
    # per silent stream (the watchdog; name as subscribed), when it starts and when it ends:
    core.on_silence("btcusdt@bookTicker", True, time.time_ns())
    # about once a second: the exchange clock (local + measured offset), and the offset
    # (exchange − local, ms) when just measured against /fapi/v1/time (every minute):
    core.on_tick(now_exchange_ms, clock_offset_ms=offset_or_None)   # closes due minutes, commits
    # after each tick: fetch a depth snapshot for these (GET /fapi/v1/depth?symbol=S&limit=1000
    # through the one REST client and its budget) and hand the body over as received:
    for symbol in core.snapshots_needed(time.time_ns()):
        core.on_snapshot(symbol, body_text, time.time_ns())
    # at shutdown (SIGTERM, --duration): close every open minute, commit, then
    core.flush(); spool.close()

``on_tick`` and ``flush`` commit through the lake (one commit per symbol-day with new
closed minutes: tens of ms); run them in an executor if the loop must not wait, but
never concurrently with the other calls. A failed commit (a full disk) keeps its rows
and is retried on the next tick. Nothing raises out of ``on_frame``, ``on_snapshot``,
``on_connection`` or ``on_silence`` for bad input: it is logged (logger ``bml.live``)
and counted in ``core.stats``. A fetch that fails (a REST 418) needs nothing: the symbol
is offered again by ``snapshots_needed`` after ``core.SNAPSHOT_RETRY_NS``.
"""
