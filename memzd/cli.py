"""The command line: `memzd` runs the daemon, `memzctl` drives and inspects it.

Library errors (MemzError) become a red one-line message and exit code 1
here, at the boundary, and nowhere else.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import service as service_mod
from .config import Home
from .errors import ConfigError, DaemonNotRunning, MemzError
from .inbox import read_examples

console = Console()
err = Console(stderr=True, soft_wrap=True)

HOME_HELP = "The memz home (default: $MEMZ_HOME, else the current directory)."
REPO_ROOT = Path(__file__).resolve().parent.parent


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(1)


# -- memzd ----------------------------------------------------------------------

def memzd(
    home: Optional[Path] = typer.Option(None, "--home", help=HOME_HELP),
    once: bool = typer.Option(False, "--once", help="Drain: read the inbox, train what is pending "
                              "(even below the batch thresholds), answer waiting requests, exit 0."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
) -> None:
    """Run the memz daemon in the foreground: watch inbox/ and requests/, train, answer."""
    from .daemon import main_loop, setup_logging

    h = Home.resolve(home)
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}"))
    try:
        h.load_config()  # a bad config stops start-up before anything loads
        setup_logging(h, log_level)
        raise typer.Exit(main_loop(h, once))
    except MemzError as exc:
        _fail(exc)


def memzd_main() -> None:
    typer.run(memzd)


# -- memzctl --------------------------------------------------------------------

app = typer.Typer(help="Drive and inspect memz: add examples, ask, look at checkpoints, roll back.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
service_app = typer.Typer(help="Run memzd as a user service (launchd on macOS, systemd on Linux).",
                          no_args_is_help=True)
app.add_typer(service_app, name="service")


@app.callback()
def _root(ctx: typer.Context, home: Optional[Path] = typer.Option(None, "--home", help=HOME_HELP)) -> None:
    ctx.obj = Home.resolve(home)


def _store(home: Home):
    from .store import Store

    if not home.db_path.exists():
        raise MemzError(f"no memz database at {home.db_path}: is {home.root} a memz home? "
                        f"Create one with 'memzctl init {home.root}' and start 'memzd --home {home.root}'")
    return Store(home.db_path)


@app.command()
def init(ctx: typer.Context, directory: Optional[Path] = typer.Argument(None, help="Folder to make a home of "
                                                                        "(default: --home).")) -> None:
    """Create a fresh memz home with the default config and anchors."""
    home = Home(directory.expanduser().resolve()) if directory else ctx.obj
    home.ensure()
    if not home.config_path.exists():
        if (REPO_ROOT / "config.yaml").exists():
            shutil.copyfile(REPO_ROOT / "config.yaml", home.config_path)
        else:  # installed without the repository: write the defaults
            import yaml

            from .config import Config, config_to_dict
            home.config_path.write_text(yaml.safe_dump(config_to_dict(Config()), sort_keys=False))
    anchors = home.root / "anchors"
    if not anchors.exists() and (REPO_ROOT / "anchors").is_dir():
        shutil.copytree(REPO_ROOT / "anchors", anchors)
    console.print(f"memz home ready at [bold]{home.root}[/]\n"
                  f"  start the daemon:  memzd --home {home.root}\n"
                  f"  add examples:      memzctl --home {home.root} add FILE.jsonl")


@app.command()
def add(ctx: typer.Context, files: list[Path] = typer.Argument(..., help="JSONL files of examples.")) -> None:
    """Validate example files, then write them atomically into the inbox."""
    home: Home = ctx.obj
    home.inbox.mkdir(parents=True, exist_ok=True)
    failed = False
    for path in files:
        try:
            good, bad = _validate_file(path, home.load_config().daemon.max_line_bytes)
        except OSError as exc:
            err.print(f"[red]{path}[/]: {exc.strerror or exc}")
            failed = True
            continue
        for number, reason in bad[:10]:
            err.print(f"[yellow]{path}:{number}[/]: {reason}", highlight=False)
        if len(bad) > 10:
            err.print(f"[yellow]{path}[/]: ... and {len(bad) - 10} more bad lines")
        if not good:
            err.print(f"[red]{path}[/]: no usable example; nothing added")
            failed = True
            continue
        name = f"{path.stem}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = home.inbox / f".{name}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, home.inbox / name)
        print(f"added {path} as inbox/{name}: {good} examples"
                      + (f", {len(bad)} bad lines will be rejected" if bad else ""))
    if failed:
        raise typer.Exit(1)


def _validate_file(path: Path, max_line_bytes: int) -> tuple[int, list[tuple[int, str]]]:
    """Check a file line by line as the daemon will (streamed, same caps and messages)."""
    good, bad = 0, []
    with open(path, "rb") as f:
        for number, example, error, _ in read_examples(f, max_line_bytes):
            if error:
                bad.append((number, error))
            elif example is not None:
                good += 1
    return good, bad


def _status_data(home: Home) -> dict:
    from .control import daemon_pid
    from .model import base_model_name, pick_device

    config = home.load_config()
    store = _store(home)
    try:
        current = store.current_checkpoint()
        row = store.checkpoint(current) if current else None
        lineage = list(reversed(store.lineage(current)))
        latest = store.checkpoints()[0] if store.checkpoints() else None
        curve_batch = latest.batch_id if latest else None
        hw = store.get_json("hardware")
        if hw is None:
            device = pick_device(config.backend)
            hw = {"device": device.type, "backend": device.type}
        pid = daemon_pid(home)
        activity = store.get_json("activity") or {}
        metrics = row.metrics if row else {}
        return {
            "home": str(home.root),
            "base_model": base_model_name(config.base_model),
            "current_checkpoint": current,
            "checkpoint_status": row.status if row else None,
            "queue_depth": store.queue_depth(),
            "last_update": store.last_update(),
            "daemon": {"running": pid is not None, "pid": pid,
                       "activity": activity.get("text") if pid else "not running"},
            "loss_curves": {
                "finetune_loss": store.curve(curve_batch, "finetune_loss") if curve_batch else [],
                "forgetting_loss": store.curve(curve_batch, "forgetting_loss") if curve_batch else [],
                "eval_loss": [c.metrics.get("eval_loss") for c in lineage if c.metrics.get("eval_loss") is not None],
            },
            "forgetting_summary": {k: metrics.get(k) for k in
                                   ("anchor_ce_delta", "retention_score", "forgetting_loss")},
            "latest": {"checkpoint": latest.id if latest else None, "status": latest.status if latest else None,
                       "recall": latest.metrics.get("recall") if latest else None},
            "failed_batches": len(store.failed_batches()),
            "update_mode": config.update_mode,
            "rollback_mode": config.evaluation.rollback_mode,
            "hardware": hw,
        }
    finally:
        store.close()


def sparkline(values: list[float], width: int = 32) -> str:
    """A one-line sketch of a curve (newest on the right)."""
    values = [v for v in values if v is not None][-width:]
    if not values:
        return "-"
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[int((v - lo) / span * (len(bars) - 1))] for v in values)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command()
def status(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """What memz is doing: model, current checkpoint, queue, losses and forgetting."""
    try:
        data = _status_data(ctx.obj)
    except MemzError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    d = data["daemon"]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_row("base model", data["base_model"])
    t.add_row("current checkpoint", f"{data['current_checkpoint'] or '(base model)'}"
              + (f" [{data['checkpoint_status']}]" if data["checkpoint_status"] else ""))
    t.add_row("daemon", f"running, pid {d['pid']}: {d['activity']}" if d["running"] else
              f"not running (start it: memzd --home {data['home']})")
    t.add_row("queue depth", str(data["queue_depth"]))
    t.add_row("last update", data["last_update"] or "never")
    t.add_row("hardware", f"{data['hardware'].get('device')} ({data['hardware'].get('backend')})")
    fs = data["forgetting_summary"]
    t.add_row("forgetting", f"anchor_ce_delta {_fmt(fs['anchor_ce_delta'])}, "
              f"retention {_fmt(fs['retention_score'])}")
    for name, curve in data["loss_curves"].items():
        last = curve[-1] if curve else None
        t.add_row(name, f"{sparkline(curve)}  {_fmt(last)}")
    if data["latest"]["checkpoint"] and data["latest"]["checkpoint"] != data["current_checkpoint"]:
        t.add_row("latest checkpoint", f"{data['latest']['checkpoint']} [{data['latest']['status']}]")
    if data["failed_batches"]:
        t.add_row("failed batches", f"[red]{data['failed_batches']}[/] (see logs/memzd.log)")
    console.print(t)


@app.command()
def checkpoints(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The checkpoint lineage, newest first, with each one's figures (--json: all of them)."""
    try:
        store = _store(ctx.obj)
    except MemzError as exc:
        _fail(exc)
    try:
        rows, current = store.checkpoints(), store.current_checkpoint()
    finally:
        store.close()
    if as_json:
        print(json.dumps([{**r.__dict__, "current": r.id == current} for r in rows], indent=2))
        return
    if not rows:
        console.print("no checkpoints yet: drop a .jsonl file into inbox/ (or memzctl add FILE)")
        return
    t = Table("", "id", "parent", "status", "n", "recall", "ce_delta", "retention")
    for column in t.columns[1:3]:
        column.no_wrap = True  # ids are what people copy into --to
    for r in rows:
        m = r.metrics
        t.add_row("*" if r.id == current else "", r.id, r.parent or "(base)", r.status, _fmt(m.get("n_examples")),
                  _fmt(m.get("recall")), _fmt(m.get("anchor_ce_delta")), _fmt(m.get("retention_score")))
    console.print(t)


