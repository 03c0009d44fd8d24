"""The server's scheduling group (Linux autogroup) gets --sched-group-nice at start-up, only where
the server leads its own session (make run starts each service so) and the kernel allows it.
Drill 5: without it the server's session competed as one equal with every other on a shared box,
and its slowest refusals were its main thread runnable but not running (app.py)."""

from __future__ import annotations

from pathlib import Path

from services.inference.app import raise_sched_group_priority
from services.inference.settings import InferenceSettings


def test_a_session_leader_sets_its_groups_niceness(tmp_path: Path):
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    assert raise_sched_group_priority(-10, str(group), leader=True) == -10
    assert group.read_text() == "-10"


def test_a_process_that_does_not_lead_its_session_leaves_the_group_alone(tmp_path: Path):
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    # the group would be the caller's shell's too
    assert raise_sched_group_priority(-10, str(group), leader=False) is None
    assert group.read_text() == "/autogroup-7 nice 0\n"


def test_zero_leaves_it_alone(tmp_path: Path):
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 5\n")
    assert raise_sched_group_priority(0, str(group), leader=True) is None
    assert group.read_text() == "/autogroup-7 nice 5\n"


def test_a_refused_write_changes_nothing_and_does_not_raise(tmp_path: Path):
    # no such file: as where there is no autogroup, or a negative value without CAP_SYS_NICE
    assert raise_sched_group_priority(-10, str(tmp_path / "missing" / "autogroup"), leader=True) is None


def test_the_setting_defaults_to_minus_10_and_is_bounded():
    assert InferenceSettings().sched_group_nice == -10
    assert InferenceSettings(sched_group_nice=0).sched_group_nice == 0
    for bad in (-21, 20):
        try:
            InferenceSettings(sched_group_nice=bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad} accepted")
