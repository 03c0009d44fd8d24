"""Watch mode: the report follows added, modified, deleted and renamed files; a big batch is a
full re-scan; the CLI stops cleanly on SIGTERM/SIGINT and says bad input in one line.

Every wait polls the report (or the process) against a deadline: nothing asserts on a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.dedup.files.scanner import ScanOptions
from services.dedup.files.watch import run_watch
from tests.services.dedup.conftest import REPO, run_cli, write

DEADLINE = 30.0


def _groups(report: Path) -> list[list[str]] | None:
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    return sorted(sorted(os.path.basename(f["path"]) for f in g["files"]) for g in data["groups"])


def wait_for(report: Path, want: Callable[[list[list[str]]], bool], what: str) -> list[list[str]]:
    deadline = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < deadline:
        last = _groups(report)
        if last is not None and want(last):
            return last
        time.sleep(0.02)  # polling interval, not an assertion
    raise AssertionError(f"{what}: report still {last!r} after {DEADLINE}s")


class Watcher:
    """run_watch in a thread. `hold`: the watcher waits for this event after its first scan,
    before it looks for changes, so the changes made meanwhile come in its first batch
    whatever the machine's speed (they wait in the armed notifier)."""

    def __init__(self, root: Path, report: Path, tmp: Path, hold: threading.Event | None = None, **kw):
        self.stop = threading.Event()
        self.logs: list[str] = []
        self.batches: list[dict] = []
        self.held = threading.Event()
        opts = ScanOptions(cache_dir=str(tmp / "cache"), **kw.pop("options", {}))

        def log(message: str) -> None:
            self.logs.append(message)
            if hold is not None and message.startswith("first scan"):
                self.held.set()
                hold.wait(DEADLINE)

        self.thread = threading.Thread(
            target=run_watch,
            args=([str(root)], opts),
            kwargs=dict(
                report_path=str(report),
                stop=self.stop,
                log=log,
                step_ms=20,
                on_batch=self.batches.append,
                **kw,
            ),
            daemon=True,
        )
        self.thread.start()
        deadline = time.monotonic() + DEADLINE
        while not report.exists() and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert report.exists(), self.logs

    def close(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, Path, Watcher]]:
    root = tmp_path / "root"
    root.mkdir()
    write(root / "a", b"alpha" * 2000)
    write(root / "b", b"alpha" * 2000)
    write(root / "c", b"gamma" * 2000)
    write(root / "small", b"tiny one")
    (root / "sub").mkdir()
    write(root / "sub" / "d", b"delta" * 3000)
    report = tmp_path / "report.json"
    w = Watcher(root, report, tmp_path)
    try:
        yield root, report, w
    finally:
        w.close()


def test_add_modify_delete(watched: tuple[Path, Path, Watcher]) -> None:
    root, report, _w = watched
    assert _groups(report) == [["a", "b"]]
    write(root / "e", b"gamma" * 2000)  # a new copy of c
    wait_for(report, lambda g: g == [["a", "b"], ["c", "e"]], "added duplicate")
    with open(root / "a", "r+b") as f:  # same size, other content
        f.seek(5000)
        f.write(b"X")
    wait_for(report, lambda g: g == [["c", "e"]], "modified copy")
    (root / "c").unlink()
    wait_for(report, lambda g: g == [], "deleted copy")
    write(root / "sub" / "f", b"tiny one")  # small files: one read, same report
    wait_for(report, lambda g: g == [["f", "small"]], "small duplicate in a subdirectory")


def test_directory_renamed_in_and_out(watched: tuple[Path, Path, Watcher], tmp_path: Path) -> None:
    root, report, w = watched
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "x", b"delta" * 3000)
    write(outside / "y", b"alpha" * 2000)
    os.rename(outside, root / "moved")  # a whole directory arrives with one event
    wait_for(report, lambda g: g == [["a", "b", "y"], ["d", "x"]], "directory renamed in")
    assert any("re-scanning subtree" in m for m in w.logs), w.logs
    os.rename(root / "moved", root / "renamed")
    want = [["a", "b", "y"], ["d", "x"]]
    wait_for(report, lambda g: g == want and _paths_under(report, "renamed"), "renamed")
    os.rename(root / "renamed", tmp_path / "gone")  # moved out: its files leave the groups
    wait_for(report, lambda g: g == [["a", "b"]], "directory renamed out")


