"""Node configuration: one frozen value with a limit on everything, unit last in the name."""

from dataclasses import dataclass, fields

__all__ = ["Config", "ConfigError"]


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent with another."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    # Failure detection and elections. Followers wait a randomized timeout in
    # [election_timeout_ms, 2 * election_timeout_ms) before campaigning.
    election_timeout_ms: float = 1000.0
    heartbeat_interval_ms: float = 100.0
    # Replication flow control.
    append_batch_bytes_max: int = 1 << 20
    append_entries_max: int = 512
    # Appends in flight per follower. Small on purpose: while they are in flight, new
    # entries accumulate and leave together in the next append (group commit).
    inflight_appends_max: int = 2
    inflight_bytes_max: int = 32 << 20
    # Nothing larger crosses a connection; bigger payloads are chunked.
    message_bytes_max: int = 64 << 20
    # The biggest transaction (its page images, one raft entry) a leader commits: at
    # COMMIT, one whose pages spilled to the WAL exceed it is rolled back and refused
    # with SQLITE_TOOBIG. Peers accept appends up to twice this (raftlite.io.transport),
    # above message_bytes_max: a transaction is built from many client requests.
    transaction_bytes_max: int = 128 << 20
    # Every queue is bounded.
    outbound_queue_messages_max: int = 4096
    client_queue_requests_max: int = 1024
    # Snapshots and log compaction: snapshot once this many entries were applied since
    # the last one, keeping this many entries before it for lagging followers.
    snapshot_threshold_entries: int = 1024
    snapshot_trailing_entries: int = 128
    # ... and only once the entries applied since the last snapshot hold at least
    # snapshot_log_ratio times as many bytes as that snapshot, or snapshot_log_bytes_max,
    # whichever is smaller: snapshot cost stays a fraction of the writes, and the log
    # kept in memory stays bounded. (A kvwrite logs ~9x the bytes it adds to the
    # database, so with a ratio of 1 a growing database was snapshotted every few
    # hundred milliseconds under load; measured: p99 41 ms at 16 clients, 17 ms with 8.)
    snapshot_log_ratio: int = 4
    snapshot_log_bytes_max: int = 64 << 20
    snapshot_chunk_bytes: int = 256 << 10
    # Durable raft log segments roll over at this size.
    segment_bytes_max: int = 8 << 20
    # A promotion to voter waits at most this long for the node to catch up.
    promotion_timeout_ms: float = 30_000.0
    # A leader whose storage has been failing (ENOSPC, EIO) this long hands leadership to
    # its most caught-up voter and steps down: it can neither make entries durable nor
    # apply them, so its clients would wait for nothing. Long enough for a retry to clear
    # a passing error, short enough that clients see a new leader inside their timeouts.
    storage_failure_step_down_ms: float = 2_000.0
    # An interactive transaction with no request for this long is rolled back (it may
    # hold the write lock, and its client may be gone).
    transaction_idle_timeout_ms: float = 30_000.0
    # SQLite connections the leader opens for clients (one per client and database, as
    # dqlite does: each client's pragmas and temp tables are its own). Each costs two
    # file descriptors and up to its page cache (2 MiB by default). At the limit, the
    # longest-idle client outside a transaction gives its connections up (its next
    # request is refused with 10250, so it reconnects); when none is idle, a new one is
    # refused with a clear error.
    client_connections_max: int = 256

    def validate(self) -> "Config":
        """Raise ConfigError naming the first bad field; return self for chaining."""
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{field.name} must be a number, got {value!r}")
            if value <= 0:
                raise ConfigError(f"{field.name} must be positive, got {value!r}")
        if self.snapshot_trailing_entries >= self.snapshot_threshold_entries:
            raise ConfigError("snapshot_trailing_entries must be below snapshot_threshold_entries")
        if self.heartbeat_interval_ms * 2 > self.election_timeout_ms:
            raise ConfigError(
                "heartbeat_interval_ms must be at most half of election_timeout_ms "
                f"(got {self.heartbeat_interval_ms} and {self.election_timeout_ms}): "
                "otherwise a single late heartbeat triggers an election"
            )
        if self.append_batch_bytes_max > self.message_bytes_max:
            raise ConfigError("append_batch_bytes_max must not exceed message_bytes_max")
        if self.inflight_bytes_max < self.append_batch_bytes_max:
            raise ConfigError("inflight_bytes_max must hold at least one full append batch")
        return self