@app.command()
def rollback(ctx: typer.Context,
             to: Optional[str] = typer.Option(None, "--to", help="Checkpoint id to serve "
                                              "(default: the current one's parent)."),
             user: Optional[str] = typer.Option(None, "--user", help="Roll back this user's own "
                                                "lineage (default: the shared one).")) -> None:
    """Serve the current checkpoint's parent (or --to ID); the current one is marked rolled_back."""
    from . import control

    try:
        current, target = control.roll_back(ctx.obj, to, user)
    except MemzError as exc:
        _fail(exc)
    console.print(f"now serving {target or 'the base model'}" + (f" for {user}" if user else "")
                  + (f" ({current} rolled back)" if current else ""))


@app.command()
def forget(ctx: typer.Context,
           text: Optional[str] = typer.Argument(None, help="Forget every example holding this text."),
           example_id: Optional[int] = typer.Option(None, "--id", help="Forget the example with this id."),
           file: Optional[str] = typer.Option(None, "--file", help="Forget the examples of this inbox file name."),
           tag: Optional[str] = typer.Option(None, "--tag", help="Forget the examples with this tag."),
           user: Optional[str] = typer.Option(None, "--user", help="In this user's memory (default: the shared one)."),
           dry_run: bool = typer.Option(False, "--dry-run", help="List what would be forgotten; change nothing.")) -> None:
    """Remove examples from all future training, and make the model stop giving their answers."""
    from . import control

    try:
        found, batch = control.forget(ctx.obj, text, example_id, file, tag, user, dry_run)
    except MemzError as exc:
        _fail(exc)
    if not found:
        console.print("nothing matches: no example was forgotten")
        return
    for e in found[:20]:
        data = e["data"]
        what = data.get("input") or data.get("prompt") or data.get("text") or data["messages"][-1]["content"]
        print(f"  #{e['id']} ({e['file']}): {what[:60]}")
    if len(found) > 20:
        print(f"  ... and {len(found) - 20} more")
    if dry_run:
        print(f"{len(found)} example(s) would be forgotten (--dry-run: nothing changed)")
    elif batch is None:
        print(f"{len(found)} example(s) forgotten; none had trained yet, so no checkpoint holds them")
    else:
        print(f"{len(found)} example(s) forgotten; batch {batch} makes the model stop giving their answers "
              "(a running daemon trains it next; see memzctl status)")