def _paths_under(report: Path, name: str) -> bool:
    data = json.loads(report.read_text())
    paths = [f["path"] for g in data["groups"] for f in g["files"]]
    return any(f"/{name}/" in p for p in paths) and not any("/moved/" in p for p in paths)


def test_big_batch_is_a_full_rescan(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write(root / "a", b"one" * 1000)
    report = tmp_path / "report.json"
    hold = threading.Event()
    w = Watcher(root, report, tmp_path, hold=hold, rescan_over=3)  # stands in for an inotify overflow
    try:
        assert w.held.wait(DEADLINE)
        for i in range(6):
            write(root / f"n{i}", b"one" * 1000)
        hold.set()  # the 6 changes are one batch: more than rescan_over
        wait_for(report, lambda g: g == [["a", "n0", "n1", "n2", "n3", "n4", "n5"]], "after the burst")
        assert any("full re-scan" in m for m in w.logs), w.logs
    finally:
        w.close()


def test_symlink_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.mkdir()
    write(secret / "s", b"secret" * 500)
    write(root / "a", b"secret" * 500)
    report = tmp_path / "report.json"
    w = Watcher(root, report, tmp_path, options={"follow_symlinks": True})
    try:
        os.symlink(secret, root / "link")
        write(root / "marker1", b"marker" * 10)
        write(root / "marker2", b"marker" * 10)
        wait_for(report, lambda g: g == [["marker1", "marker2"]], "symlink out ignored")
        data = json.loads(report.read_text())
        assert not any("secret" in f["path"] for g in data["groups"] for f in g["files"])
        assert any("outside the allowed scan roots" in e["error"] for e in data["errors"]), data["errors"]
    finally:
        w.close()


def _start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "services.dedup", "watch", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_updates_report_and_exits_0_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write(root / "a", b"payload" * 100)
    report = tmp_path / "r.json"
    proc = _start_cli(str(root), "--report", str(report), "--cache", str(tmp_path / "c"), "--step-ms", "20")
    try:
        wait_for(report, lambda g: g == [], "first report")
        write(root / "b", b"payload" * 100)
        wait_for(report, lambda g: g == [["a", "b"]], "cli batch")
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert b"batch 1:" in err


def test_cli_help_and_bad_input(tmp_path: Path) -> None:
    proc = run_cli("watch", "--help")
    assert proc.returncode == 0 and b"--report" in proc.stdout
    for args in [
        ("watch",),
        ("watch", str(tmp_path / "missing")),
        ("watch", str(tmp_path), "--hash", "md5"),
        ("watch", str(tmp_path), "--step-ms", "0"),
        ("watch", str(tmp_path), "--report", str(tmp_path / "no" / "r.json")),
    ]:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)


def test_undecodable_name_falls_back_to_a_full_rescan(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"odd-\xff.bin")
    write(odd, b"odd payload" * 50)
    write(root / "plain", b"odd payload" * 50)
    report = tmp_path / "report.json"
    w = Watcher(root, report, tmp_path)
    try:
        # The first scan read the odd file: watchfiles cannot decode that event's path.
        write(root / "third", b"odd payload" * 50)
        write(root / "other1", b"other" * 10)
        write(root / "other2", b"other" * 10)
        wait_for(
            report,
            lambda g: g == [["odd-\udcff.bin", "plain", "third"], ["other1", "other2"]],
            "after an undecodable path",
        )
        assert not w.logs or all("Traceback" not in m for m in w.logs)
    finally:
        w.close()


def test_json_report_text_is_the_scans(tmp_path: Path) -> None:
    import io

    from services.dedup.files import report
    from services.dedup.files.watch import JsonReport, WatchIndex

    root = tmp_path / "root"
    root.mkdir()
    for i in range(5):
        write(root / f"a{i}", b"same" * 300)
        write(root / f"b{i}", b"other" * 400)
    index = WatchIndex([str(root)], ScanOptions(cache_dir=str(tmp_path / "cache")))
    try:
        index.full_scan()
        jr = JsonReport()
        for _ in range(2):  # encoded afresh, then from the kept texts
            res = index.result(0.0)
            ours, theirs = io.StringIO(), io.StringIO()
            jr.write(res, ours)
            report.write_json(res, theirs)
            assert ours.getvalue() == theirs.getvalue()
            assert len(json.loads(ours.getvalue())["groups"]) == 2
    finally:
        index.close()


def _group_sets(groups) -> set[frozenset[bytes]]:
    return {frozenset(p for f in g.files for p in (f.path, *f.links)) for g in groups}


