"""The command line: `memzd` runs the daemon, `memzctl` drives and inspects it.

Library errors (MemzError) become a red one-line message and exit code 1
here, at the boundary, and nowhere else. Only `memzd` and the commands that
need the model import torch: the rest run on memzd.control.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import uuid
from importlib.metadata import PackageNotFoundError, version as _dist_version
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import control
from . import service as service_mod
from .config import Home
from .errors import ConfigError, MemzError

console = Console()
err = Console(stderr=True, soft_wrap=True)

HOME_HELP = "The memz home (default: $MEMZ_HOME, else the current directory)."


def _metavar_only(param, ctx) -> str | None:
    """Help shows the value's name (N, FILE, ID), never a Python type such as <bool>."""
    return param.metavar or None


typer.core.TyperArgument.display_type_rich = lambda param, ctx: None  # its name column says it already
typer.core.TyperOption.display_type_rich = _metavar_only


def _version() -> str:
    try:
        return _dist_version("memz")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        print(f"memz {_version()}")
        raise typer.Exit()


def hoist_home(argv: list[str]) -> list[str]:
    """`--home DIR` is accepted anywhere on the line: move it before the subcommand."""
    args, home = list(argv), []
    i = 0
    while i < len(args):
        if args[i] == "--":
            break
        if args[i] == "--home" and i + 1 < len(args):
            home = args[i:i + 2]
            del args[i:i + 2]
            continue
        if args[i].startswith("--home="):
            home = [args[i]]
            del args[i]
            continue
        i += 1
    return home + args


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(1)


# -- memzd ----------------------------------------------------------------------

def memzd(
    home: Optional[Path] = typer.Option(None, "--home", help=HOME_HELP, metavar="DIR"),
    once: bool = typer.Option(False, "--once", help="Drain: read the inbox, train what is pending "
                              "(even below the batch thresholds), answer waiting requests, exit 0."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR.", metavar="LEVEL"),
    http: Optional[str] = typer.Option(None, "--http", help="Serve the HTTP API on HOST:PORT (overrides "
                                       "http.host and http.port; off loopback it needs http.token).",
                                       metavar="HOST:PORT"),
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print memz's version and exit."),
) -> None:
    """Run the memz daemon in the foreground: watch inbox/ and requests/, train, answer."""
    h = Home.resolve(home)
    if once and http:
        _fail(ConfigError("--http serves the API while memzd runs; --once drains and exits: pick one"))
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, not {log_level!r}"))
    try:
        control.require_home(h)  # a typo in --home must not become a new, empty home
        h.load_config()  # a bad config stops start-up before anything loads
        from .daemon import main_loop, setup_logging

        setup_logging(h, log_level)
        raise typer.Exit(main_loop(h, once, http))
    except MemzError as exc:
        _fail(exc)


def memzd_main() -> None:
    one = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="rich")
    one.command()(memzd)
    one(args=hoist_home(sys.argv[1:]), prog_name="memzd")


# -- memzctl --------------------------------------------------------------------

app = typer.Typer(help="Drive and inspect memz: add examples, ask, look at checkpoints, roll back.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode="rich")
service_app = typer.Typer(help="Run memzd as a user service (launchd on macOS, systemd on Linux).",
                          no_args_is_help=True)
app.add_typer(service_app, name="service")


@app.callback()
def _root(ctx: typer.Context,
          home: Optional[Path] = typer.Option(None, "--home", help=HOME_HELP, metavar="DIR"),
          show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                            help="Print memz's version and exit.")) -> None:
    ctx.obj = Home.resolve(home)


_USER = typer.Option(None, "--user", help="This user's own memory (default: the shared one).", metavar="NAME")
_JSON = typer.Option(False, "--json", help="Print JSON.")


@app.command()
def init(ctx: typer.Context, directory: Optional[Path] = typer.Argument(None, help="Folder to make a home of "
                                                                        "(default: --home).")) -> None:
    """Create a fresh memz home: the shipped default config and anchors, and its database."""
    from . import control

    home = Home(directory.expanduser().resolve()) if directory else ctx.obj
    try:
        made = control.init_home(home)
    except (MemzError, OSError) as exc:
        _fail(exc)
    console.print(f"memz home {'ready' if made else 'already there, completed'} at [bold]{escape(str(home.root))}[/]\n"
                  f"  start the daemon:  {control.command('memzd')} --home {home.root}\n"
                  f"  add examples:      {control.command('memzctl')} --home {home.root} add FILE.jsonl")


