"""Acting on duplicates without ever losing data: hardlink, reflink, symlink, delete, quarantine.

Never the default: a scan only reports, `--action X` alone prints the plan (dry run), and only
`--action X --apply` changes anything. For each duplicate name, in this order:

1. the duplicate and the file kept must still be the inodes the scan saw (size, mtime_ns);
2. their content is compared byte by byte again, right now;
3. an intent record (what, where, the duplicate's metadata, the temp name) is appended to the
   undo log and fsynced *before* the filesystem is touched;
4. the change is made atomically: the new content is linked or cloned to a temp name in the
   same directory, then os.replace()d over the duplicate, so the name always holds either the
   old inode or an identical one; quarantine is a rename (or copy + fsync + rename across
   filesystems); the directory is fsynced;
5. a done record is appended.

Writes racing the action: the duplicate is opened before the byte compare and its stamp
(dev, ino, size, mtime_ns, ctime_ns) taken through that fd; immediately before the replace
(unlink, rename) the fd and the name are stat'ed again, and any difference aborts that one
file ("changed during the action"; temp removed, an `aborted` record logged, the run goes
on, exit code partial). What stat cannot close without kernel help (no compare-and-rename
syscall): a write landing in the microseconds between that last stat and the replace, or
through a descriptor some writer holds open after it, goes to the old inode, which the held
fd keeps alive. So after the replace the old inode's size and mtime are checked through the
fd again; if they moved, its bytes are copied back under the original name (owner, mode,
xattrs from the intent, the writer's mtime) and the file is reported skipped. A same-size
write within the filesystem's timestamp tick of the file's previous change is invisible to
stat and stays undetected; later writes by that holder still go to the detached inode.

`undo LOG` walks the log backwards and puts every name back as it was (content from the kept
file, metadata from the intent record), whether the step was done, half done or only intended,
so a process killed at any point (SIGKILL included) is recoverable. Undo is idempotent.

Inode identity: the kept file's inode is never replaced, so it is the same inode after the
action and after undo; quarantine renames the duplicate aside (same filesystem) and undo
renames it back, so the very inode returns. A duplicate whose inode has names the scan did
not see (hard links outside the roots) outlives the replace anyway: the step then first
links it into `<undo log>.aside/` (no extra space: the inode stays allocated either way) and
undo renames that link back over the name, so the inode number comes back and the outside
names share it again. Otherwise the replaced inode is freed, and undo re-creates each name as
its own file (names that shared an inode share one new inode again).

Extended attributes (user.*, ACLs, capabilities) are recorded in the intent and put back by
undo; reflink copies the duplicate's onto its clone; hardlink refuses a duplicate whose
attributes differ from the kept file's (the link would silently drop them). `symlink`
replaces the duplicate with a relative symlink to the kept file. A filesystem that cannot
reflink is said once per filesystem for the whole run, and its remaining steps are skipped.

Keep rules (which file of a group stays): oldest mtime (default), newest, first (walk order:
roots in the order given, names sorted), shortest-path, longest-path; ties by path bytes.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from services.dedup.files.compare import files_equal
from services.dedup.files.scanner import ScanResult
from services.dedup.files.sizes import ACTIONS, KEEP_RULE_NAMES
from services.dedup.files.walk import FileEntry

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

KEEP_RULES: dict[str, Callable[[Sequence[FileEntry]], FileEntry]] = {
    "oldest": lambda fs: min(fs, key=lambda f: (f.mtime_ns, f.path)),
    "newest": lambda fs: min(fs, key=lambda f: (-f.mtime_ns, f.path)),
    "first": lambda fs: fs[0],
    "shortest-path": lambda fs: min(fs, key=lambda f: (len(f.path), f.path)),
    "longest-path": lambda fs: min(fs, key=lambda f: (-len(f.path), f.path)),
}
assert tuple(KEEP_RULES) == KEEP_RULE_NAMES  # the names the CLI offers (sizes.py)

TMP_PREFIX = b".dedup-tmp-"
# Fault injection for the crash tests: "POINT:SEQ" sends SIGKILL to this process at that point
# of that step, so every intermediate state is exercised deterministically.
CRASH_ENV = "PG_DEDUP_CRASH_AT"


def _crash_point(point: str, seq: int) -> None:
    want = os.environ.get(CRASH_ENV)
    if want and want == f"{point}:{seq}":
        os.kill(os.getpid(), signal.SIGKILL)


class ActionRefused(Exception):
    """A step was not taken because acting would not be safe (reason in the message)."""


class Unsupported(ActionRefused):
    """The filesystem cannot do this action at all (reflink on ext4): no use trying again."""


def _xattrs(path: bytes) -> dict[str, str]:
    """The file's extended attributes (name -> base64 value); {} where the fs has none."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return {}
        raise
    out = {}
    for name in sorted(names):
        try:
            out[name] = base64.b64encode(os.getxattr(path, name, follow_symlinks=False)).decode("ascii")
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed meanwhile
                raise
    return out


