"""Installing memzd as a user service: a launchd agent on macOS, a systemd user unit elsewhere.

This module owns the service file (its text, where it lives, its name) and the
service-manager commands that load, unload and query it. `plan()` only works
out what would be done, so `memzctl service ... --dry-run` can show it;
`execute()` does it. One home maps to one service name, after the home's
folder and a short hash of its path (`dev.memz.notes-1a2b3c`), so two homes on
one machine run side by side and `launchctl list` says which is which.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ServiceError
from .files import write_atomic

ACTIONS = ("install", "uninstall", "status", "start", "stop", "restart")
KINDS = ("launchd", "systemd")
THROTTLE_S = 10  # wait this long before restarting a crashed daemon
STOP_TIMEOUT_S = 30  # memzd stops within 5 s of SIGTERM in any phase; kill only if it hangs past this
TCC_FOLDERS = ("Desktop", "Documents", "Downloads")  # launchd agents are denied these


@dataclass
class ServicePlan:
    """What install, uninstall or status would do; `execute()` carries it out."""

    kind: str  # "launchd" | "systemd"
    path: Path  # the service file to write or remove
    content: str | None  # file text to write (None for uninstall and status)
    commands: list[list[str]]  # run in order after the file is written or removed; failure raises
    warnings: list[str]
    action: str = "install"
    best_effort: list[list[str]] = field(default_factory=list)  # run first; failure is reported, not raised
    make_dirs: list[Path] = field(default_factory=list)  # created before the file is written


def default_kind() -> str:
    """The service manager of this platform: launchd on macOS, systemd elsewhere."""
    return "launchd" if sys.platform == "darwin" else "systemd"


def service_id(home: Path) -> str:
    """The home's folder name (letters, digits, - and _) and a short hash of its path."""
    home = Path(home).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", home.name).strip("-").lower()[:40] or "home"
    return f"{name}-{hashlib.sha256(str(home).encode()).hexdigest()[:6]}"


def service_name(home: Path, kind: str) -> str:
    """The launchd label (`dev.memz.<name>`) or systemd unit name (`memz-<name>.service`)."""
    return f"dev.memz.{service_id(home)}" if kind == "launchd" else f"memz-{service_id(home)}.service"


def environment(home: Path, memzd_path: Path) -> dict[str, str]:
    """Variables the daemon runs with: this environment's bin first on PATH, offline hub."""
    path = [str(memzd_path.parent), "/usr/local/bin", "/usr/bin", "/bin"]
    if sys.platform == "darwin":
        path.insert(1, "/opt/homebrew/bin")
    return {"PATH": ":".join(path), "MEMZ_HOME": str(home), "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def launchd_plist(label: str, home: Path, memzd_path: Path) -> str:
    """The launchd agent: starts at login, restarted after a crash, logs under home/logs."""
    logs = home / "logs"
    return plistlib.dumps({
        "Label": label,
        "ProgramArguments": [str(memzd_path), "--home", str(home)],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},  # restart only after a crash
        "ThrottleInterval": THROTTLE_S,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "WorkingDirectory": str(home),
        "StandardOutPath": str(logs / "memzd.out.log"),
        "StandardErrorPath": str(logs / "memzd.err.log"),
        "EnvironmentVariables": environment(home, memzd_path),
    }).decode()


def _specifiers(text: str) -> str:
    """Escape systemd's `%` specifiers, which it expands in almost every setting."""
    return text.replace("%", "%%")