@app.command()
def add(ctx: typer.Context,
        files: list[Path] = typer.Argument(..., help="JSONL files of examples.", metavar="FILE")) -> None:
    """Validate example files, then write them atomically into the inbox."""
    home: Home = ctx.obj
    try:
        control.require_home(home)
        max_line_bytes = home.load_config().daemon.max_line_bytes
        store = control.open_store(home)  # to tell which examples it holds already
    except MemzError as exc:
        _fail(exc)
    failed = False
    for path in files:
        try:
            if not stat.S_ISREG(os.stat(path).st_mode):
                raise OSError("not a regular file (a device, pipe or folder cannot be added); "
                              "save the examples to a .jsonl file first")
            hashes, bad = _validate_file(path, max_line_bytes)
        except OSError as exc:
            err.print(f"[red]{escape(str(path))}[/]: {escape(str(exc.strerror or exc))}", highlight=False)
            failed = True
            continue
        for number, reason in bad[:10]:
            err.print(f"[yellow]{escape(str(path))}:{number}[/]: {escape(reason)}", highlight=False)
        if len(bad) > 10:
            err.print(f"[yellow]{escape(str(path))}[/]: ... and {len(bad) - 10} more bad lines")
        if not hashes:
            err.print(f"[red]{escape(str(path))}[/]: no usable example; nothing added")
            failed = True
            continue
        known, gone = store.known(hashes)
        name = f"{path.stem[:150]}-{uuid.uuid4().hex[:8]}.jsonl"
        tmp = home.inbox / f".{name}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, home.inbox / name)
        print(f"added {path} as inbox/{name}: {len(hashes)} example(s)"
              + (f", {known} of them known already (the daemon skips them"
                 + (f"; {gone} forgotten or superseded stay out of training" if gone else "") + ")"
                 if known else "")
              + (f", {len(bad)} bad lines will be rejected" if bad else ""))
    store.close()
    if failed:
        raise typer.Exit(1)