def _apply_xattrs(path: bytes, xattrs: dict[str, str]) -> None:
    for name, value in xattrs.items():
        try:
            os.setxattr(path, name, base64.b64decode(value), follow_symlinks=False)
        except PermissionError:
            pass  # trusted.*/security.* without the privilege: like chown, the best we can do


@dataclass(slots=True)
class Step:
    op: str
    path: bytes  # the duplicate name that changes
    keep: bytes  # the name that stays and supplies the content
    entry: FileEntry  # scan's view of the duplicate's inode
    kept: FileEntry  # scan's view of the kept inode


def plan(result: ScanResult, action: str, keep: str) -> list[Step]:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    rule = KEEP_RULES[keep]
    steps = []
    for g in result.groups:
        kept = rule(g.files)
        for f in g.files:
            if f is kept:
                continue
            # Every name of a duplicate inode must change, or its blocks stay allocated.
            for name in [f.path, *f.links]:
                steps.append(Step(action, name, kept.path, f, kept))
    return steps


def _b64(p: bytes) -> str:
    return base64.b64encode(p).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def _fsync_dir(path: bytes) -> None:
    fd = os.open(os.path.dirname(path) or b".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class UndoLog:
    """Append-only JSON lines, each fsynced before the step it announces runs."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.intents: set[int] = set()  # seqs whose intent record is written

    def write(self, record: dict[str, Any]) -> None:
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self.fd)
        if record.get("type") == "intent":
            self.intents.add(record["seq"])

    def close(self) -> None:
        os.close(self.fd)


def _same_inode(path: bytes, entry: FileEntry) -> os.stat_result:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ActionRefused("no longer a regular file")
    if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != (
        entry.dev,
        entry.ino,
        entry.size,
        entry.mtime_ns,
    ):
        raise ActionRefused("changed since the scan")
    return st


class ChangedDuringAction(ActionRefused):
    """The duplicate was written (or replaced) between the byte compare and the replace."""


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _in_the_window(step: Step, seq: int) -> None:
    """Called right before the last check ahead of the replace; tests patch it to race a write."""


def _after_replace(step: Step, seq: int) -> None:
    """Called right after the replace; tests patch it to write through a held descriptor."""


def _still_unchanged(fd: int, path: bytes, stamp: tuple[int, ...]) -> None:
    """The last check before the replace: the open inode and the name both still as compared."""
    try:
        at_name = _stamp(os.lstat(path))
    except FileNotFoundError:
        raise ChangedDuringAction("changed during the action (name gone)") from None
    if _stamp(os.fstat(fd)) != stamp or at_name != stamp:
        raise ChangedDuringAction("changed during the action")


def _link_aside(fd: int, aside_dir: bytes, seq: int) -> bytes | None:
    """A link to the inode behind fd (not the name: it may have changed) under aside_dir, or
    None where that cannot be (another filesystem, no permission): undo then copies."""
    aside = os.path.join(aside_dir, str(seq).encode())
    try:
        os.makedirs(aside_dir, exist_ok=True)
        if os.path.lexists(aside):
            os.unlink(aside)  # from a run killed before its intent was logged
        # linkat(AT_SYMLINK_FOLLOW) through /proc/self/fd (os.link calls plain link(), which
        # does not follow, unless a dir fd is given).
        proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(fd).encode(), aside, src_dir_fd=proc_fd, follow_symlinks=True)
        finally:
            os.close(proc_fd)
    except OSError:
        return None
    _fsync_dir(aside)
    return aside


def _is_inode(path: bytes, dev: int, ino: int) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _restore_from_fd(fd: int, path: bytes, tmp: bytes, meta: dict[str, int], xattrs: dict[str, str]) -> None:
    """Put the (detached) inode behind fd back under path as its own copy, bytes from the fd."""
    now = os.fstat(fd)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        off = 0
        while chunk := os.pread(fd, 1 << 20, off):
            os.write(out, chunk)
            off += len(chunk)
        _apply_meta(out, {**meta, "atime_ns": now.st_atime_ns, "mtime_ns": now.st_mtime_ns})
        os.fsync(out)
    finally:
        os.close(out)
    _apply_xattrs(tmp, xattrs)
    os.replace(tmp, path)
    _fsync_dir(path)


def _meta(st: os.stat_result) -> dict[str, int]:
    return {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "atime_ns": st.st_atime_ns,
        "mtime_ns": st.st_mtime_ns,
        "ino": st.st_ino,
        "dev": st.st_dev,
    }


def _apply_meta(fd_or_path: int | bytes, meta: dict[str, int]) -> None:
    try:
        os.chown(fd_or_path, meta["uid"], meta["gid"])
    except PermissionError:
        pass  # not root: the file stays ours, which is the best an unprivileged undo can do
    os.chmod(fd_or_path, meta["mode"])
    os.utime(fd_or_path, ns=(meta["atime_ns"], meta["mtime_ns"]))


def _tmp_name(path: bytes, seq: int) -> bytes:
    d = os.path.dirname(path)
    return os.path.join(d, TMP_PREFIX + f"{os.getpid()}-{seq}".encode())


def _quarantine_dest(qdir: bytes, path: bytes) -> bytes:
    return os.path.join(qdir, os.path.abspath(path).lstrip(b"/"))


def _reflink(src: bytes, tmp: bytes) -> None:
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.ioctl(dfd, FICLONE, sfd)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            raise Unsupported(f"reflink not supported here ({errno.errorcode.get(exc.errno)})") from None
        raise
    finally:
        os.close(sfd)


def _copy_durable(src: bytes, dst_tmp: bytes) -> None:
    with open(src, "rb") as fs, open(dst_tmp, "xb") as fd:
        shutil.copyfileobj(fs, fd, 1 << 20)
        fd.flush()
        os.fsync(fd.fileno())


def execute(
    step: Step, seq: int, log: UndoLog, quarantine_dir: bytes | None, aside_dir: bytes | None = None
) -> str:
    """Take one step (all safety checks included); return a line saying what happened."""
    st = _same_inode(step.path, step.entry)
    _same_inode(step.keep, step.kept)
    if os.path.samestat(st, os.lstat(step.keep)):
        raise ActionRefused("already the same inode")
    # Held until the step ends: the stamp below is checked again through it before and after
    # the replace, and it keeps the old inode (and any late write to it) reachable.
    fd = os.open(step.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    aside = None
    try:
        known = 1 + len(step.entry.links)
        if step.op != "quarantine" and aside_dir is not None and st.st_nlink > known:
            # Names outside the scan keep the inode alive anyway: a link to it beside the undo
            # log costs no space and lets undo rename it back. Made before the stamp (a link
            # moves ctime), and gone again unless the intent naming it is logged.
            aside = _link_aside(fd, aside_dir, seq)
        stamp = _stamp(os.fstat(fd))
        if stamp[:4] != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            raise ChangedDuringAction("changed during the action")
        return _execute_held(step, seq, log, quarantine_dir, st, fd, stamp, aside)
    except ActionRefused:
        if aside is not None and seq not in log.intents:
            with contextlib.suppress(OSError):
                os.unlink(aside)
        raise
    finally:
        os.close(fd)


def _execute_held(
    step: Step,
    seq: int,
    log: UndoLog,
    quarantine_dir: bytes | None,
    st: os.stat_result,
    fd: int,
    stamp: tuple[int, int, int, int, int],
    aside: bytes | None = None,
) -> str:
    if not files_equal(step.keep, step.path):
        raise ActionRefused("content differs from the kept file now")
    tmp = _tmp_name(step.path, seq)
    record: dict[str, Any] = {
        "type": "intent",
        "seq": seq,
        "op": step.op,
        "path": _b64(step.path),
        "keep": _b64(step.keep),
        "tmp": _b64(tmp),
        "meta": _meta(st),
        "xattrs": _xattrs(step.path),
        # Every name of the duplicate inode, so undo can make them share one inode again.
        "names": [_b64(n) for n in [step.entry.path, *step.entry.links]],
        "ts": time.time(),
    }
    if step.op == "quarantine":
        assert quarantine_dir is not None
        dest = _quarantine_dest(quarantine_dir, step.path)
        record["dest"] = _b64(dest)
        record["dest_tmp"] = _b64(_tmp_name(dest, seq))
    if step.op == "hardlink" and record["xattrs"] != _xattrs(step.keep):
        raise ActionRefused("extended attributes differ from the kept file's; a link would drop them")
    if step.op == "symlink":
        record["target"] = _b64(os.path.relpath(step.keep, os.path.dirname(step.path) or b"."))
    if aside is not None:
        record["aside"] = _b64(aside)
    log.write(record)
    _crash_point("intent", seq)

    def last_check(*cleanup: bytes) -> None:
        """Right before the replace: abort this file (temp names removed) if it was written."""
        _in_the_window(step, seq)
        try:
            _still_unchanged(fd, step.path, stamp)
        except ChangedDuringAction:
            for name in (*cleanup, *([aside] if aside else [])):
                if os.path.lexists(name):
                    os.unlink(name)
            log.write({"type": "aborted", "seq": seq})
            raise

    detached = True  # the name no longer holds the duplicate's inode after the replace
    if step.op == "hardlink":
        os.link(step.keep, tmp)
        _crash_point("tmp", seq)
        last_check(tmp)
        os.replace(tmp, step.path)
    elif step.op == "reflink":
        _reflink(step.keep, tmp)
        _apply_meta(tmp, record["meta"])  # the duplicate keeps its own owner, mode and times
        _apply_xattrs(tmp, record["xattrs"])
        _crash_point("tmp", seq)
        last_check(tmp)
        os.replace(tmp, step.path)
    elif step.op == "symlink":
        os.symlink(_unb64(record["target"]), tmp)
        _crash_point("tmp", seq)
        last_check(tmp)
        os.replace(tmp, step.path)
    elif step.op == "delete":
        last_check()
        os.unlink(step.path)
    elif step.op == "quarantine":
        dest = _unb64(record["dest"])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if os.path.lexists(dest):
            raise ActionRefused(f"quarantine target exists: {os.fsdecode(dest)}")
        try:
            last_check()
            os.rename(step.path, dest)
            detached = False  # same inode, now in quarantine: a late write is kept there
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            dtmp = _unb64(record["dest_tmp"])
            _copy_durable(step.path, dtmp)
            _apply_meta(dtmp, record["meta"])
            _crash_point("tmp", seq)
            os.replace(dtmp, dest)
            _fsync_dir(dest)
            last_check(dest)  # the copy may predate a write: only unlink what was copied
            os.unlink(step.path)
        _fsync_dir(dest)
    _fsync_dir(step.path)
    _after_replace(step, seq)
    now = os.fstat(fd)
    if detached and (now.st_size, now.st_mtime_ns) != stamp[2:4]:
        # Written through a descriptor held across the replace: the old inode has the newer
        # bytes and no name. Give them their name back; undo has nothing to do for this step.
        if aside is not None and _is_inode(aside, stamp[0], stamp[1]):
            os.replace(aside, step.path)  # the very inode, the writer's fd still on it
            _fsync_dir(step.path)
        else:
            _restore_from_fd(fd, step.path, tmp, record["meta"], record["xattrs"])
        log.write({"type": "aborted", "seq": seq})
        raise ChangedDuringAction("changed during the action (written after the replace); its bytes restored")
    _crash_point("acted", seq)
    log.write({"type": "done", "seq": seq})
    verb = {
        "hardlink": "linked",
        "reflink": "cloned",
        "symlink": "symlinked",
        "delete": "deleted",
        "quarantine": "quarantined",
    }
    return f"{verb[step.op]} {os.fsdecode(step.path)} (kept {os.fsdecode(step.keep)})"


def default_undo_log() -> str:
    return os.path.abspath(time.strftime("dedup-undo-%Y%m%dT%H%M%SZ.jsonl", time.gmtime()))


def plan_and_run(
    result: ScanResult,
    *,
    action: str,
    keep: str,
    apply: bool,
    out: TextIO,
    quarantine_dir: str | None = None,
    undo_log: str | None = None,
) -> int:
    """Print the plan (dry run) or carry it out; return the number of steps that failed."""
    steps = plan(result, action, keep)
    if not apply:
        for s in steps:
            out.write(f"would {s.op} {os.fsdecode(s.path)} (keep {os.fsdecode(s.keep)})\n")
        out.write(f"dry run: {len(steps)} {action} steps planned; add --apply to act\n")
        return 0
    qdir = os.fsencode(os.path.abspath(quarantine_dir)) if quarantine_dir else None
    log_path = undo_log or default_undo_log()
    log = UndoLog(log_path)
    aside_dir = os.fsencode(os.path.abspath(log_path)) + b".aside"
    failures = 0
    unsupported: dict[int, list[int]] = {}  # device -> [steps skipped]; said once per filesystem
    try:
        log.write({"type": "header", "version": 1, "action": action, "keep": keep, "ts": time.time()})
        for seq, s in enumerate(steps, 1):
            if s.kept.dev in unsupported:
                unsupported[s.kept.dev].append(seq)
                failures += 1
                continue
            try:
                out.write(execute(s, seq, log, qdir, aside_dir) + "\n")
            except Unsupported as exc:
                failures += 1
                unsupported[s.kept.dev] = [seq]
                out.write(f"{action} refused: {exc} (filesystem of {os.fsdecode(s.keep)})\n")
            except (ActionRefused, OSError) as exc:
                failures += 1
                out.write(f"skipped {os.fsdecode(s.path)}: {exc}\n")
    finally:
        log.close()
    with contextlib.suppress(OSError):
        os.rmdir(aside_dir)  # nothing was linked aside
    for skipped in unsupported.values():
        out.write(f"{action}: {len(skipped)} steps on that filesystem not taken\n")
    out.write(f"applied {len(steps) - failures} of {len(steps)} {action} steps; undo log: {log_path}\n")
    return failures


def _read_log(path: str) -> tuple[list[dict[str, Any]], set[int]]:
    intents: list[dict[str, Any]] = []
    done: set[int] = set()
    aborted: set[int] = set()
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a torn last line from a crash mid-write: the step never started
            if rec.get("type") == "intent":
                intents.append(rec)
            elif rec.get("type") == "done":
                done.add(rec["seq"])
            elif rec.get("type") == "aborted":
                aborted.add(rec["seq"])
    # An aborted step left the name holding its own bytes (never replaced, or restored).
    return [r for r in intents if r["seq"] not in aborted], done


def _restore_copy(
    path: bytes, source: bytes, meta: dict[str, int], tmp: bytes, xattrs: dict[str, str] | None = None
) -> None:
    if os.path.lexists(tmp):
        os.unlink(tmp)
    _copy_durable(source, tmp)
    _apply_meta(tmp, meta)
    _apply_xattrs(tmp, xattrs or {})
    os.replace(tmp, path)
    _fsync_dir(path)


def _drop_aside(aside: bytes | None, meta: dict[str, int]) -> None:
    """An aside link no longer needed (its inode has its names back): removed."""
    if aside is not None and _is_inode(aside, meta["dev"], meta["ino"]):
        os.unlink(aside)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(aside))  # the last one


def undo_step(rec: dict[str, Any], restored: dict[tuple[int, int], bytes] | None = None) -> str | None:
    """Put one name back as it was; return what was done, or None when nothing was needed."""
    path, keep, tmp, meta = _unb64(rec["path"]), _unb64(rec["keep"]), _unb64(rec["tmp"]), rec["meta"]
    op = rec["op"]
    xattrs: dict[str, str] = rec.get("xattrs") or {}
    if os.path.lexists(tmp) and op != "quarantine":
        os.unlink(tmp)  # a step killed between creating the temp name and replacing
    if op == "quarantine":
        dest, dtmp = _unb64(rec["dest"]), _unb64(rec["dest_tmp"])
        if os.path.lexists(dtmp):
            os.unlink(dtmp)
        if os.path.lexists(dest) and not os.path.lexists(path):
            try:
                os.rename(dest, path)  # same filesystem: the original inode comes back
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                # Across filesystems: a durable copy under the temp name, then the swap; the
                # quarantined copy goes only once the name holds the bytes again.
                _restore_copy(path, dest, meta, tmp, xattrs)
                os.unlink(dest)
            _fsync_dir(path)
            return f"returned {os.fsdecode(path)} from quarantine"
        if os.path.lexists(dest) and os.path.lexists(path):
            os.unlink(dest)  # cross-device copy finished but the original was never removed
            return f"removed quarantine copy of {os.fsdecode(path)}"
        return None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    aside = _unb64(rec["aside"]) if rec.get("aside") else None
    if st is not None and st.st_ino == meta["ino"] and st.st_dev == meta["dev"]:
        _drop_aside(aside, meta)
        return None  # the step never replaced the name
    if (
        op == "hardlink"
        and st is not None
        and not (os.path.exists(keep) and os.path.samestat(st, os.stat(keep)))
    ):
        return f"left {os.fsdecode(path)} alone: changed after the action"
    if op == "delete" and st is not None:
        return f"left {os.fsdecode(path)} alone: recreated after the action"
    if op == "symlink" and st is not None:
        target = _unb64(rec["target"]) if rec.get("target") else None
        if not (stat.S_ISLNK(st.st_mode) and target is not None and os.readlink(path) == target):
            return f"left {os.fsdecode(path)} alone: changed after the action"
    original = (meta["dev"], meta["ino"])
    if aside is not None and _is_inode(aside, *original) and not (restored and original in restored):
        os.replace(aside, path)  # the inode outlived the step (names outside the scan): it again
        _fsync_dir(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(aside))  # the last one
        if restored is not None:
            restored[original] = path
        return f"restored {os.fsdecode(path)} (its own inode, from {os.fsdecode(aside)})"
    if op == "reflink" and st is not None:
        _apply_meta(path, meta)  # content is already a separate identical copy
        _apply_xattrs(path, xattrs)
        return f"restored metadata of {os.fsdecode(path)}"
    # hardlink (name now shares the kept inode) or delete (name gone): give it back its own
    # copy of the content, which was proven identical to the kept file before acting.
    if restored is not None and original not in restored:
        for other in map(_unb64, rec.get("names", [])):
            try:
                ost = os.lstat(other)
            except FileNotFoundError:
                continue
            if other != path and (ost.st_dev, ost.st_ino) == original:
                restored[original] = other  # a name the action never reached still holds it
                break
    if restored is not None and original in restored and os.path.exists(restored[original]):
        # Another name of the same original inode is back already: link to it, so the names
        # share one inode again, as they did before the action.
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.link(restored[original], tmp)
        os.replace(tmp, path)
        _fsync_dir(path)
        _drop_aside(aside, meta)
        return f"restored {os.fsdecode(path)} (linked to {os.fsdecode(restored[original])})"
    source = keep if os.path.exists(keep) else path
    if not os.path.exists(source):
        raise FileNotFoundError(f"cannot restore {os.fsdecode(path)}: kept file {os.fsdecode(keep)} is gone")
    _restore_copy(path, source, meta, tmp, xattrs)
    if restored is not None:
        restored[original] = path
    return f"restored {os.fsdecode(path)}"


def undo(log_path: str, out: TextIO) -> int:
    intents, _done = _read_log(log_path)
    failures = 0
    restored: dict[tuple[int, int], bytes] = {}  # original (dev, inode) -> name restored first
    for rec in reversed(intents):
        try:
            msg = undo_step(rec, restored)
        except OSError as exc:
            failures += 1
            out.write(f"failed: {exc}\n")
            continue
        if msg:
            out.write(msg + "\n")
    out.write(f"undo: {len(intents)} recorded steps examined, {failures} failed\n")
    return failures
