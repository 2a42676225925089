"""The user service: launchd plists and systemd units as written, and execute() with a fake runner.

Nothing here touches the real ~ or calls launchctl or systemctl: every plan
gets a tmp user_home and memzd_path, and execute() gets a recording `run`.
"""

import plistlib
import shlex
import subprocess
from pathlib import Path

import pytest

from memzd import service
from memzd.errors import ServiceError


@pytest.fixture
def user_home(tmp_path):
    return tmp_path / "user"


@pytest.fixture
def memzd_path(tmp_path):
    path = tmp_path / "venv" / "bin" / "memzd"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    return path


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "homes" / "main"
    path.mkdir(parents=True)
    return path


class FakeRun:
    """Records commands like subprocess.run would receive them; fails the ones told to."""

    def __init__(self, fail: dict | None = None, stdout: str = ""):
        self.calls: list[list[str]] = []
        self.fail = fail or {}
        self.stdout = stdout

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        for word, (code, err) in self.fail.items():
            if word in cmd:
                return subprocess.CompletedProcess(cmd, code, "", err)
        return subprocess.CompletedProcess(cmd, 0, self.stdout, "")


def unit_settings(text: str) -> dict[str, list[str]]:
    """A systemd unit read by lines: "Section.Key" -> every value it was given."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def systemd_words(value: str) -> list[str]:
    """Split an ExecStart= value the way systemd does for the quoting service.py emits."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(value)]


def test_launchd_plist_key_by_key(home, user_home, memzd_path):
    p = service.plan("install", home, "launchd", user_home=user_home, memzd_path=memzd_path)
    label = service.service_name(home, "launchd")
    assert p.path == user_home / "Library" / "LaunchAgents" / f"{label}.plist"
    plist = plistlib.loads(p.content.encode())
    assert plist["Label"] == label and label.startswith("dev.memz.")
    assert plist["ProgramArguments"] == [str(memzd_path), "--home", str(home.resolve())]
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 10
    assert plist["WorkingDirectory"] == str(home.resolve())
    assert plist["StandardOutPath"] == str(home.resolve() / "logs" / "memzd.out.log")
    assert plist["StandardErrorPath"] == str(home.resolve() / "logs" / "memzd.err.log")
    env = plist["EnvironmentVariables"]
    assert env["PATH"].split(":")[0] == str(memzd_path.parent)
    assert env["MEMZ_HOME"] == str(home.resolve())
    assert env["PYTHONUNBUFFERED"] == env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert p.commands[-1][:2] == ["launchctl", "bootstrap"] and p.commands[-1][-1] == str(p.path)
    assert p.warnings == []


def test_default_memzd_is_next_to_this_python(home, user_home):
    p = service.plan("install", home, "launchd", user_home=user_home)
    import sys
    assert plistlib.loads(p.content.encode())["ProgramArguments"][0] == str(Path(sys.executable).parent / "memzd")