def _validate_file(path: Path, max_line_bytes: int) -> tuple[list[str], list[tuple[int, str]]]:
    """Check a file line by line as the daemon will (streamed, same caps and messages): the
    hashes of its examples, and its bad lines."""
    from .inbox import read_examples

    hashes, bad = [], []
    with open(path, "rb") as f:
        for number, example, error, _ in read_examples(f, max_line_bytes):
            if error:
                bad.append((number, error))
            elif example is not None:
                hashes.append(example.hash)
    return hashes, bad


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
def status(ctx: typer.Context, as_json: bool = _JSON, user: Optional[str] = _USER) -> None:
    """What memz is doing: model, current checkpoint, queue, when the next batch trains, losses, the latest events."""
    try:
        data = control.status_data(ctx.obj, user)
    except MemzError as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    d, nb = data["daemon"], data["next_batch"]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_row("base model", data["base_model"])
    if user:
        t.add_row("user", user)
    t.add_row("current checkpoint", f"{data['current_checkpoint'] or '(base model)'}"
              + (f" [{data['checkpoint_status']}]" if data["checkpoint_status"] else "")
              + (f", {data['adapters']} adapters (lora.shard_size)" if data.get("adapters", 0) > 1 else ""))
    t.add_row("daemon", f"running, pid {d['pid']}: {d['activity']}" + (f" (since {d['since']})" if d["since"] else "")
              if d["running"] else f"not running (start it: {control.command('memzd')} --home {data['home']})")
    t.add_row("queue depth", str(data["queue_depth"])
              + (f" (and {data['inbox_unread']} file(s) in inbox/ not read yet)" if data["inbox_unread"] else ""))
    t.add_row("next batch", (f"{nb['at']}: " if nb["at"] else "") + nb["why"])
    t.add_row("last update", data["last_update"] or "never")
    hw = data["hardware"]
    t.add_row("hardware", f"{hw.get('device')} ({hw.get('backend')}"
              + (f", base in {hw['dtype']}" if hw.get("dtype") else "")
              + (f", {hw['memory_bytes'] / 1e9:.2f} GB" if hw.get("memory_bytes") else "")
              + (f", {hw['quantization']}" if hw.get("quantization") not in (None, "none") else "") + ")")
    if data["latest"]["recall"] is not None:
        recall = data["latest"]["recall"]
        rounds = data["latest"].get("rounds") or 1
        t.add_row("learned", f"recall {recall:.2f}: the share of the latest batch's answers it gives back"
                  + (f", after {rounds} rounds of training (training.rounds)" if rounds > 1 else "")
                  + ("" if recall >= 0.9 else " [yellow](much of it not learned: see memzctl checkpoints)[/]"))
    for i, described in enumerate(data.get("formats") or []):
        t.add_row("formats" if i == 0 else "", escape(described))
    fs = data["forgetting_summary"]
    t.add_row("forgetting", f"served: anchor_ce_delta {_fmt(fs['anchor_ce_delta'])}, "
              f"retention {_fmt(fs['retention_score'])}")
    if fs.get("adapter_anchor_ce_delta") is not None:
        t.add_row("", f"adapter alone: anchor_ce_delta {_fmt(fs['adapter_anchor_ce_delta'])}, "
                  f"retention {_fmt(fs['adapter_retention_score'])} (answers that start word for word as the "
                  "base model's: stricter than the answer kept)")
    for name, curve in data["loss_curves"].items():
        last = curve[-1] if curve else fs.get(name)  # a batch that stopped before eval_every: the checkpoint's
        t.add_row(name, f"{sparkline(curve)}  {_fmt(last)}")
    if data["latest"]["checkpoint"] and data["latest"]["checkpoint"] != data["current_checkpoint"]:
        t.add_row("latest checkpoint", f"{data['latest']['checkpoint']} [{data['latest']['status']}]")
    if data["failed_batches"]:
        t.add_row("failed batches", f"[red]{data['failed_batches']}[/] (see logs/memzd.log)")
    if data.get("users") and not user:
        t.add_row("users", ", ".join(data["users"]) + "  (memzctl status --user NAME)")
    if data["current_checkpoint"]:
        t.add_row("pictures", "memzctl plot" + (f" --user {user}" if user else "")
                  + "  (loss, forgetting and recall across the lineage, as a PNG)")
    for i, event in enumerate(data["recent_events"]):
        when = event["at"][5:16].replace("T", " ")  # 12-01 05:01 (UTC)
        t.add_row("recent events" if i == 0 else "", f"{when}  {escape(event['message'])}")
    console.print(t)


@app.command()
def checkpoints(ctx: typer.Context, as_json: bool = _JSON, user: Optional[str] = _USER) -> None:
    """The checkpoint lineage, newest first, with each one's figures (--json: all of them)."""
    try:
        store = control.open_store(ctx.obj)
    except MemzError as exc:
        _fail(exc)
    try:
        rows, current = store.checkpoints(user, every_user=False), store.current_checkpoint(user)
    finally:
        store.close()
    if as_json:
        print(json.dumps([{**r.__dict__, "current": r.id == current} for r in rows], indent=2))
        return
    if not rows:
        console.print("no checkpoints yet: drop a .jsonl file into inbox/ (or memzctl add FILE)")
        return
    # 80 columns: ids are what people copy into --to, and the status must not be cut
    t = Table("", "id", "parent", "status", "n", "recall", "ce_delta", "retain", box=None, pad_edge=False)
    for column in t.columns[1:4]:
        column.no_wrap = True
    for r in rows:
        m = r.metrics
        t.add_row("*" if r.id == current else "", r.id, r.parent or "(base)", r.status, _fmt(m.get("n_examples")),
                  _fmt(m.get("recall")), _fmt(m.get("anchor_ce_delta")), _fmt(m.get("retention_score")))
    console.print(t)


