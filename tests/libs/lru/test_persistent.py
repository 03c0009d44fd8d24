"""PersistentLRU: restarts restore entries, values, capacity and exact recency order; damaged
files are cut (a torn log tail) or refused (a snapshot, a log damaged before records that were
written after it was durable), never trusted."""

from __future__ import annotations

import logging
import os
import pickle
import random
import re
import struct
import threading
import zlib
from pathlib import Path

import pytest

from libs.lru import (
    CacheBroken,
    DirectoryLocked,
    LogCorrupt,
    PersistentLRU,
    SnapshotCorrupt,
)
from libs.lru import persistent as persistent_module
from libs.lru.logfile import HEADER_SIZE as LOG_HEADER_SIZE
from libs.lru.logfile import Op, encode_record, log_path
from libs.lru.persistent import set_aside


def live_log(directory: Path) -> Path:
    logs = sorted(directory.glob("log.*"))
    assert len(logs) == 1, logs
    return logs[0]


def reopened(directory: Path, capacity: int = 4, **kw: object) -> list[tuple[object, object]]:
    with PersistentLRU(directory, capacity, **kw) as c:  # type: ignore[arg-type]
        return c.items()


def test_restart_restores_entries_values_capacity_and_order(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        for k in "abcde":
            c.put(k, {"value": k * 3})
        assert c.get("c") == {"value": "ccc"}  # a hit is use: c becomes most recent
        c.put("b", [1, 2])  # overwrite is use too
        c.delete("d")
        expected = c.items()
    assert [k for k, _ in expected] == ["e", "c", "b"]
    with PersistentLRU(tmp_path, 4) as c:
        assert c.items() == expected
        assert c.capacity == 4
        assert c.recovery.replayed_records == 8
        c.put("x", 1)
        c.put("y", 2)  # evicts e, the least recently used after the restart
        assert [k for k, _ in c.items()] == ["c", "b", "x", "y"]


def test_misses_peeks_and_contains_write_nothing(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
        size = live_log(tmp_path).stat().st_size
        assert c.get("zzz") is None
        assert c.peek("a") == 1
        assert "a" in c and len(c) == 1
        assert c.delete("zzz") is False
        assert live_log(tmp_path).stat().st_size == size
        c.get("a")
        assert live_log(tmp_path).stat().st_size > size


def test_stats_count_this_session_only(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 2) as c:
        c.put(1, 1)
        c.get(1)
        c.get(2)
    with PersistentLRU(tmp_path, 2) as c:
        s = c.stats()
        assert (s.hits, s.misses, s.size, s.capacity) == (0, 0, 1, 2)


def test_compaction_rotates_the_log_and_keeps_the_state(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 8, snapshot_every=10) as c:
        for i in range(35):
            c.put(i % 11, i)
            c.get((i * 7) % 11)
        expected = c.items()
        generation = c.generation
    assert generation > 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "lock",
        log_path(tmp_path, generation).name,
        "snapshot",
    ]
    with PersistentLRU(tmp_path, 8) as c:
        assert c.items() == expected
        assert c.recovery.replayed_records < 10


def test_explicit_snapshot_leaves_an_empty_log(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        for k in range(5):
            c.put(k, k)
        c.snapshot()
        assert live_log(tmp_path).stat().st_size == LOG_HEADER_SIZE
        expected = c.items()
    with PersistentLRU(tmp_path, 3) as c:
        assert c.items() == expected
        assert c.recovery.snapshot_entries == 3 and c.recovery.replayed_records == 0


def test_clear_is_durable(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        c.put(1, 1)
        c.clear()
        c.put(2, 2)
    assert reopened(tmp_path, 3) == [(2, 2)]


def test_reopening_with_another_capacity_resizes_durably(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 5) as c:
        for k in range(5):
            c.put(k, k)
    with PersistentLRU(tmp_path, 2) as c:
        assert c.capacity == 2
        assert c.items() == [(3, 3), (4, 4)]
    with PersistentLRU(tmp_path, 2) as c:
        assert c.items() == [(3, 3), (4, 4)]
    with PersistentLRU(tmp_path, 10) as c:
        for k in range(5, 10):
            c.put(k, k)
        assert len(c) == 7


def test_a_second_open_of_the_same_directory_is_refused(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 2), pytest.raises(DirectoryLocked, match=str(tmp_path)):
        PersistentLRU(tmp_path, 2)
    PersistentLRU(tmp_path, 2).close()


def test_closed_cache_refuses_operations(tmp_path: Path) -> None:
    c: PersistentLRU[str, int] = PersistentLRU(tmp_path, 2)
    c.close()
    c.close()  # idempotent
    for op in (lambda: c.put("a", 1), lambda: c.get("a"), lambda: c.items(), c.snapshot):
        with pytest.raises(ValueError, match="closed"):
            op()


def test_unpicklable_value_changes_nothing(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 2) as c:
        c.put("a", 1)
        size = live_log(tmp_path).stat().st_size
        with pytest.raises(TypeError, match="picklable"):
            c.put("b", lambda: None)
        assert c.items() == [("a", 1)]
        assert live_log(tmp_path).stat().st_size == size
    assert reopened(tmp_path, 2) == [("a", 1)]


@pytest.mark.parametrize("bad", [0, -3, 2.0, None])
def test_bad_arguments_are_rejected(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="capacity"):
        PersistentLRU(tmp_path, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="snapshot_every"):
        PersistentLRU(tmp_path, 2, snapshot_every=bad)  # type: ignore[arg-type]


# --- damaged log tails ----------------------------------------------------------------------


def _two_sessions(tmp_path: Path) -> tuple[list[tuple[object, object]], int, int]:
    """Write ops; return (state before the last op, log size before it, log size after it)."""
    with PersistentLRU(tmp_path, 4) as c:
        for k in range(6):
            c.put(k, "v" * (k + 1))
        c.get(3)
        before = c.items()
        size_before = live_log(tmp_path).stat().st_size
        c.put("last", b"x" * 40)
        size_after = live_log(tmp_path).stat().st_size
    return before, size_before, size_after


def test_every_torn_length_of_the_last_record_is_dropped(tmp_path: Path) -> None:
    before, size_before, size_after = _two_sessions(tmp_path)
    original = live_log(tmp_path).read_bytes()
    for cut in range(size_before + 1, size_after):
        live_log(tmp_path).write_bytes(original[:cut])
        with PersistentLRU(tmp_path, 4) as c:
            assert c.items() == before, cut
            assert c.recovery.dropped_bytes == cut - size_before
            assert "torn" in (c.recovery.problem or "")
        assert live_log(tmp_path).stat().st_size == size_before  # cut back to the last good record


def test_every_flipped_byte_of_the_last_record_is_detected(tmp_path: Path) -> None:
    before, size_before, size_after = _two_sessions(tmp_path)
    original = live_log(tmp_path).read_bytes()
    for pos in range(size_before, size_after):
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        live_log(tmp_path).write_bytes(bytes(damaged))
        assert reopened(tmp_path) == before, pos
        assert live_log(tmp_path).stat().st_size == size_before


def _six_puts(directory: Path, sync: str) -> tuple[list[int], list[tuple[object, object]]]:
    """Six puts in one session; returns each record's start offset and the state before the last."""
    starts = []
    with PersistentLRU(directory, 8, sync=sync) as c:  # type: ignore[arg-type]
        for k in range(6):
            starts.append(live_log(directory).stat().st_size)
            if k == 5:
                before = c.items()
            c.put(k, f"value {k}")
    return starts, before


@pytest.mark.parametrize("sync", ["always", "writes"])
def test_every_flipped_byte_before_the_last_record_is_refused_as_corruption(
    tmp_path: Path, sync: str
) -> None:
    starts, before = _six_puts(tmp_path, sync)
    log = live_log(tmp_path)
    original = log.read_bytes()
    for pos in range(len(original)):
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        log.write_bytes(bytes(damaged))
        if pos >= starts[-1]:  # the last record: a torn tail, cut back
            assert reopened(tmp_path, 8) == before, pos
            assert log.stat().st_size == starts[-1]
            continue
        with pytest.raises(LogCorrupt) as err:
            PersistentLRU(tmp_path, 8)
        message = str(err.value)
        assert str(log) in message, pos
        if pos >= LOG_HEADER_SIZE:
            record = max(s for s in starts if s <= pos)
            assert re.search(rf"at offset {record}\b", message), (pos, message)
            assert "not a torn tail" in message, (pos, message)
        assert log.read_bytes() == bytes(damaged), pos  # nothing was changed
    log.write_bytes(original)
    assert len(reopened(tmp_path, 8)) == 6


def test_a_flipped_byte_in_a_never_synced_log_cuts_there_and_says_how_much_was_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # sync="never" promises nothing after a power loss, which can leave exactly this: damage,
    # then records the disk happened to persist. No record proves the damaged bytes durable.
    starts, _ = _six_puts(tmp_path, "never")
    log = live_log(tmp_path)
    original = log.read_bytes()
    for pos in range(LOG_HEADER_SIZE, len(original)):
        damaged = bytearray(original)
        damaged[pos] ^= 0x5A
        log.write_bytes(bytes(damaged))
        index = sum(1 for s in starts if s <= pos) - 1  # the damaged record
        caplog.clear()
        with caplog.at_level(logging.WARNING), PersistentLRU(tmp_path, 8) as c:
            assert c.items() == [(k, f"value {k}") for k in range(index)], pos
            assert c.recovery.dropped_records == 5 - index
            assert c.recovery.dropped_bytes == len(original) - starts[index]
        assert "dropped" in caplog.text
    log.write_bytes(original)


def _hits_after_puts(directory: Path, sync: str) -> tuple[list[int], list[tuple[object, object]]]:
    """Puts a, b, c then hits a, b, c, a; returns where each hit's record starts, and the state
    after the first hit."""
    with PersistentLRU(directory, 8, sync=sync) as c:  # type: ignore[arg-type]
        for k in "abc":
            c.put(k, k * 3)
        starts = []
        for k in "abca":
            starts.append(live_log(directory).stat().st_size)
            c.get(k)
            if len(starts) == 1:
                after_first_hit = c.items()
    return starts, after_first_hit


def test_a_hole_among_unsynced_hits_is_a_power_loss_tail_not_corruption(tmp_path: Path) -> None:
    # With sync="writes" hits are not synced: a power loss can persist a later hit's page and
    # lose an earlier one. Only recency is at stake; the log is cut at the hole.
    starts, after_first_hit = _hits_after_puts(tmp_path, "writes")
    log = live_log(tmp_path)
    data = bytearray(log.read_bytes())
    data[starts[1] : starts[2]] = bytes(starts[2] - starts[1])  # the second hit never reached the disk
    log.write_bytes(bytes(data))
    with PersistentLRU(tmp_path, 8) as c:
        assert c.items() == after_first_hit
        assert c.recovery.dropped_records == 2
    assert log.stat().st_size == starts[1]


def test_the_same_hole_is_corruption_when_every_hit_was_synced(tmp_path: Path) -> None:
    starts, _ = _hits_after_puts(tmp_path, "always")
    log = live_log(tmp_path)
    data = bytearray(log.read_bytes())
    data[starts[1] : starts[2]] = bytes(starts[2] - starts[1])
    log.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match=f"at offset {starts[1]},.*not a torn tail"):
        PersistentLRU(tmp_path, 8)


def test_damage_to_a_synced_put_followed_only_by_unsynced_hits_is_corruption(tmp_path: Path) -> None:
    # The first hit was written after the puts were synced, so it proves them durable.
    starts, _ = _hits_after_puts(tmp_path, "writes")
    log = live_log(tmp_path)
    data = bytearray(log.read_bytes())
    data[starts[0] - 3] ^= 0x01  # inside the last put
    log.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match="not a torn tail"):
        PersistentLRU(tmp_path, 8)


def test_a_valid_record_with_an_unknown_op_is_corruption_not_a_tail(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
    payload = b"\x09future"
    length = struct.pack(">I", len(payload))
    frame = length + struct.pack(">I", zlib.crc32(payload, zlib.crc32(length))) + payload
    with live_log(tmp_path).open("ab") as f:
        f.write(frame)
    with pytest.raises(LogCorrupt, match="unknown op byte 0x09"):
        PersistentLRU(tmp_path, 4)


def test_a_long_garbage_tail_is_cut_without_false_alarms(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
        size = live_log(tmp_path).stat().st_size
    with live_log(tmp_path).open("ab") as f:
        f.write(random.Random(5).randbytes(1 << 20))
    with PersistentLRU(tmp_path, 4) as c:
        assert c.items() == [("a", 1)]
        assert c.recovery.dropped_bytes == 1 << 20
    assert live_log(tmp_path).stat().st_size == size


def test_a_version_1_log_is_replayed_and_compacted_into_the_current_format(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        generation = c.generation
    # What the previous release wrote: version 1 header, records without the AFTER_SYNC bit.
    fields = struct.pack(">8sHHQ", b"PGLRULOG", 1, 0, generation)
    v1 = fields + struct.pack(">I", zlib.crc32(fields))
    for op, body in [
        (Op.PUT, pickle.dumps(("a", 1))),
        (Op.PUT, pickle.dumps(("b", 2))),
        (Op.TOUCH, pickle.dumps("a")),
    ]:
        v1 += encode_record(op, body)
    log_path(tmp_path, generation).write_bytes(v1)
    with PersistentLRU(tmp_path, 4) as c:
        assert c.items() == [("b", 2), ("a", 1)]
        assert c.generation == generation + 1
        c.put("c", 3)
    assert live_log(tmp_path).read_bytes()[8:10] == b"\x00\x02"
    assert reopened(tmp_path) == [("b", 2), ("a", 1), ("c", 3)]


# --- sync settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sync", "put_syncs", "hit_syncs"), [("always", 1, 1), ("writes", 1, 0), ("never", 0, 0)]
)
def test_each_sync_setting_syncs_what_it_promises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: str, put_syncs: int, hit_syncs: int
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    with PersistentLRU(tmp_path, 8, sync=sync) as c:  # type: ignore[arg-type]
        monkeypatch.setattr(os, "fdatasync", counting)
        for k in range(3):
            c.put(k, k)
        assert len(calls) == 3 * put_syncs
        for k in range(5):
            c.get(k % 3)
        assert len(calls) == 3 * put_syncs + 5 * hit_syncs
        c.get("missing")
        c.delete(0)
        c.clear()
        assert len(calls) == 5 * put_syncs + 5 * hit_syncs
        c.get("missing")
    # close() makes pending hits durable, except under "never"
    assert len(calls) == 5 * put_syncs + 5 * hit_syncs


def test_close_syncs_hits_logged_since_the_last_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync
    c: PersistentLRU[str, int] = PersistentLRU(tmp_path, 4)
    c.put("a", 1)
    c.get("a")
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    c.close()
    assert len(calls) == 1


def test_fsync_flag_still_means_always_or_never(tmp_path: Path) -> None:
    for flag, sync in ((True, "always"), (False, "never")):
        with PersistentLRU(tmp_path, 2, fsync=flag) as c:
            assert c.sync == sync
    with PersistentLRU(tmp_path, 2) as c:
        assert c.sync == "writes"
    with pytest.raises(ValueError, match="sync"):
        PersistentLRU(tmp_path, 2, sync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass one"):
        PersistentLRU(tmp_path, 2, sync="always", fsync=True)


def test_appended_garbage_is_dropped_and_new_writes_follow_the_good_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
    with live_log(tmp_path).open("ab") as f:
        f.write(b"\x00\x00\x00\x09garbage-garbage")
    with caplog.at_level(logging.WARNING), PersistentLRU(tmp_path, 4) as c:
        assert c.items() == [("a", 1)]
        c.put("b", 2)
    assert "dropped" in caplog.text
    with PersistentLRU(tmp_path, 4) as c:
        assert c.items() == [("a", 1), ("b", 2)]
        assert c.recovery.dropped_bytes == 0


def test_impossible_record_length_is_a_damaged_tail(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
    with live_log(tmp_path).open("ab") as f:
        f.write(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    with PersistentLRU(tmp_path, 4) as c:
        assert c.items() == [("a", 1)]
        assert "impossible record length" in (c.recovery.problem or "")


def test_torn_log_header_means_an_empty_log(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
        c.snapshot()
    log = live_log(tmp_path)
    log.write_bytes(log.read_bytes()[:7])
    assert reopened(tmp_path) == [("a", 1)]
    assert live_log(tmp_path).stat().st_size == LOG_HEADER_SIZE


def test_damaged_log_header_is_refused(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 4) as c:
        c.put("a", 1)
    log = live_log(tmp_path)
    data = bytearray(log.read_bytes())
    data[0] ^= 0x01
    log.write_bytes(bytes(data))
    with pytest.raises(LogCorrupt, match=str(log)):
        PersistentLRU(tmp_path, 4)
    assert log.read_bytes() == bytes(data)  # left as found


# --- damaged or missing snapshots -----------------------------------------------------------


def _make_snapshot(tmp_path: Path) -> bytes:
    with PersistentLRU(tmp_path, 4) as c:
        for k in range(3):
            c.put(k, str(k) * 50)
        c.snapshot()
    return (tmp_path / "snapshot").read_bytes()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b[:20], "truncated header"),
        (lambda b: b"", "truncated header"),
        (lambda b: b"NOTASNAP" + b[8:], "bad magic"),
        (lambda b: b[:9] + bytes([b[9] ^ 1]) + b[10:], "header checksum"),
        (lambda b: b[:-1], "payload is"),
        (lambda b: b + b"\x00", "payload is"),
        (lambda b: b[:-5] + bytes([b[-5] ^ 0x10]) + b[-4:], "payload checksum"),
    ],
)
def test_corrupt_snapshot_is_refused_with_path_and_reason(
    tmp_path: Path, damage: object, reason: str
) -> None:
    good = _make_snapshot(tmp_path)
    bad = damage(good)  # type: ignore[operator]
    (tmp_path / "snapshot").write_bytes(bad)
    with pytest.raises(SnapshotCorrupt, match=reason) as err:
        PersistentLRU(tmp_path, 4)
    assert str(tmp_path / "snapshot") in str(err.value)
    assert (tmp_path / "snapshot").read_bytes() == bad  # evidence left untouched
    (tmp_path / "snapshot").write_bytes(good)
    assert len(reopened(tmp_path)) == 3  # and the directory was not otherwise harmed


def test_missing_snapshot_next_to_logs_is_refused(tmp_path: Path) -> None:
    _make_snapshot(tmp_path)
    (tmp_path / "snapshot").unlink()
    with pytest.raises(SnapshotCorrupt, match="missing"):
        PersistentLRU(tmp_path, 4)


def test_leftover_temp_snapshot_is_ignored_and_removed(tmp_path: Path) -> None:
    _make_snapshot(tmp_path)
    (tmp_path / "snapshot.tmp").write_bytes(b"half a snapshot")
    assert len(reopened(tmp_path)) == 3
    assert not (tmp_path / "snapshot.tmp").exists()


# --- crash windows inside compaction --------------------------------------------------------


def test_crash_after_snapshot_replace_never_replays_the_old_log(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        for k in range(5):
            c.put(k, k)
        c.get(2)
        old_log = live_log(tmp_path)
        old_bytes = old_log.read_bytes()
        c.snapshot()
        c.put("after", 1)
        expected = c.items()
    # The state a crash between steps 2 and 4 leaves: the old log is still there.
    old_log.write_bytes(old_bytes)
    with PersistentLRU(tmp_path, 3) as c:
        assert c.items() == expected
        assert c.recovery.stale_logs_removed == 1
    assert not old_log.exists()


def test_crash_before_the_new_log_exists_starts_it_empty(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        c.put("a", 1)
        c.snapshot()
        expected = c.items()
    live_log(tmp_path).unlink()
    assert reopened(tmp_path, 3) == expected
    assert live_log(tmp_path).stat().st_size == LOG_HEADER_SIZE


def test_a_log_newer_than_the_snapshot_is_refused(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        c.put("a", 1)
        generation = c.generation
    log_path(tmp_path, generation + 1).write_bytes(b"")
    with pytest.raises(LogCorrupt, match="newer than the snapshot"):
        PersistentLRU(tmp_path, 3)


def test_compaction_failing_before_the_rename_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PersistentLRU(tmp_path, 3, snapshot_every=2) as c:
        c.put("a", 1)

        def full_disk(*_: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(persistent_module, "write_temp", full_disk)
        c.put("b", 2)  # triggers compaction, which fails; the put itself succeeded
        c.put("c", 3)
        assert c.generation == 1
        monkeypatch.undo()
        c.put("d", 4)
        c.put("e", 5)  # compaction works again
        assert c.generation == 2
        expected = c.items()
    assert reopened(tmp_path, 3) == expected


def test_snapshot_rename_failing_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        c.put("a", 1)

        def rename_fails(*_: object) -> None:
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "replace", rename_fails)
        with pytest.raises(OSError, match="cross-device"):
            c.snapshot()
        monkeypatch.undo()
        c.put("b", 2)  # the old log is still the live one
        assert not (tmp_path / "snapshot.tmp").exists()
    assert reopened(tmp_path, 3) == [("a", 1), ("b", 2)]


def test_compaction_failing_after_the_rename_stops_writes_until_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PersistentLRU(tmp_path, 3, snapshot_every=2) as c:
        c.put("a", 1)
        real_create = persistent_module.AppendLog.create

        def create_fails(*_: object, **__: object) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(persistent_module.AppendLog, "create", create_fails)
        c.put("b", 2)  # durable: it is in the snapshot that was installed
        with pytest.raises(CacheBroken, match="reopened"):
            c.put("c", 3)
        monkeypatch.setattr(persistent_module.AppendLog, "create", real_create)
    assert reopened(tmp_path, 3) == [("a", 1), ("b", 2)]


# --- threads --------------------------------------------------------------------------------


def test_concurrent_writers_log_in_the_order_memory_changed(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with PersistentLRU(tmp_path, 32, snapshot_every=97, sync="never") as c:

        def work(tid: int) -> None:
            try:
                for i in range(300):
                    key = (tid * 7 + i) % 50
                    if i % 3 == 0:
                        c.get(key)
                    elif i % 11 == 0:
                        c.delete(key)
                    else:
                        c.put(key, (tid, i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        expected = c.items()
    assert errors == []
    assert reopened(tmp_path, 32) == expected


def test_directory_is_created_when_missing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    with PersistentLRU(os.fspath(target), 2) as c:
        c.put(1, 1)
    assert reopened(target, 2) == [(1, 1)]


def test_set_aside_keeps_the_damaged_files_and_the_next_open_starts_empty(tmp_path: Path) -> None:
    with PersistentLRU(tmp_path, 3) as c:
        c.put("a", 1)
        with pytest.raises(DirectoryLocked):
            set_aside(tmp_path)
    log = live_log(tmp_path)
    moved = set_aside(tmp_path)
    assert sorted(p.name for p in moved) == [log.name + ".corrupt", "snapshot.corrupt"]
    assert reopened(tmp_path, 3) == []