@app.command()
def query(
    ctx: typer.Context,
    prompt: str = typer.Argument(..., help="The question."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, max=4096, help="Most tokens in the answer."),
    temperature: float = typer.Option(0.2, "--temperature", min=0.0, max=2.0, help="0 is greedy."),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the answer."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Pin a checkpoint id."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole response as JSON."),
) -> None:
    """Ask the running daemon a question and print its answer."""
    from .control import daemon_pid
    from .files import write_json_atomic

    home: Home = ctx.obj
    if daemon_pid(home) is None:
        _fail(DaemonNotRunning(f"no memzd is running for {home.root}; start one with: memzd --home {home.root}"))
    rid = f"q-{uuid.uuid4().hex[:12]}"
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
    if checkpoint:
        body["checkpoint"] = checkpoint
    home.requests.mkdir(parents=True, exist_ok=True)
    write_json_atomic(home.requests / f"{rid}.json", body)
    response = home.responses / f"{rid}.json"
    deadline = time.monotonic() + timeout
    while not response.exists():
        if time.monotonic() > deadline:
            (home.requests / f"{rid}.json").unlink(missing_ok=True)
            _fail(MemzError(f"no answer within {timeout:.0f}s (the daemon may be busy; see memzctl status)"))
        if daemon_pid(home) is None:
            (home.requests / f"{rid}.json").unlink(missing_ok=True)
            _fail(DaemonNotRunning("memzd stopped before answering"))
        time.sleep(0.05)
    payload = json.loads(response.read_text(encoding="utf-8"))
    response.unlink(missing_ok=True)
    if as_json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    elif "error" in payload:
        _fail(MemzError(f"{payload['error']['code']}: {payload['error']['message']}"))
    else:
        print(payload["response"])
    if "error" in payload:
        raise typer.Exit(1)