@app.command()
def train(ctx: typer.Context) -> None:
    """Ask the running daemon to train every example that waits, now (below the batch thresholds too)."""
    home: Home = ctx.obj
    try:
        data = control.status_data(home)
        control.request_training(home)
    except MemzError as exc:
        _fail(exc)
    waiting = data["queue_depth"]
    if waiting:
        print(f"asked memzd (pid {data['daemon']['pid']}) to train the {waiting} waiting example(s) now; "
              "follow it with: memzctl status")
    elif data["inbox_unread"]:
        print(f"asked memzd (pid {data['daemon']['pid']}) to train now; {data['inbox_unread']} file(s) in inbox/ "
              "are not read yet and train once read; follow it with: memzctl status")
    else:
        print("nothing waits to be trained; drop a .jsonl file into inbox/ (or memzctl add FILE) first")


@app.command()
def rollback(ctx: typer.Context,
             to: Optional[str] = typer.Option(None, "--to", help="Checkpoint id to serve "
                                              "(default: the current one's parent).", metavar="ID"),
             user: Optional[str] = typer.Option(None, "--user", help="Roll back this user's own "
                                                "lineage (default: the shared one).", metavar="NAME")) -> None:
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
           text: Optional[str] = typer.Argument(None, help="Forget every example holding this text.", metavar="TEXT"),
           example_id: Optional[int] = typer.Option(None, "--id", help="Forget the example with this id.",
                                                    metavar="N"),
           file: Optional[str] = typer.Option(None, "--file", metavar="NAME",
                                              help="Forget the examples of this file (its name as dropped, "
                                                   "or as given to memzctl add)."),
           tag: Optional[str] = typer.Option(None, "--tag", help="Forget the examples with this tag.", metavar="TAG"),
           user: Optional[str] = typer.Option(None, "--user", help="In this user's memory (default: the shared one).",
                                              metavar="NAME"),
           dry_run: bool = typer.Option(False, "--dry-run", help="List what would be forgotten; change nothing.")) -> None:
    """Remove examples from all future training, and make the model stop giving their answers."""
    from . import control

    try:
        found, batch = control.forget(ctx.obj, text, example_id, file, tag, user, dry_run)
    except MemzError as exc:
        _fail(exc)
    if not found:
        gone = control.already_gone(ctx.obj, text, example_id, file, tag, user)
        if gone:
            ids = ", ".join(f"#{e['id']}" for e in gone[:10]) + (" ..." if len(gone) > 10 else "")
            print(f"nothing left to forget: {len(gone)} matching example(s) ({ids}) already left "
                  "training: forgotten, or superseded by a later answer (see memzctl status)")
        else:
            console.print("nothing matches" + ("" if dry_run else ": no example was forgotten"))
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
    prompt: str = typer.Argument(..., help="The question.", metavar="PROMPT"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, max=4096, help="Most tokens in the answer.",
                                   metavar="N"),
    temperature: float = typer.Option(0.2, "--temperature", min=0.0, max=2.0, help="0 is greedy.", metavar="T"),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait; then the question is withdrawn.",
                                  metavar="S"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Pin a checkpoint id.", metavar="ID"),
    user: Optional[str] = _USER,
    as_json: bool = typer.Option(False, "--json", help="Print the whole response as JSON (no streaming)."),
) -> None:
    """Ask the running daemon a question; the answer is printed as it is generated."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
    if checkpoint:
        body["checkpoint"] = checkpoint
    if user:
        body["user"] = user
    streamed = []

    def show(text: str) -> None:
        if not streamed:
            text = text.lstrip()
        streamed.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        payload = control.ask(ctx.obj, body, timeout, on_text=None if as_json else show)
    except KeyboardInterrupt:
        err.print("\nwithdrawn: the daemon stops generating this answer")
        raise typer.Exit(130)
    except MemzError as exc:
        if streamed:
            print()
        _fail(exc)
    if as_json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    elif "error" in payload:
        _fail(MemzError(f"{payload['error']['code']}: {payload['error']['message']}"))
    else:
        print("" if streamed else payload["response"])
    if "error" in payload:
        raise typer.Exit(1)


@app.command()
def export(ctx: typer.Context,
           args: list[str] = typer.Argument(..., help="[ID] DIR: the checkpoint (default: the current one) and "
                                            "an empty or new folder.", metavar="[ID] DIR"),
           merged: bool = typer.Option(False, "--merged", help="Also write the base with the adapter merged in "
                                       "(a plain transformers model)."),
           gguf: bool = typer.Option(False, "--gguf", help="Also write the merged model as model.gguf "
                                     "(llama.cpp, Ollama)."),
           user: Optional[str] = _USER) -> None:
    """Write a checkpoint's adapter (its base named), and optionally a merged model and a GGUF."""
    from .export import export as write

    if len(args) > 2:
        _fail(MemzError("give at most a checkpoint id and a folder: memzctl export [ID] DIR"))
    checkpoint, out = (args[0], args[1]) if len(args) == 2 else (None, args[0])
    home: Home = ctx.obj
    try:
        control.require_home(home)
        if user:
            store = control.open_store(home)
            row = store.checkpoint(checkpoint) if checkpoint else None
            if checkpoint is None:
                checkpoint = store.current_checkpoint(user)
            store.close()
            if row is not None and row.user != user:
                owner = f"{row.user}'s" if row.user else "the shared one"
                raise MemzError(f"{checkpoint} is not in {user}'s memory (it is in {owner})")
        for line in write(home, checkpoint, Path(out), merged=merged, gguf=gguf):
            print(line)
    except MemzError as exc:
        _fail(exc)


