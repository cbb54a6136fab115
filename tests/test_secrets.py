"""The secrets nurture keeps or is given (the API token, the key that signs unsubscribe links):
never empty or short, whether from the environment or from the files kept in NURTURE_HOME, and
a kept file is made once, atomically, readable by its owner only, however many processes start
at the same moment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import NurtureError
from engine.settings import Settings
from tests.helpers import ROOT, api_home, run_cli

KEPT = {"access_token": ".nurture-token", "signing_key": ".nurture-secret"}


@pytest.mark.parametrize("secret", ["access_token", "signing_key"])
@pytest.mark.parametrize("content", ["", "\n", "short-but-not-empty"])
def test_an_empty_or_short_kept_secret_is_refused(
    tmp_path: Path, secret: str, content: str
) -> None:
    (tmp_path / KEPT[secret]).write_text(content)
    with pytest.raises(NurtureError) as refused:
        getattr(Settings(home=tmp_path), secret)()
    assert str(tmp_path / KEPT[secret]) in str(refused.value)
    assert "at least 32 characters" in str(refused.value)


@pytest.mark.parametrize("name", ["NURTURE_API_TOKEN", "NURTURE_SECRET_KEY"])
@pytest.mark.parametrize("value", ["", "hunter2"])
def test_an_empty_or_short_secret_in_the_environment_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    result, _ = run_cli(monkeypatch, api_home(tmp_path), ["leads"], **{name: value})
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {name}: ") and "at least 32 characters" in lines[0]
    assert "hunter2" not in result.output


def test_serve_refuses_an_empty_kept_token_rather_than_accepting_an_empty_cookie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (api_home(tmp_path) / ".nurture-token").write_text("")
    result, started = run_cli(monkeypatch, tmp_path, ["serve"])
    assert result.exit_code == 1 and not started
    assert ".nurture-token" in result.output and "Traceback" not in result.output


HOMES = 40
# Each process, released at the same moment, reads the secrets of the same fresh homes in turn:
# every home is a race between six first readers.
STARTER = f"""
import pathlib, sys
from engine.settings import Settings
root, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
while not go.exists():
    pass
for n in range({HOMES}):
    settings = Settings(home=root / str(n))
    print(n, settings.signing_key(), settings.access_token())
"""


def test_six_processes_starting_at_once_keep_one_key(tmp_path: Path) -> None:
    root, go = tmp_path / "homes", tmp_path / "go"
    for n in range(HOMES):
        (root / str(n)).mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NURTURE_API_TOKEN", None)
    env.pop("NURTURE_SECRET_KEY", None)
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(root), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    time.sleep(1.0)  # all six imported and waiting
    go.touch()
    outputs = [starter.communicate(timeout=120)[0] for starter in starters]
    assert all(starter.returncode == 0 for starter in starters)
    for n in range(HOMES):
        home = root / str(n)
        seen = {
            line for output in outputs for line in output.splitlines() if line.split()[0] == str(n)
        }
        assert seen == {
            f"{n} {(home / '.nurture-secret').read_text()} {(home / '.nurture-token').read_text()}"
        }, home
        for name in KEPT.values():
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
        assert sorted(p.name for p in home.iterdir()) == [".nurture-secret", ".nurture-token"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NURTURE_LOG_LEVEL", "chatty"),
        ("NURTURE_BATCH_SIZE", "0"),
        ("NURTURE_BATCH_SIZE", "lots"),
        ("NURTURE_MAX_BODY_BYTES", "-1"),
        ("NURTURE_SEND_CONCURRENCY", "0"),
        ("NURTURE_MAX_ATTEMPTS", "0"),
        ("NURTURE_SEND_TIMEOUT", "0"),
    ],
)
def test_a_setting_nurture_cannot_run_with_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    result, _ = run_cli(monkeypatch, api_home(tmp_path), ["serve"], **{name: value})
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {name}: ") and len(result.output.splitlines()) == 1


def test_a_webhook_public_key_that_is_no_key_stops_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = {"NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY": "bm90IGEga2V5"}
    result, _ = run_cli(monkeypatch, api_home(tmp_path), ["serve"], **key)
    assert result.exit_code == 1
    assert result.output.startswith(
        "error: NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY: not an ECDSA public key"
    )