def _service(ctx: typer.Context, action: str, dry_run: bool, launchd: bool, systemd: bool) -> None:
    if launchd and systemd:
        _fail(MemzError("pick one of --launchd and --systemd"))
    kind = "launchd" if launchd else "systemd" if systemd else None
    try:
        plan = service_mod.plan(action, ctx.obj.root, kind)
        if dry_run:
            for w in plan.warnings:
                err.print(f"[yellow]warning:[/] {w}")
            for cmd in plan.best_effort:
                print("$ " + " ".join(cmd) + "   # may fail harmlessly")
            if plan.content is not None:
                print(f"# would write {plan.path}:\n{plan.content}")
            elif action == "uninstall":
                print(f"# would remove {plan.path}")
            for cmd in plan.commands:
                print("$ " + " ".join(cmd))
            return
        for line in service_mod.execute(plan):
            print(line)
    except MemzError as exc:
        _fail(exc)


_DRY = typer.Option(False, "--dry-run", help="Print the file and commands; change nothing.")
_LAUNCHD = typer.Option(False, "--launchd", help="Use launchd whatever the platform.")
_SYSTEMD = typer.Option(False, "--systemd", help="Use systemd whatever the platform.")


@service_app.command("install")
def service_install(ctx: typer.Context, dry_run: bool = _DRY, launchd: bool = _LAUNCHD, systemd: bool = _SYSTEMD) -> None:
    """Install and start memzd for this home as a user service."""
    _service(ctx, "install", dry_run, launchd, systemd)


@service_app.command("uninstall")
def service_uninstall(ctx: typer.Context, dry_run: bool = _DRY, launchd: bool = _LAUNCHD, systemd: bool = _SYSTEMD) -> None:
    """Stop and remove this home's service."""
    _service(ctx, "uninstall", dry_run, launchd, systemd)


@service_app.command("status")
def service_status(ctx: typer.Context, dry_run: bool = _DRY, launchd: bool = _LAUNCHD, systemd: bool = _SYSTEMD) -> None:
    """Show whether this home's service is installed and running."""
    _service(ctx, "status", dry_run, launchd, systemd)


def memzctl_main() -> None:
    app()