def systemd_quote(word: str) -> str:
    """One word of an ExecStart= or Environment= line, quoted as systemd splits them."""
    word = _specifiers(word)
    if word and not any(c in word for c in " \t\"'\\;"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(home: Path, memzd_path: Path) -> str:
    """The systemd user unit: started with the user session, restarted after a crash."""
    logs = home / "logs"
    # `$` would start a variable in ExecStart=, so double it there only.
    exec_start = " ".join(systemd_quote(w).replace("$", "$$") for w in (str(memzd_path), "--home", str(home)))
    env = [f"Environment={systemd_quote(f'{k}={v}')}" for k, v in environment(home, memzd_path).items()]
    return "\n".join([
        "[Unit]",
        f"Description=memz daemon for {_specifiers(str(home))}",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={_specifiers(str(home))}",
        *env,
        "Restart=on-failure",
        f"RestartSec={THROTTLE_S}",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        f"StandardOutput=append:{_specifiers(str(logs / 'memzd.out.log'))}",
        f"StandardError=append:{_specifiers(str(logs / 'memzd.err.log'))}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def plan(action: str, home: Path, kind: str | None = None, *,
         user_home: Path | None = None, memzd_path: Path | None = None) -> ServicePlan:
    """Work out the file and the commands for `action` on the service of `home`; changes nothing."""
    if action not in ACTIONS:
        raise ServiceError(f"unknown service action {action!r}; use one of: {', '.join(ACTIONS)}")
    kind = kind or default_kind()
    if kind not in KINDS:
        raise ServiceError(f"unknown service kind {kind!r}; use one of: {', '.join(KINDS)}")
    home = Path(home).expanduser().resolve()
    user_home = Path(user_home or Path.home()).expanduser().resolve()
    memzd_path = Path(memzd_path or Path(sys.executable).parent / "memzd").expanduser().absolute()
    if any("\n" in str(p) for p in (home, memzd_path)):
        raise ServiceError(f"a path with a line break cannot go in a service file: {home!r}")
    name = service_name(home, kind)
    warnings: list[str] = []
    if action == "install" and not memzd_path.exists():
        warnings.append(f"{memzd_path} does not exist; install memz into this environment "
                        "(pip install -e .) or the service will fail to start")

    if kind == "launchd":
        path = user_home / "Library" / "LaunchAgents" / f"{name}.plist"
        domain = f"gui/{os.getuid()}"
        target = f"{domain}/{name}"
        if any(home.is_relative_to(user_home / d) for d in TCC_FOLDERS):
            warnings.append(f"{home} is inside ~/Desktop, ~/Documents or ~/Downloads, which macOS "
                            "denies to launchd agents; move the home elsewhere (e.g. ~/memz)")
        if action == "install":
            return ServicePlan(kind, path, launchd_plist(name, home, memzd_path),
                               [["launchctl", "bootstrap", domain, str(path)]], warnings, action,
                               best_effort=[["launchctl", "bootout", target]], make_dirs=[home / "logs"])
        if action == "uninstall":
            return ServicePlan(kind, path, None, [], warnings, action,
                               best_effort=[["launchctl", "bootout", target]])
        if action in ("start", "stop", "restart"):
            _require_installed(path, action)
            command = {"start": ["launchctl", "kickstart", target],
                       "stop": ["launchctl", "kill", "SIGTERM", target],
                       "restart": ["launchctl", "kickstart", "-k", target]}[action]
            return ServicePlan(kind, path, None, [command], warnings, action)
        return ServicePlan(kind, path, None, [], warnings, action,
                           best_effort=[["launchctl", "print", target]])

    path = user_home / ".config" / "systemd" / "user" / name
    ctl = ["systemctl", "--user"]
    if action == "install":
        # restart, not `enable --now`: a reinstall must pick up a changed unit
        return ServicePlan(kind, path, systemd_unit(home, memzd_path),
                           [ctl + ["daemon-reload"], ctl + ["enable", name], ctl + ["restart", name]],
                           warnings, action, make_dirs=[home / "logs"])
    if action == "uninstall":
        return ServicePlan(kind, path, None, [ctl + ["daemon-reload"]], warnings, action,
                           best_effort=[ctl + ["disable", "--now", name]])
    if action in ("start", "stop", "restart"):
        _require_installed(path, action)
        return ServicePlan(kind, path, None, [ctl + [action, name]], warnings, action)
    return ServicePlan(kind, path, None, [], warnings, action,
                       best_effort=[ctl + ["status", "--no-pager", name]])


def _require_installed(path: Path, action: str) -> None:
    if not path.exists():
        raise ServiceError(f"cannot {action}: no service is installed for this home ({path} is missing); "
                           "install it with: memzctl service install")


def _run(cmd: list[str], run) -> subprocess.CompletedProcess:
    try:
        return run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        hint = "--systemd" if cmd[0] == "launchctl" else "--launchd"
        raise ServiceError(f"{cmd[0]} not found: this system has no {cmd[0]}; "
                           f"try {hint}, or run memzd in the foreground") from None


def execute(plan: ServicePlan, run=subprocess.run) -> list[str]:
    """Carry out `plan`: run best-effort commands, write or remove the file, run the rest.

    Returns lines to show the user. Raises ServiceError, with the command's
    stderr, when a command is missing or a required one fails.
    """
    lines = [f"warning: {w}" for w in plan.warnings]
    if plan.action == "status":
        state = "installed" if plan.path.exists() else "not installed"
        lines.append(f"{plan.kind} service {state}: {plan.path}")
    for cmd in plan.best_effort:
        done = _run(cmd, run)
        if plan.action == "status":  # a stopped or unknown service exits non-zero: show, don't raise
            lines += (done.stdout or "").rstrip().splitlines() or (done.stderr or "").rstrip().splitlines()
        elif done.returncode != 0:
            lines.append(f"note: `{' '.join(cmd)}` exited {done.returncode} (fine if it was not running)")
    for d in plan.make_dirs:
        d.mkdir(parents=True, exist_ok=True)
    if plan.content is not None:
        plan.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(plan.path, plan.content)
        lines.append(f"wrote {plan.path}")
    elif plan.action == "uninstall":
        if plan.path.exists():
            plan.path.unlink()
            lines.append(f"removed {plan.path}")
        else:
            lines.append(f"no service file at {plan.path}")
    for cmd in plan.commands:
        try:
            done = _run(cmd, run)
        except ServiceError:
            _undo(plan)
            raise
        if done.returncode != 0:
            _undo(plan)
            err = (done.stderr or done.stdout or "").strip() or "(no output)"
            raise ServiceError(f"`{' '.join(cmd)}` failed with exit code {done.returncode}: {err}"
                               + ("; the service file was removed again" if plan.action == "install" else ""))
        lines.append(f"ran: {' '.join(cmd)}")
    return lines


def _undo(plan: ServicePlan) -> None:
    """An install that fails leaves no service file behind."""
    if plan.action == "install" and plan.content is not None:
        plan.path.unlink(missing_ok=True)