@app.command()
def plot(ctx: typer.Context,
         checkpoint: Optional[str] = typer.Argument(None, help="Checkpoint id (default: the current one).",
                                                    metavar="ID"),
         out: Optional[Path] = typer.Option(None, "-o", "--out", help="PNG to write (.svg or .pdf "
                                            "by its name; default: logs/plot-<ID>.png in the home).",
                                            metavar="FILE.png"),
         user: Optional[str] = _USER) -> None:
    """A PNG of the lineage: the batch's loss curve, forgetting and recall per checkpoint."""
    from .plot import plot as draw

    try:
        store = control.open_store(ctx.obj)
    except MemzError as exc:
        _fail(exc)
    try:
        checkpoint = checkpoint or store.current_checkpoint(user)
        if checkpoint is None:
            _fail(MemzError("no checkpoint serves yet: nothing to plot (see memzctl checkpoints)"))
        path = draw(store, checkpoint, out or ctx.obj.logs / f"plot-{checkpoint}.png")
    except MemzError as exc:
        _fail(exc)
    finally:
        store.close()
    print(f"wrote {path}")


@app.command()
def logs(ctx: typer.Context,
         n: int = typer.Option(10, "-n", "--count", min=1, metavar="N",
                               help="How many of the newest answers (shown oldest first, like a "
                                    "conversation; --json lists them newest first)."),
         user: Optional[str] = typer.Option(None, "--user", metavar="NAME",
                                            help="Only the questions asked as this user."),
         as_json: bool = _JSON) -> None:
    """Every question memz answered: prompt, answer, checkpoint, route (and the taught question it was
    answered as, if any), latency; also in memz.db."""
    try:
        store = control.open_store(ctx.obj)
    except MemzError as exc:
        _fail(exc)
    try:
        rows = store.answers(n, user)
    finally:
        store.close()
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        console.print("no answers yet: ask with memzctl query \"...\"")
        return
    for r in reversed(rows):  # oldest of them first, like a conversation
        question = r["prompt"][-1]["content"] if r["prompt"] else ""
        route = f"{r['checkpoint'] or 'base model'}, {r['routed_to'] or '-'}"
        head = f"#{r['id']} {r['at']} {r['source']}" + (f" user {r['user']}" if r["user"] else "")
        console.print(f"[bold]{head}[/]  ({route}, {r['latency_ms'] if r['latency_ms'] is not None else '-'} ms)",
                      highlight=False)
        console.print(f"  Q: {_clip(question)}", highlight=False, markup=False)
        if r.get("answered_as"):  # routing.answer_as: the taught question answered in its place
            console.print(f"  as: {_clip(r['answered_as'], 73)}", highlight=False, markup=False)
        answer = f"error: {r['error']}" if r["error"] else r["response"]
        console.print(f"  A: {_clip(answer or '')}", highlight=False, markup=False)


def _clip(text: str, width: int = 74) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


