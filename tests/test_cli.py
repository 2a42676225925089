"""memzctl and memzd as a user types them: homes, help, versions, streaming, train-now, speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memzd import control
from memzd.cli import app, hoist_home
from memzd.config import Config, config_to_dict, load_config
from memzd.store import Store

from conftest import Running, drop, wait_until, write_config

BIN = Path(sys.executable).parent
FACTS = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
         {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]


def memzctl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "memzctl"), *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80", **(env or {})}, timeout=120)


# -- homes -------------------------------------------------------------------------------

def test_init_writes_the_shipped_defaults_and_the_database_and_status_works_at_once(tmp_path):
    target = tmp_path / "notes"
    result = memzctl("init", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "memz.db").is_file() and (target / "anchors" / "default.jsonl").is_file()
    assert config_to_dict(load_config(target / "config.yaml")) == config_to_dict(Config())  # the defaults
    status = memzctl("--home", str(target), "status", "--json")
    assert status.returncode == 0, status.stderr  # not sent back to init
    assert json.loads(status.stdout)["queue_depth"] == 0


def test_status_counts_files_in_the_inbox_that_memzd_has_not_read(tmp_path):
    target = tmp_path / "notes"
    assert memzctl("init", str(target)).returncode == 0
    (target / "inbox" / "facts.jsonl").write_text(json.dumps(FACTS[0]) + "\n")
    (target / "inbox" / ".facts.jsonl.tmp").write_text("")  # still being written: not counted
    data = json.loads(memzctl("--home", str(target), "status", "--json").stdout)
    assert data["queue_depth"] == 0 and data["inbox_unread"] == 1
    assert "1 file(s) in inbox/ not read yet" in data["next_batch"]["why"]
    shown = memzctl("--home", str(target), "status").stdout
    assert "nothing waits" not in shown and "not read yet" in shown


def test_init_ignores_an_edited_config_of_the_repository(tmp_path, monkeypatch):
    repo_config = Path(__file__).resolve().parent.parent / "config.yaml"
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "config.yaml").write_text(repo_config.read_text().replace("lr: 2e-3", "lr: 9e-1"))
    monkeypatch.chdir(edited)  # as if memzctl ran in an edited clone
    result = CliRunner().invoke(app, ["init", str(tmp_path / "fresh")])
    assert result.exit_code == 0, result.output
    assert load_config(tmp_path / "fresh" / "config.yaml").training.lr == Config().training.lr


def test_commands_refuse_a_folder_that_is_not_a_home(tmp_path):
    (tmp_path / "f.jsonl").write_text(json.dumps(FACTS[0]) + "\n")
    plain = tmp_path / "plain"
    plain.mkdir()
    added = memzctl("--home", str(plain), "add", str(tmp_path / "f.jsonl"))
    assert added.returncode == 1 and "memzctl init" in added.stderr and not (plain / "inbox").exists()
    typo = tmp_path / "typo"
    started = subprocess.run([str(BIN / "memzd"), "--home", str(typo), "--once"], capture_output=True, text=True)
    assert started.returncode == 1 and "memzctl init" in started.stderr and not typo.exists()


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_add_refuses_a_device_or_a_pipe_at_once(home, tmp_path, special):
    if special == "fifo":
        special = str(tmp_path / "pipe.jsonl")
        os.mkfifo(special)
    t0 = time.monotonic()
    result = memzctl("--home", str(home), "add", special)
    assert result.returncode == 1 and "not a regular file" in result.stderr
    assert time.monotonic() - t0 < 30 and list((home / "inbox").glob("*.jsonl")) == []


def test_home_is_accepted_anywhere_on_the_line(home):
    assert hoist_home(["status", "--json", "--home", "/x"]) == ["--home", "/x", "status", "--json"]
    assert hoist_home(["query", "hi", "--home=/x"]) == ["--home=/x", "query", "hi"]
    assert hoist_home(["query", "--", "--home", "/x"]) == ["query", "--", "--home", "/x"]  # after --: a prompt
    after = memzctl("status", "--json", "--home", str(home))
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["home"] == str(home)


def test_version_and_help_without_python_types():
    for tool in ("memzctl", "memzd"):
        out = subprocess.run([str(BIN / tool), "--version"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith("memz ")
    for args in (["--help"], ["add", "--help"], ["query", "--help"], ["status", "--help"], ["forget", "--help"]):
        text = memzctl(*args).stdout
        assert "<bool>" not in text and "<list" not in text and "<int>" not in text and "<str>" not in text, text
    assert "<bool>" not in subprocess.run([str(BIN / "memzd"), "--help"], capture_output=True, text=True).stdout


# -- reading --------------------------------------------------------------------------------

def _checkpoint(home: Path, status: str) -> None:
    from memzd.store import CheckpointRow

    store = Store(home / "memz.db")
    store.add_checkpoint(CheckpointRow("A_2026-11-24_0001", 1, None, None, status, "t", "p", "base",
                                       {"recall": 1.0, "anchor_ce_delta": 0.01234, "retention_score": 1.0,
                                        "n_examples": 10}), make_current=False)


def test_checkpoints_fit_80_columns_with_the_status_whole(home):
    _checkpoint(home, "rolled_back")
    out = memzctl("--home", str(home), "checkpoints").stdout
    assert "rolled_back" in out and "A_2026-11-24_0001" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_status_and_the_read_commands_do_not_import_torch(home):
    code = ("import sys\nfrom memzd.cli import app\n"
            "for args in (['status'], ['status', '--json'], ['checkpoints'], ['--version']):\n"
            "    try:\n        app(['--home', sys.argv[1], *args])\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- driving the daemon ------------------------------------------------------------------------

@pytest.fixture
def running(home):
    """A daemon for `home` on its own thread, its pid file written."""
    with Running(home) as r:
        wait_until(lambda: control.daemon_pid(r.daemon.home), "the daemon to start", running=r)
        yield r


def test_train_says_what_waits_and_the_batch_trains(home):
    write_config(home, batch={"max_examples": 100, "max_age_minutes": 60})
    with Running(home) as r:
        wait_until(lambda: control.daemon_pid(r.daemon.home), "the daemon to start", running=r)
        drop(home, "facts.jsonl", FACTS)
        store = Store(home / "memz.db")
        deadline = time.monotonic() + 60
        while store.example_count() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = memzctl("--home", str(home), "status").stdout
        assert "2 of 100 examples wait" in status
        said = memzctl("--home", str(home), "train")
        assert said.returncode == 0 and "train the 2 waiting example(s) now" in said.stdout
        while store.current_checkpoint() is None and time.monotonic() < deadline + 60:
            time.sleep(0.05)
    assert store.current_checkpoint() is not None and store.queue_depth() == 0


def test_train_without_a_daemon_says_how_to_start_one(home):
    result = memzctl("--home", str(home), "train")
    assert result.returncode == 1 and "memzd --home" in result.stderr


def test_query_prints_the_answer_as_it_streams_and_json_gives_the_object(home, running):
    streamed = memzctl("--home", str(home), "query", "Hello!", "--max-tokens", "12", "--temperature", "0")
    assert streamed.returncode == 0, streamed.stderr
    whole = memzctl("--home", str(home), "query", "Hello!", "--max-tokens", "12", "--temperature", "0", "--json")
    payload = json.loads(whole.stdout)
    assert streamed.stdout.strip() == payload["response"].strip()
    assert payload["routed_to"] == "base" and payload["latency_ms"] >= 0
    assert list((home / "responses").iterdir()) == []


def test_an_install_that_fails_leaves_no_half_made_venv(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "MEMZ_VENV": str(venv), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "none")}
    env.pop("PIP_CONSTRAINT", None)
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode != 0  # torch cannot be had with no package index
    assert "removing the half-made" in result.stderr and not venv.exists()


def test_logs_show_every_answer_and_the_database_holds_them(home):
    from conftest import run_once

    (home / "requests").mkdir(exist_ok=True)
    (home / "requests" / "a.json").write_text(json.dumps({"prompt": "Hello there", "max_tokens": 3}))
    (home / "requests" / "b.json").write_text(json.dumps({"prompt": "hi", "colour": "red"}))
    (home / "requests" / "c.json").write_text(json.dumps({"prompt": "Hi, it is Alice", "max_tokens": 3,
                                                           "user": "alice"}))
    run_once(home)
    out = memzctl("--home", str(home), "logs", "-n", "5").stdout
    assert "Q: Hello there" in out and "unknown field 'colour'" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    rows = json.loads(memzctl("--home", str(home), "logs", "--json").stdout)
    assert {r["request_id"] for r in rows} == {"a", "b", "c"} and all(r["source"] == "folder" for r in rows)
    alices = json.loads(memzctl("--home", str(home), "logs", "--json", "--user", "alice").stdout)
    assert [r["request_id"] for r in alices] == ["c"]
    answered = next(r for r in rows if r["request_id"] == "a")
    assert answered["routed_to"] == "base" and answered["latency_ms"] >= 0 and answered["prompt"][0]["content"] == "Hello there"


def test_plot_draws_the_lineage_to_a_png(home, tmp_path):
    from conftest import run_once

    assert "nothing to plot" in memzctl("--home", str(home), "plot").stderr
    write_config(home, update_mode="immediate")
    drop(home, "a.jsonl", FACTS[:1])
    run_once(home)
    drop(home, "b.jsonl", FACTS[1:])
    run_once(home)
    assert "memzctl plot" in memzctl("--home", str(home), "status").stdout
    result = memzctl("--home", str(home), "plot")
    assert result.returncode == 0, result.stderr
    current = Store(home / "memz.db").current_checkpoint()
    png = home / "logs" / f"plot-{current}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    out = tmp_path / "mine.png"
    assert memzctl("--home", str(home), "plot", "-o", str(out)).returncode == 0 and out.exists()
    bare = memzctl("--home", str(home), "plot", "-o", str(tmp_path / "bare"))  # no suffix: a PNG
    assert bare.stdout.strip() == f"wrote {tmp_path / 'bare.png'}" and (tmp_path / "bare.png").exists()
    text = memzctl("--home", str(home), "plot", "-o", str(tmp_path / "p.txt"))
    assert text.returncode == 1 and "writes .png, .svg or .pdf, not .txt" in text.stderr
    assert "Traceback" not in text.stderr and not (tmp_path / "p.txt").exists()


def test_http_without_its_extra_names_the_extra_before_loading_the_model(home, tmp_path):
    hidden = tmp_path / "no-fastapi"
    hidden.mkdir()
    (hidden / "fastapi.py").write_text("raise ImportError(\"No module named 'fastapi'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    got = subprocess.run([str(BIN / "memzd"), "--home", str(home), "--http", "127.0.0.1:18765"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert got.returncode == 1
    assert "pip install 'memz[http]'" in got.stderr
    assert "base model" not in (home / "logs" / "memzd.log").read_text()  # refused before it loads


def test_once_and_http_together_are_refused(home):
    got = subprocess.run([str(BIN / "memzd"), "--home", str(home), "--once", "--http", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode == 1 and "--once" in got.stderr and "--http" in got.stderr