def test_two_homes_get_two_services(tmp_path, user_home, memzd_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for kind in service.KINDS:
        pa = service.plan("install", a, kind, user_home=user_home, memzd_path=memzd_path)
        pb = service.plan("install", b, kind, user_home=user_home, memzd_path=memzd_path)
        assert pa.path != pb.path
    assert service.service_name(a, "launchd") == service.service_name(tmp_path / "x" / ".." / "a", "launchd")


def test_systemd_unit(home, user_home, memzd_path):
    p = service.plan("install", home, "systemd", user_home=user_home, memzd_path=memzd_path)
    name = service.service_name(home, "systemd")
    assert p.path == user_home / ".config" / "systemd" / "user" / name
    s = unit_settings(p.content)
    assert systemd_words(s["Service.ExecStart"][0]) == [str(memzd_path), "--home", str(home.resolve())]
    assert s["Service.Type"] == ["simple"]
    assert s["Service.Restart"] == ["on-failure"]
    assert s["Service.KillSignal"] == ["SIGTERM"]
    assert s["Service.WorkingDirectory"] == [str(home.resolve())]
    assert s["Service.StandardOutput"] == [f"append:{home.resolve()}/logs/memzd.out.log"]
    assert s["Service.StandardError"] == [f"append:{home.resolve()}/logs/memzd.err.log"]
    assert s["Install.WantedBy"] == ["default.target"]
    env = dict(w.split("=", 1) for v in s["Service.Environment"] for w in shlex.split(v))
    assert env["MEMZ_HOME"] == str(home.resolve())
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["PYTHONUNBUFFERED"] == "1"
    assert p.commands == [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", name],
                          ["systemctl", "--user", "restart", name]]


def test_paths_with_spaces_and_percent_are_quoted(tmp_path, user_home):
    home = tmp_path / "my memz 100%"
    memzd_path = tmp_path / "a venv" / "bin" / "memzd"
    p = service.plan("install", home, "systemd", user_home=user_home, memzd_path=memzd_path)
    s = unit_settings(p.content)
    exec_start = s["Service.ExecStart"][0]
    assert exec_start.startswith(f'"{tmp_path}/a venv/bin/memzd" --home "')
    assert systemd_words(exec_start) == [str(memzd_path), "--home", str(home)]
    assert s["Service.WorkingDirectory"] == [str(home).replace("%", "%%")]
    env = dict(w.split("=", 1) for v in s["Service.Environment"] for w in shlex.split(v))
    assert env["MEMZ_HOME"].replace("%%", "%") == str(home)
    # launchd takes arguments as a list: nothing to quote
    p = service.plan("install", home, "launchd", user_home=user_home, memzd_path=memzd_path)
    assert plistlib.loads(p.content.encode())["ProgramArguments"] == [str(memzd_path), "--home", str(home)]


@pytest.mark.parametrize("folder", ["Desktop", "Documents", "Downloads"])
def test_launchd_warns_about_protected_folders(user_home, memzd_path, folder):
    p = service.plan("install", user_home / folder / "memz", "launchd", user_home=user_home, memzd_path=memzd_path)
    assert any(folder in w or "Desktop" in w for w in p.warnings)
    assert any("launchd" in w for w in p.warnings)
    assert service.plan("install", user_home / "memz", "launchd",
                        user_home=user_home, memzd_path=memzd_path).warnings == []


def test_missing_memzd_is_a_warning(home, user_home, tmp_path):
    p = service.plan("install", home, "systemd", user_home=user_home, memzd_path=tmp_path / "nowhere" / "memzd")
    assert any("does not exist" in w for w in p.warnings)


def test_install_then_uninstall_launchd(home, user_home, memzd_path):
    run = FakeRun(fail={"bootout": (3, "Boot-out failed: 3: No such process")})
    p = service.plan("install", home, "launchd", user_home=user_home, memzd_path=memzd_path)
    lines = service.execute(p, run=run)
    assert p.path.read_text() == p.content
    assert (home / "logs").is_dir()
    assert [c[:2] for c in run.calls] == [["launchctl", "bootout"], ["launchctl", "bootstrap"]]
    assert f"wrote {p.path}" in lines

    run = FakeRun()
    p = service.plan("uninstall", home, "launchd", user_home=user_home, memzd_path=memzd_path)
    lines = service.execute(p, run=run)
    assert not p.path.exists()
    assert run.calls == [["launchctl", "bootout", f"gui/{__import__('os').getuid()}/{service.service_name(home, 'launchd')}"]]
    assert f"removed {p.path}" in lines


def test_install_then_uninstall_systemd(home, user_home, memzd_path):
    run = FakeRun()
    p = service.plan("install", home, "systemd", user_home=user_home, memzd_path=memzd_path)
    service.execute(p, run=run)
    assert p.path.read_text() == p.content
    assert run.calls == p.commands

    run = FakeRun()
    p = service.plan("uninstall", home, "systemd", user_home=user_home, memzd_path=memzd_path)
    service.execute(p, run=run)
    assert not p.path.exists()
    name = service.service_name(home, "systemd")
    assert run.calls == [["systemctl", "--user", "disable", "--now", name], ["systemctl", "--user", "daemon-reload"]]


def test_status_shows_output_even_when_not_running(home, user_home, memzd_path):
    run = FakeRun(fail={"status": (3, "")})
    run.stdout = "inactive (dead)"
    p = service.plan("status", home, "systemd", user_home=user_home, memzd_path=memzd_path)
    lines = service.execute(p, run=run)
    assert lines[0].startswith("systemd service not installed")
    assert run.calls == [["systemctl", "--user", "status", "--no-pager", service.service_name(home, "systemd")]]


def test_failing_command_raises_with_its_stderr_and_leaves_no_service_file(home, user_home, memzd_path):
    run = FakeRun(fail={"bootstrap": (5, "Bootstrap failed: 5: Input/output error")})
    p = service.plan("install", home, "launchd", user_home=user_home, memzd_path=memzd_path)
    with pytest.raises(ServiceError, match="Input/output error"):
        service.execute(p, run=run)
    assert not p.path.exists(), "a failed install left its plist behind"


def test_labels_are_named_after_the_home(tmp_path, user_home):
    notes = tmp_path / "My Notes!"
    notes.mkdir()
    label = service.service_name(notes, "launchd")
    assert label.startswith("dev.memz.my-notes-") and " " not in label
    assert service.service_name(notes, "systemd").startswith("memz-my-notes-")


@pytest.mark.parametrize("kind, action, command", [
    ("systemd", "start", ["systemctl", "--user", "start"]),
    ("systemd", "stop", ["systemctl", "--user", "stop"]),
    ("systemd", "restart", ["systemctl", "--user", "restart"]),
    ("launchd", "start", ["launchctl", "kickstart"]),
    ("launchd", "stop", ["launchctl", "kill", "SIGTERM"]),
    ("launchd", "restart", ["launchctl", "kickstart", "-k"]),
])
def test_start_stop_restart_an_installed_service(home, user_home, memzd_path, kind, action, command):
    with pytest.raises(ServiceError, match="memzctl service install"):  # not installed yet
        service.plan(action, home, kind, user_home=user_home, memzd_path=memzd_path)
    service.execute(service.plan("install", home, kind, user_home=user_home, memzd_path=memzd_path), run=FakeRun())
    run = FakeRun()
    service.execute(service.plan(action, home, kind, user_home=user_home, memzd_path=memzd_path), run=run)
    assert run.calls[0][:len(command)] == command


def test_the_stop_timeout_covers_a_daemon_that_stops_in_5_s(home, user_home, memzd_path):
    unit = service.plan("install", home, "systemd", user_home=user_home, memzd_path=memzd_path).content
    assert 5 < int(unit_settings(unit)["Service.TimeoutStopSec"][0]) <= 60
    plist = plistlib.loads(service.plan("install", home, "launchd", user_home=user_home,
                                        memzd_path=memzd_path).content.encode())
    assert 5 < plist["ExitTimeOut"] <= 60


def test_missing_service_manager_raises(home, user_home, memzd_path):
    def run(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])
    p = service.plan("install", home, "systemd", user_home=user_home, memzd_path=memzd_path)
    with pytest.raises(ServiceError, match="systemctl not found"):
        service.execute(p, run=run)


def test_bad_action_or_kind(home):
    with pytest.raises(ServiceError, match="install"):
        service.plan("reboot", home)
    with pytest.raises(ServiceError, match="launchd"):
        service.plan("install", home, "upstart")