@app.command()
def chat(
    ctx: typer.Context,
    learn: bool = typer.Option(False, "--learn", help="Teach memz each finished exchange (it trains in the next "
                               "batch; at once with update_mode: immediate)."),
    user: Optional[str] = _USER,
    url: Optional[str] = typer.Option(None, "--url", help="Talk to memzd's HTTP API at this URL (with or "
                                      "without /v1) instead of through a home's folders.", metavar="URL"),
    token: Optional[str] = typer.Option(None, "--token", envvar="MEMZ_HTTP_TOKEN", help="Bearer token for --url.",
                                        metavar="TOKEN"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, max=4096, help="Most tokens an answer.",
                                   metavar="N"),
    temperature: float = typer.Option(0.2, "--temperature", min=0.0, max=2.0, help="0 is greedy.", metavar="T"),
) -> None:
    """Chat with the running daemon in the terminal; answers stream as they are generated.

    Inside: /status, /rollback, /forget TEXT (these two not over --url), /new (start over), /quit."""
    home: Home = ctx.obj
    remote = _Remote(url, token) if url is not None else None
    try:
        if remote is None:
            control.require_home(home)
            control.require_daemon(home)
        else:
            remote.call("GET", "/info")  # reachable, and the token right, before the first question
    except MemzError as exc:
        _fail(exc)
    messages: list[dict] = []
    print("memz chat" + (f" (as {user})" if user else "") + (", learning from what you say" if learn else "")
          + ". /quit to leave, /help for commands.")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            continue
        if line.startswith("/"):
            if _chat_command(home, remote, line, user, messages):
                return
            continue
        messages.append({"role": "user", "content": line})
        sys.stdout.write("memz> ")
        sys.stdout.flush()
        try:
            reply = _chat_turn(home, remote, messages, user, max_tokens, temperature)
        except KeyboardInterrupt:
            print("\n(withdrawn)")
            messages.pop()
            continue
        except MemzError as exc:
            print()
            err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            messages.pop()
            continue
        print()
        messages.append({"role": "assistant", "content": reply})
        if learn:
            _learn(home, remote, messages[-2:], user)


