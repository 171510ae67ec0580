"""Sync's columnar hot path (issue #14, ADR 0010): a batch of one table's Kafka records as
columns, from the value bytes to the COPY text the merge reads.

The stages, one module each, in the order a batch goes through them:

- :mod:`engine.sync.decode_columns`: the records → one array per key column, write time,
  row marker and, per regular column, written/value/expiry (msgspec Structs generated from
  the table's schema; type conversions as Arrow kernels). What it does not take goes to the
  per-record decoder (:class:`engine.sync.decode.EventDecoder`, the slow lane), which gives the
  event or the dead letter with its reason;
- :mod:`engine.sync.reduce_columns`: per-cell last-write-wins over the columns and the slow
  lane's events (one numpy sort and the last of each run), the deletions, then the staged
  rows as COPY text built column-wise.

The stages of the per-event path live here too: :mod:`engine.sync.decode` (one
:class:`~engine.events.ChangeEvent` per record), :mod:`engine.sync.reduce`, and
:mod:`engine.sync.apply` (a batch of one table: prepare, then write), :mod:`engine.sync.worker`
(a Ray actor polling its Kafka partitions), :mod:`engine.sync.supervisor` (the detached actor
that assigns partitions and restarts workers). The per-event path
(with :meth:`engine.pg_writer.SyncWriter._row_lines`) stays: it is the oracle the columnar
path is tested against, and it still applies tables
whose cells sync must read back from Cassandra (non-frozen collections, durations:
:mod:`engine.readback`), Avro values, and every batch when ``sync.columnar`` is off.
"""