def test_incremental_groups_equal_a_fresh_scan(tmp_path: Path) -> None:
    """Random batches of copies, edits, deletions and renames applied to the index give the
    groups a fresh scan of the tree gives (no notifications: the batches are handed over)."""
    import io
    import random

    from services.dedup.files import report
    from services.dedup.files.scanner import run_scan
    from services.dedup.files.stages import sort_groups
    from services.dedup.files.treegen import generate_tree
    from services.dedup.files.watch import ADDED, DELETED, MODIFIED, JsonReport, WatchIndex, write_report

    report_file = tmp_path / "report.json"
    jr = JsonReport()
    root = tmp_path / "tree"
    generate_tree(root, files=400, total_bytes=24 << 20, seed=3)
    opts = ScanOptions(cache_dir=str(tmp_path / "cache"))
    index = WatchIndex([str(root)], opts)
    rng = random.Random(5)
    try:
        index.full_scan()
        for batch in range(6):
            files = sorted(p for p in index.files if b"/tricky/" not in p)
            changes: set[tuple[int, str]] = set()
            for src in rng.sample(files, 4):  # copies
                dst = os.fsencode(root) + b"/copy-%d-%d" % (batch, len(changes))
                write(dst, Path(os.fsdecode(src)).read_bytes())
                changes.add((ADDED, os.fsdecode(dst)))
            for p in rng.sample(files, 4):  # one byte changed in place, same size
                with open(p, "r+b") as f:
                    f.seek(max(0, os.path.getsize(p) // 2))
                    b = f.read(1)
                    if b:
                        f.seek(-1, os.SEEK_CUR)
                        f.write(bytes([(b[0] + 1) % 256]))
                changes.add((MODIFIED, os.fsdecode(p)))
            for p in rng.sample(files, 3):  # deletions and renames
                if os.path.exists(p):
                    if rng.random() < 0.5:
                        os.unlink(p)
                    else:
                        new = p + b".renamed"
                        os.rename(p, new)
                        changes.add((ADDED, os.fsdecode(new)))
                    changes.add((DELETED, os.fsdecode(p)))
            index.apply(changes)
            fresh = run_scan([str(root)], ScanOptions())
            assert len(fresh.groups) > 10
            res = index.result(0.0)
            assert _group_sets(res.groups) == _group_sets(fresh.groups), batch
            assert res.files_scanned == fresh.files_scanned, batch
            # The answer kept per size is the answer computed whole: order, totals, report text.
            whole = [g for gs in index.groups.values() for g in gs]
            sort_groups(whole)
            assert res.groups == whole, batch
            assert res.wasted_bytes == sum(g.wasted_bytes for g in whole), batch
            assert res.duplicate_files == sum(len(g.files) for g in whole), batch
            d, fresh_d = report.to_dict(res), report.to_dict(fresh)
            want = _canonical(fresh_d["groups"], fresh_d["hard_linked"])
            assert _canonical(d["groups"], d["hard_linked"]) == want, batch
            write_report(res, "json", str(report_file), json_report=jr)
            expected = io.StringIO()
            report.write_json(res, expected)
            assert report_file.read_text() == expected.getvalue(), batch
    finally:
        index.close()


def test_changes_meet_untouched_groups_and_lone_files_through_their_digest(tmp_path: Path) -> None:
    """Groups and ungrouped files no change touched stay out of the pipeline unless a changed
    file has their (size, digest): a copy of a lone file, a copy into a group, and an edit
    that makes a file equal to a lone one are each found; a group of the same size with
    another digest is kept as it was (the same object)."""
    from services.dedup.files.watch import ADDED, MODIFIED, WatchIndex

    root = tmp_path / "root"
    root.mkdir()
    size = 10_000  # > 2 x partial_size: the groups' digests are full digests
    bodies = [bytes([k]) * (size - 1) + b"!" for k in range(6)]
    write(root / "g1", bodies[0])
    write(root / "g2", bodies[0])
    write(root / "h1", bodies[1])
    write(root / "h2", bodies[1])
    for k in (2, 3, 4):
        write(root / f"lone{k}", bodies[k])
    write(root / "edited", bodies[5])
    index = WatchIndex([str(root)], ScanOptions(cache_dir=str(tmp_path / "cache")))
    try:
        index.full_scan()
        (h_group,) = [g for g in index.groups[size] if g.files[0].path.endswith(b"/h1")]
        write(root / "copy-of-lone2", bodies[2])
        write(root / "copy-of-g", bodies[0])
        write(root / "edited", bodies[3])  # same size, now equal to lone3
        index.apply(
            {
                (ADDED, str(root / "copy-of-lone2")),
                (ADDED, str(root / "copy-of-g")),
                (MODIFIED, str(root / "edited")),
            }
        )
        res = index.result(0.0)
        names = sorted(sorted(os.path.basename(os.fsdecode(f.path)) for f in g.files) for g in res.groups)
        assert names == [
            ["copy-of-g", "g1", "g2"],
            ["copy-of-lone2", "lone2"],
            ["edited", "lone3"],
            ["h1", "h2"],
        ]
        assert any(g is h_group for g in index.groups[size])  # untouched: not rebuilt
    finally:
        index.close()


def _canonical(groups: list[dict], hard_linked: list[dict]) -> tuple[list, list]:
    """A report's groups and hard-linked inodes in a form that does not depend on which name
    of an inode the walk met first: per group its size, wasted bytes and per inode (dev, ino,
    mtime, every name); the digest is left out (a scan without a cache has none)."""

    def inode(f: dict) -> tuple:
        names = sorted([f["path"], *(x["path"] for x in f.get("links", []))])
        return (f["dev"], f["ino"], f["mtime_ns"], names)

    gs = sorted((g["size"], g["wasted_bytes"], sorted(inode(f) for f in g["files"])) for g in groups)
    return gs, sorted(inode(f) for f in hard_linked)


def _fresh(root: Path) -> tuple[list, list]:
    from services.dedup.files import report
    from services.dedup.files.scanner import run_scan

    d = report.to_dict(run_scan([str(root)], ScanOptions()))
    return _canonical(d["groups"], d["hard_linked"])


def test_hard_links_made_while_watching_match_a_fresh_scan(tmp_path: Path) -> None:
    """inotify tells only the name a change went through: link(2), unlink(2) and a write
    through one name give no event for the inode's other names. After each step (a marker
    pair written after it says its batch is in) the watch's groups are a fresh scan's."""
    root = tmp_path / "root"
    (root / "s1").mkdir(parents=True)
    (root / "s2").mkdir()
    big_x, big_y = b"x" * 9000 + b"1", b"y" * 9000 + b"1"
    write(root / "s1" / "a", big_x)
    write(root / "s1" / "c", big_x)
    write(root / "s2" / "lone", b"lone" * 3000)
    write(root / "s1" / "small", b"tiny one")
    write(root / "s2" / "small2", b"tiny one")
    report = tmp_path / "report.json"
    w = Watcher(root, report, tmp_path)

    def check(step: str, n: int) -> None:
        marker = b"marker %d " % n * 40
        write(root / f"m{n}a", marker)
        write(root / f"m{n}b", marker)
        wait_for(report, lambda g: [f"m{n}a", f"m{n}b"] in g, f"{step}: marker")
        data = json.loads(report.read_text())
        assert _canonical(data["groups"], data["hard_linked"]) == _fresh(root), step
        assert data["errors"] == [], step

    def rewrite(path: Path, data: bytes) -> None:  # in place, through this name
        with open(path, "r+b") as f:
            f.write(data)

    try:
        check("first scan", 0)
        write(root / "s1" / "new", big_y)
        check("created while watching", 1)
        os.link(root / "s1" / "new", root / "s2" / "new-link")
        check("link of a file made while watching", 2)
        rewrite(root / "s2" / "new-link", b"X" * 9000)  # now equal to a and c
        check("written through its new name", 3)
        os.link(root / "s1" / "a", root / "s2" / "a-link")  # a is indexed and in a group
        check("link of an indexed, grouped file", 4)
        rewrite(root / "s2" / "a-link", b"Z")  # a too: no longer c's copy
        check("written through the link", 5)
        os.unlink(root / "s2" / "a-link")  # a's link count drops: no event for a
        check("one name unlinked", 6)
        os.link(root / "s2" / "lone", root / "s1" / "lone-link")
        os.link(root / "s1" / "small", root / "s2" / "small-link")
        check("links of a lone and a small file", 7)
        write(tmp_path / "other", b"other" * 10)
        os.rename(tmp_path / "other", root / "s1" / "lone-link")  # replaces one name
        os.unlink(root / "s1" / "small")
        check("a name replaced, a small file's first name unlinked", 8)
        rewrite(root / "s2" / "lone", b"LONE")
        write(root / "s2" / "lone-copy", b"LONE" + b"lone" * 2999)
        check("its last name written, and copied", 9)
    finally:
        w.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_hard_link_batches_equal_a_fresh_scan(tmp_path: Path, seed: int) -> None:
    """Random batches of links, writes through one name, unlinks and names replaced by a
    rename, each handed over with the one event inotify gives (for the name used only):
    after each batch the groups and hard-linked inodes are a fresh scan's."""
    import random

    from services.dedup.files import report
    from services.dedup.files.scanner import run_scan
    from services.dedup.files.watch import ADDED, DELETED, MODIFIED, WatchIndex

    root = tmp_path / "root"
    for d in ("s1", "s2", "s3"):
        (root / d).mkdir(parents=True)
    rng = random.Random(seed)
    bodies = [bytes([65 + k]) * rng.choice((7, 300, 5000, 9000)) for k in range(8)]
    for i in range(40):
        write(root / f"s{i % 3 + 1}" / f"f{i}", rng.choice(bodies))
    index = WatchIndex([str(root)], ScanOptions(cache_dir=str(tmp_path / "cache")))
    try:
        index.full_scan()
        for batch in range(8):
            names = sorted(p for p in index.files)
            changes: set[tuple[int, str]] = set()
            for n in range(rng.randint(1, 4)):
                src = os.fsdecode(rng.choice(names))
                if not os.path.exists(src):
                    continue
                op = rng.choice(("link", "link", "write", "unlink", "replace", "copy"))
                dst = str(root / f"s{rng.randint(1, 3)}" / f"n{batch}-{n}")
                if op == "link":
                    os.link(src, dst)
                    changes.add((ADDED, dst))
                elif op == "write":  # through this name only; sometimes the same size
                    data = rng.choice(bodies)
                    with open(src, "r+b") as f:
                        f.write(data[: os.path.getsize(src)] if rng.random() < 0.5 else data)
                    changes.add((MODIFIED, src))
                elif op == "unlink":
                    os.unlink(src)
                    changes.add((DELETED, src))
                elif op == "replace":
                    write(dst, rng.choice(bodies))
                    os.rename(dst, src)
                    changes.add((ADDED, src))
                else:
                    write(dst, Path(src).read_bytes())
                    changes.add((ADDED, dst))
            index.apply(changes)
            res, fresh = index.result(0.0), run_scan([str(root)], ScanOptions())
            d, fresh_d = report.to_dict(res), report.to_dict(fresh)
            got = _canonical(d["groups"], d["hard_linked"])
            assert got == _canonical(fresh_d["groups"], fresh_d["hard_linked"]), (seed, batch)
            assert res.files_scanned == fresh.files_scanned, (seed, batch)
            assert d["errors"] == [], (seed, batch)
    finally:
        index.close()


def test_replaced_report_is_kept_open_for_the_caller(tmp_path: Path) -> None:
    """write_report(keep_old=...): the old report's descriptor is handed over (its pages are
    freed when the caller closes it, after the answer is out); the path has the new text."""
    from services.dedup.files.watch import WatchIndex, write_report

    root = tmp_path / "root"
    root.mkdir()
    write(root / "a", b"same" * 100)
    write(root / "b", b"same" * 100)
    index = WatchIndex([str(root)], ScanOptions(cache_dir=str(tmp_path / "cache")))
    report = tmp_path / "r.json"
    try:
        index.full_scan()
        kept: list[int] = []
        write_report(index.result(0.0), "json", str(report), keep_old=kept)
        assert kept == []  # nothing to replace the first time
        first = report.read_bytes()
        write(root / "c", b"same" * 100)
        index.apply({(1, str(root / "c"))})
        write_report(index.result(0.0), "json", str(report), keep_old=kept)
        assert len(kept) == 1
        try:
            assert os.pread(kept[0], len(first) + 1, 0) == first
        finally:
            os.close(kept[0])
        assert _groups(report) == [["a", "b", "c"]]
    finally:
        index.close()


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_random_batches_over_lone_files_equal_a_fresh_scan(tmp_path: Path, seed: int) -> None:
    """Many files of one size with different bytes ("lone": ungrouped, digest in memory, kept
    per size between batches) and groups among them; random batches copy a lone file (it
    joins a group), edit a grouped or lone one in place (it leaves, or becomes another's
    duplicate), delete, link, replace. After each batch: the groups, hard-linked inodes and
    report text are a fresh scan's, and every recorded lone name is indexed, in no group, and
    has its inode's current digest in the cache."""
    import random

    from services.dedup.files import report
    from services.dedup.files.scanner import run_scan
    from services.dedup.files.watch import ADDED, DELETED, MODIFIED, JsonReport, WatchIndex

    root = tmp_path / "root"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
    rng = random.Random(seed)
    sizes = (3, 700, 5000, 12000)  # small (one read), head + full, and head + tail ranges

    def body(size: int) -> bytes:  # the first byte tells some apart by their head (no full digest)
        return bytes([rng.randrange(40)]) + bytes(size - 3) + bytes([rng.randrange(5), rng.randrange(5)])

    for i in range(60):
        write(root / rng.choice("ab") / f"f{i}", body(rng.choice(sizes)))
    index = WatchIndex([str(root)], ScanOptions(cache_dir=str(tmp_path / "cache")))
    try:
        index.full_scan()
        for batch in range(10):
            names = sorted(index.files)
            changes: set[tuple[int, str]] = set()
            for n in range(rng.randint(1, 6)):
                src = os.fsdecode(rng.choice(names))
                if not os.path.exists(src):
                    continue
                op = rng.choice(("copy", "copy", "edit", "edit", "unlink", "link", "replace"))
                dst = str(root / rng.choice("ab") / f"n{batch}-{n}")
                if op == "copy":
                    write(dst, Path(src).read_bytes())
                    changes.add((ADDED, dst))
                elif op == "edit":  # in place, same size: the last two bytes
                    with open(src, "r+b") as f:
                        f.seek(-2, os.SEEK_END)
                        f.write(bytes([rng.randrange(5), rng.randrange(5)]))
                    changes.add((MODIFIED, src))
                elif op == "unlink":
                    os.unlink(src)
                    changes.add((DELETED, src))
                elif op == "link":
                    os.link(src, dst)
                    changes.add((ADDED, dst))
                else:
                    write(dst, body(os.path.getsize(src)))
                    os.rename(dst, src)
                    changes.add((ADDED, src))
            index.apply(changes)
            res, fresh = index.result(0.0), run_scan([str(root)], ScanOptions())
            d, fresh_d = report.to_dict(res), report.to_dict(fresh)
            assert _canonical(d["groups"], d["hard_linked"]) == _canonical(
                fresh_d["groups"], fresh_d["hard_linked"]
            ), (seed, batch)
            assert d["errors"] == [], (seed, batch)
            text = b"".join(JsonReport()._parts(res))
            assert json.loads(text)["groups"] == d["groups"], (seed, batch)
            grouped = {p for g in res.groups for f in g.files for p in (f.path, *f.links)}
            work = index.cache._work  # type: ignore[union-attr]
            for size, (by_name, by_digest) in index._lone.items():
                assert sum(len(v) for v in by_digest.values()) == len(by_name), (seed, batch)
                for name, digest in by_name.items():
                    assert name in by_digest[digest] and name not in grouped, (seed, batch, name)
                    dev, ino, _mtime, st_size, _ctime = index.files[name]
                    assert st_size == size, (seed, batch, name)
                    assert work[(dev, ino)]["full:blake3"] == digest, (seed, batch, name)
            assert any(index._lone.values()) or batch < 2, "lone records never used"
    finally:
        index.close()


def test_a_file_without_a_known_digest_still_meets_its_copy(tmp_path: Path) -> None:
    """A changed file whose digest no other entry of its size shares is left out of the
    pipeline only when every entry of that size has a known digest: here the original's row
    is not in memory (as after a read error), so the copy and the original are compared."""
    from services.dedup.files.watch import ADDED, WatchIndex

    root = tmp_path / "root"
    root.mkdir()
    write(root / "x", b"x" * 9000)
    write(root / "other", b"o" * 9000)
    index = WatchIndex([str(root)], ScanOptions(cache_dir=str(tmp_path / "cache")))
    try:
        index.full_scan()
        assert index.result(0.0).groups == []
        st = os.stat(root / "x")
        index.cache.invalidate([(st.st_dev, st.st_ino)])  # type: ignore[union-attr]
        write(root / "y", b"x" * 9000)
        index.apply({(ADDED, str(root / "y"))})
        groups = index.result(0.0).groups
        assert [sorted(os.path.basename(f.path) for f in g.files) for g in groups] == [[b"x", b"y"]]
    finally:
        index.close()