class _Remote:
    """memzd's HTTP API at `url` (with or without its /v1), for memzctl chat --url."""

    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.token = token

    def open(self, method: str, path: str, body: dict | None = None):
        """The response to one request, open for reading; MemzError saying what went wrong."""
        import urllib.error
        import urllib.request

        try:
            request = urllib.request.Request(
                self.url + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                headers={"Content-Type": "application/json",
                         **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
            return urllib.request.urlopen(request, timeout=600)
        except ValueError as exc:
            raise MemzError(f"--url {self.url}: not a URL ({exc}); give one such as http://127.0.0.1:8000") from exc
        except urllib.error.HTTPError as exc:
            try:
                said = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                said = exc.reason
            hint = " (give --token or set MEMZ_HTTP_TOKEN)" if exc.code == 401 else ""
            raise MemzError(f"memz at {self.url} answered {exc.code}: {said}{hint}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise MemzError(f"cannot reach memz at {self.url}: {getattr(exc, 'reason', exc)}") from exc

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        with self.open(method, path, body) as r:
            return json.loads(r.read())


def _chat_turn(home: Home, remote: _Remote | None, messages: list[dict], user: str | None,
               max_tokens: int, temperature: float) -> str:
    """One answer, streamed to the terminal; through the folders or over HTTP."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if user:
        body["user"] = user
    shown: list[str] = []

    def show(text: str) -> None:
        text = text if shown else text.lstrip()
        shown.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    if remote is None:
        payload = control.ask(home, body, timeout=600, on_text=show)
        if "error" in payload:
            raise MemzError(f"{payload['error']['code']}: {payload['error']['message']}")
        return payload["response"]
    with remote.open("POST", "/v1/chat/completions", {**body, "model": "memz", "stream": True}) as r:
        try:
            for raw in r:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[len("data: "):])
                if "error" in event:
                    raise MemzError(f"{event['error']['code']}: {event['error']['message']}")
                piece = event["choices"][0]["delta"].get("content")
                if piece:
                    show(piece)
        except OSError as exc:
            raise MemzError(f"memz at {remote.url} stopped answering: {exc}") from exc
    return "".join(shown).strip()


def _learn(home: Home, remote: _Remote | None, exchange: list[dict], user: str | None) -> None:
    """Hand one exchange to memz as a `messages` example: into the inbox (atomically, as
    memzctl add does), or over HTTP to /update."""
    from .files import write_atomic

    example = {"messages": exchange, **({"tags": [f"user:{user}"]} if user else {})}
    try:
        if remote is None:
            write_atomic(home.inbox / f"chat-{uuid.uuid4().hex[:12]}.jsonl",
                         json.dumps(example, ensure_ascii=False) + "\n")
        else:
            remote.call("POST", "/update", {"examples": [example]})
    except MemzError as exc:
        err.print(f"  [bold red]not learned:[/] {escape(str(exc))}", highlight=False)
        return
    print("  (memz will learn this: it trains in the next batch)")


def _chat_command(home: Home, remote: _Remote | None, line: str, user: str | None, messages: list[dict]) -> bool:
    """A /command inside chat; True to leave."""
    word, _, rest = line.partition(" ")
    try:
        if word in ("/quit", "/exit"):
            return True
        if word == "/new":
            messages.clear()
            print("  (a new conversation)")
        elif word == "/status":
            data = (control.status_data(home, user) if remote is None
                    else remote.call("GET", "/info" + (f"?user={user}" if user else "")))
            print(f"  checkpoint {data['current_checkpoint'] or '(base model)'}; daemon: "
                  f"{data['daemon']['activity']}; queue {data['queue_depth']}; next batch: {data['next_batch']['why']}")
        elif word in ("/rollback", "/forget") and remote is not None:
            print(f"  {word} is not offered over HTTP: run memzctl {word[1:]} where memzd's home is")
        elif word == "/rollback":
            if rest.strip():
                print("  /rollback takes nothing: it serves the current checkpoint's parent "
                      "(memzctl rollback --to ID for another)")
            else:
                was, now = control.roll_back(home, None, user)
                print(f"  now serving {now or 'the base model'} ({was} rolled back)")
        elif word == "/forget":
            if not rest.strip():
                print("  /forget TEXT: forget every example holding TEXT")
            else:
                found, batch = control.forget(home, rest.strip(), user=user)
                print(f"  {len(found)} example(s) forgotten" + (f"; batch {batch} makes the model stop giving "
                                                                 "their answers" if batch else ""))
        else:
            print("  /status, /rollback, /forget TEXT, /new, /quit")
    except MemzError as exc:
        err.print(f"  [bold red]error:[/] {escape(str(exc))}", highlight=False)
    return False


def _service(ctx: typer.Context, action: str, dry_run: bool, launchd: bool, systemd: bool) -> None:
    if launchd and systemd:
        _fail(MemzError("pick one of --launchd and --systemd"))
    kind = "launchd" if launchd else "systemd" if systemd else None
    try:
        plan = service_mod.plan(action, ctx.obj.root, kind)
        if dry_run:
            for w in plan.warnings:
                err.print(f"[yellow]warning:[/] {escape(w)}")
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


@service_app.command("start")
def service_start(ctx: typer.Context, dry_run: bool = _DRY, launchd: bool = _LAUNCHD, systemd: bool = _SYSTEMD) -> None:
    """Start this home's installed service."""
    _service(ctx, "start", dry_run, launchd, systemd)


@service_app.command("stop")
def service_stop(ctx: typer.Context, dry_run: bool = _DRY, launchd: bool = _LAUNCHD, systemd: bool = _SYSTEMD) -> None:
    """Stop this home's service (it stops within seconds; it starts again at the next login)."""
    _service(ctx, "stop", dry_run, launchd, systemd)


@service_app.command("restart")
def service_restart(ctx: typer.Context, dry_run: bool = _DRY, launchd: bool = _LAUNCHD, systemd: bool = _SYSTEMD) -> None:
    """Restart this home's service (e.g. after changing config.yaml)."""
    _service(ctx, "restart", dry_run, launchd, systemd)


def memzctl_main() -> None:
    app(args=hoist_home(sys.argv[1:]), prog_name="memzctl")
