"""Settings: env then flags, validated, with one-line errors that name the flag or variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from libs.service.settings import ServiceSettings, SettingsError, load_settings, parse_settings

PREFIX = "PG_DEMO_"


class DemoSettings(ServiceSettings):
    """Demo service."""

    port: int = Field(8081, description="control API port")
    seeds: list[str] = Field(default_factory=list, description="start URLs")
    depths: list[int] = Field(default_factory=lambda: [1, 2], description="depth limits")
    polite: bool = Field(True, description="obey robots.txt")
    ratio: float | None = Field(None, gt=0, description="sampling ratio")
    limits: dict[str, int] = Field(default_factory=dict, description="per-host limits")


def load(argv: list[str], env: dict[str, str] | None = None) -> DemoSettings:
    return parse_settings(DemoSettings, argv, env_prefix=PREFIX, env=env or {})


def test_defaults_when_nothing_is_given() -> None:
    s = load([])
    assert (s.host, s.port, s.log_level, s.span_log) == ("127.0.0.1", 8081, "INFO", None)
    assert s.seeds == [] and s.depths == [1, 2] and s.polite is True and s.ratio is None


def test_environment_fills_fields_and_flags_override_it() -> None:
    env = {"PG_DEMO_PORT": "9000", "PG_DEMO_HOST": "0.0.0.0", "PG_DEMO_POLITE": "false"}
    s = load([], env)
    assert (s.port, s.host, s.polite) == (9000, "0.0.0.0", False)
    s = load(["--port", "9100", "--polite"], env)
    assert (s.port, s.host, s.polite) == (9100, "0.0.0.0", True)


def test_booleans_take_flag_and_no_flag() -> None:
    assert load(["--no-polite"]).polite is False
    assert load(["--polite"], {"PG_DEMO_POLITE": "0"}).polite is True
    for text, expected in [("yes", True), ("on", True), ("1", True), ("off", False), ("NO", False)]:
        assert load([], {"PG_DEMO_POLITE": text}).polite is expected


def test_lists_are_comma_separated_or_repeated() -> None:
    s = load(["--seeds", "http://a/,http://b/", "--seeds", "http://c/", "--depths", "3"])
    assert s.seeds == ["http://a/", "http://b/", "http://c/"]
    assert s.depths == [3]
    assert load([], {"PG_DEMO_SEEDS": "x, y,,z"}).seeds == ["x", "y", "z"]
    # a flag replaces the environment's list rather than appending to it
    assert load(["--seeds", "q"], {"PG_DEMO_SEEDS": "x,y"}).seeds == ["q"]


def test_dict_fields_read_json_and_path_fields_paths(tmp_path: Path) -> None:
    s = load(["--limits", '{"a": 1}', "--span-log", str(tmp_path / "s.jsonl")])
    assert s.limits == {"a": 1} and s.span_log == tmp_path / "s.jsonl"


def test_log_level_is_case_insensitive_and_checked() -> None:
    assert load(["--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SettingsError) as err:
        load(["--log-level", "loud"])
    assert err.value.source == "--log-level"
    assert "expected one of" in err.value.message and "'loud'" in err.value.message


def test_empty_env_on_optional_field_means_unset() -> None:
    assert load([], {"PG_DEMO_RATIO": ""}).ratio is None


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (["--port", "x"], {}, "error: --port: expected an integer, got 'x'"),
        ([], {"PG_DEMO_PORT": "x"}, "error: PG_DEMO_PORT: expected an integer, got 'x'"),
        (["--port", "70000"], {}, "error: --port: expected a port number 0-65535, got 70000"),
        (["--ratio", "-1"], {}, "error: --ratio: expected a value > 0.0, got '-1'"),
        (["--ratio", "abc"], {}, "error: --ratio: expected a number, got 'abc'"),
        (["--depths", "1,x"], {}, "error: --depths: item 2: expected an integer, got 'x'"),
        ([], {"PG_DEMO_POLITE": "maybe"}, "error: PG_DEMO_POLITE: expected a boolean"),
        (["--limits", "{nope"], {}, "error: --limits: expected a JSON object, got '{nope'"),
        (["--bogus"], {}, "error: unrecognized arguments: --bogus"),
        (["--port"], {}, "error: argument --port: expected one argument"),
    ],
)
def test_bad_values_print_one_line_naming_the_source_and_exit_2(
    argv: list[str], env: dict[str, str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        load_settings(DemoSettings, argv, env_prefix=PREFIX, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(line), err
    assert "Traceback" not in err


def test_flag_error_wins_over_env_and_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, ["--port", "y"], env_prefix=PREFIX, env={"PG_DEMO_PORT": "1"})
    assert capsys.readouterr().err == "error: --port: expected an integer, got 'y'\n"


class NeedsToken(ServiceSettings):
    token: str = Field(description="API token")


def test_missing_required_field_names_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_settings(NeedsToken, [], env_prefix="PG_T_", env={})
    assert capsys.readouterr().err == "error: --token: required, but not set\n"
    assert parse_settings(NeedsToken, [], env_prefix="PG_T_", env={"PG_T_TOKEN": "s3"}).token == "s3"


def test_help_lists_every_field_with_default_description_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_settings(DemoSettings, ["--help"], env_prefix=PREFIX, env={}, prog="demo")
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert out.startswith("usage: demo")
    for name, info in DemoSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in out and f"env PG_DEMO_{name.upper()}" in out
        assert info.description in out
    assert "--polite, --no-polite" in out and "default: on" in out
    assert "default: 8081" in out and "default: 1,2" in out and "default: 127.0.0.1" in out


def test_real_process_exit_code_and_stderr(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(
        "from libs.service.settings import ServiceSettings, load_settings\n"
        "s = load_settings(ServiceSettings, env_prefix='PG_X_')\n"
        "print(s.port)\n"
    )
    repo = Path(__file__).resolve().parents[3]
    run = subprocess.run(
        [sys.executable, str(script), "--port", "nope"],
        capture_output=True,
        text=True,
        cwd=repo,
        env={"PYTHONPATH": str(repo)},
        timeout=30,
    )
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == "error: --port: expected an integer, got 'nope'\n"
    ok = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=repo,
        env={"PYTHONPATH": str(repo), "PG_X_PORT": "1234"},
        timeout=30,
    )
    assert ok.returncode == 0 and ok.stdout == "1234\n"
