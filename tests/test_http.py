"""The HTTP API as its clients use it: curl-like calls, the real `openai` client, and the token rule.

A daemon on the tiny model runs on its own thread with the API on a free
loopback port; every test talks to it over a real socket.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from memzd.config import Home
from memzd.daemon import Daemon
from memzd.errors import ConfigError
from memzd.store import Store

from conftest import write_config

FACT = {"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """A running daemon with its HTTP API, and a small client for it."""

    def __init__(self, home: Path, token: str | None = None):
        self.port = free_port()
        self.token = token
        self.daemon = Daemon(Home(home), http=f"127.0.0.1:{self.port}")
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "Api":
        self.thread.start()
        deadline = time.monotonic() + 60
        while self.daemon.http is None or not self.daemon.http.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.daemon.request_stop()
        self.thread.join(60)
        assert not self.thread.is_alive()

    def call(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        if self.token and "Authorization" not in (headers or {}):
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def test_search_answers_and_refuses_bad_bodies_with_the_folder_messages(home):
    with Api(home) as api:
        code, answer = api.call("POST", "/search", {"prompt": "Hello!", "max_tokens": 4, "temperature": 0})
        assert code == 200 and answer["routed_to"] == "base" and isinstance(answer["response"], str)
        code, body = api.call("POST", "/search", b"{not json")
        assert code == 400 and body["error"]["code"] == "invalid_json"
        code, body = api.call("POST", "/search", {"prompt": "hi", "colour": "red"})
        assert code == 400 and "unknown field 'colour'" in body["error"]["message"]
        code, body = api.call("POST", "/search", {"prompt": "hi", "checkpoint": "A_nope"})
        assert code == 404 and body["error"]["code"] == "unknown_checkpoint"
        code, body = api.call("GET", "/search")  # every error in memz's own shape
        assert code == 405 and body["error"]["code"] == "method_not_allowed" and "POST" in body["error"]["message"]
        code, body = api.call("GET", "/nowhere")
        assert code == 404 and body["error"]["code"] == "not_found"
        code, body = api.call("GET", "/v1/models/memz")
        assert code == 200 and body["id"] == "memz"
        assert api.call("GET", "/v1/models/A_nope")[0] == 404
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)  # a 2 MB body, announced
        conn.putrequest("POST", "/search")
        conn.putheader("Content-Length", "2000000")
        conn.endheaders()
        too_big = conn.getresponse()
        assert too_big.status == 413 and "http.max_request_bytes" in too_big.read().decode()
        conn.close()


def test_update_queues_examples_through_the_inbox_and_jobs_say_what_became_of_them(home):
    write_config(home, update_mode="immediate")
    with Api(home) as api:
        code, body = api.call("POST", "/update", {"examples": [FACT, {"input": "x"}], "tags": ["src:api"]})
        assert code == 400 and "examples[1]" in body["error"]["message"] and "output" in body["error"]["message"]
        code, job = api.call("POST", "/update", {"examples": [FACT], "tags": ["src:api"]})
        assert code == 200 and job["queued"] is True
        deadline = time.monotonic() + 120
        while True:
            code, state = api.call("GET", f"/jobs/{job['job_id']}")
            if state.get("batches") and state["batches"][0]["status"] == "done":
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["accepted"] == 1 and state["batches"][0]["checkpoint_id"]
        code, again = api.call("POST", "/update", {"examples": [FACT]})  # the same example: stored once
        while api.call("GET", f"/jobs/{again['job_id']}")[1].get("status") not in ("processed",):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert api.call("GET", f"/jobs/{again['job_id']}")[1]["duplicates"] == 1
        code, body = api.call("POST", "/update", {"examples": [FACT], "usr": "bob"})
        assert code == 400 and "unknown field 'usr'" in body["error"]["message"]
        code, bobs = api.call("POST", "/update", {"examples": [FACT], "user": "bob"})  # bob's own memory
        while api.call("GET", f"/jobs/{bobs['job_id']}")[1].get("status") not in ("processed",):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert api.call("GET", f"/jobs/{bobs['job_id']}")[1]["accepted"] == 1  # not the shared example again
        assert Store(home / "memz.db").find_examples(user="bob")[0]["data"]["tags"] == ["user:bob"]
        code, info = api.call("GET", "/info")
        assert code == 200 and info["current_checkpoint"] == state["batches"][0]["checkpoint_id"]
        assert {"base_model", "queue_depth", "loss_curves", "forgetting_summary", "hardware"} <= set(info)
        assert api.call("GET", "/jobs/nosuchjob")[0] == 404


def test_the_openai_client_works_unchanged_streaming_included(home):
    with Api(home) as api:
        client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused")
        models = [m.id for m in client.models.list().data]
        assert "memz" in models
        done = client.chat.completions.create(model="memz", messages=[{"role": "user", "content": "Hello!"}],
                                              max_tokens=8, temperature=0)
        whole, used = done.choices[0].message.content, done.usage
        assert isinstance(whole, str) and used.prompt_tokens > 3 and 0 < used.completion_tokens <= 8
        assert used.total_tokens == used.prompt_tokens + used.completion_tokens
        assert done.choices[0].finish_reason == ("length" if used.completion_tokens == 8 else "stop")
        stream = client.chat.completions.create(model="memz", messages=[{"role": "user", "content": "Hello!"}],
                                                max_tokens=8, temperature=0, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
        assert len(pieces) > 2 and "".join(pieces).strip() == whole
        assert chunks[-1].usage.completion_tokens == used.completion_tokens  # the usage chunk comes last
        # A "developer" turn and content as text parts, as newer clients send them: read as plain turns
        parts = client.chat.completions.create(
            model="memz", max_tokens=8, temperature=0,
            messages=[{"role": "developer", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo!"}]}])
        code, plain = api.call("POST", "/search", {"messages": [{"role": "system", "content": "Be brief."},
                                                               {"role": "user", "content": "Hello!"}],
                                                  "max_tokens": 8, "temperature": 0})
        assert code == 200 and parts.choices[0].message.content == plain["response"]


def test_a_streamed_question_refused_by_the_worker_gets_its_4xx(home):
    write_config(home, daemon={"max_prompt_tokens": 40})
    with Api(home) as api:
        client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused")
        with pytest.raises(openai.BadRequestError, match="daemon.max_prompt_tokens"):
            list(client.chat.completions.create(model="memz", stream=True, max_tokens=4,
                                                messages=[{"role": "user", "content": "word " * 100}]))
        code, body = api.call("POST", "/v1/chat/completions", {"model": "A_nope", "stream": True,
                                                               "messages": [{"role": "user", "content": "Hi"}]})
        assert code == 404 and body["error"]["code"] == "unknown_checkpoint"
        stream = client.chat.completions.create(model="memz", stream=True, max_tokens=4,  # still answering
                                                messages=[{"role": "user", "content": "Hi"}])
        assert [c for c in stream if c.choices and c.choices[0].finish_reason]


def test_a_client_that_goes_away_stops_its_generation(home, monkeypatch):
    from memzd.inference import RepetitionGuard
    from memzd.queries import Answerer

    monkeypatch.setattr(RepetitionGuard, "looping", lambda self, tokens: False)  # the long answer stays long
    settled = []
    real_resolve = Answerer._resolve

    def resolve(self, pending, payload):
        real_resolve(self, pending, payload)
        settled.append(payload)

    monkeypatch.setattr(Answerer, "_resolve", resolve)
    with Api(home) as api:
        body = json.dumps({"model": "memz", "messages": [{"role": "user", "content": "Tell me a long story."}],
                           "max_tokens": 4096, "temperature": 0, "stream": True}).encode()
        request = urllib.request.Request(api.url + "/v1/chat/completions", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            while True:  # read until text is being generated, then go away
                line = r.readline()
                assert line, "the stream ended before any text"
                if b'"content": "' in line and b'"content": ""' not in line:
                    break
        t0 = time.monotonic()  # the client is gone: the next question is answered at once, not after 4096 tokens
        code, answer = api.call("POST", "/search", {"prompt": "Hi", "max_tokens": 2})
        assert code == 200 and time.monotonic() - t0 < 4
    assert settled[0]["error"]["code"] == "cancelled"  # the long answer was stopped, not finished


def test_off_loopback_the_api_needs_a_token(home, monkeypatch):
    monkeypatch.delenv("MEMZ_HTTP_TOKEN", raising=False)
    write_config(home, http={"host": "0.0.0.0", "port": free_port()})
    with pytest.raises(ConfigError, match="http.token"):
        Daemon(Home(home))
    with pytest.raises(ConfigError, match="HOST:PORT"):  # port 0 would start no API at all
        Daemon(Home(home), http="127.0.0.1:0")
    write_config(home, http={"host": "127.0.0.1", "port": 0, "token": "s3cret"})
    with Api(home, token="s3cret") as api:
        code, body = api.call("GET", "/info", headers={"Authorization": "Bearer wrong"})
        assert code == 401
        assert api.call("GET", "/info", headers={"Authorization": "bearer s3cret"})[0] == 200  # any case
        assert api.call("GET", "/info")[0] == 200


# -- memzctl chat -------------------------------------------------------------------------------

def _chat(home: Path, *args: str, lines: list[str]) -> str:
    from typer.testing import CliRunner

    from memzd.cli import app

    result = CliRunner().invoke(app, ["--home", str(home), "chat", *args], input="".join(l + "\n" for l in lines))
    assert result.exit_code == 0, result.output
    return result.output


def test_chat_streams_keeps_the_conversation_and_learns_each_exchange(home):
    write_config(home, update_mode="immediate")
    from memzd.store import Store

    with Api(home):
        out = _chat(home, "--learn", "--user", "alice", "--temperature", "0", "--max-tokens", "6",
                    lines=["I just adopted a kitten, her name is Mochi.", "What is her name?", "/status", "/quit"])
        assert out.count("memz> ") == 2 and "memz will learn this" in out and "checkpoint" in out
        store = Store(home / "memz.db")
        deadline = time.monotonic() + 120
        while store.current_checkpoint("alice") is None or store.example_count() < 2:
            assert time.monotonic() < deadline, "the exchanges were not trained"
            time.sleep(0.2)
    taught = [json.loads(r[0]) for r in store.db.execute("SELECT data FROM examples ORDER BY id")]
    assert taught[0]["messages"][0]["content"] == "I just adopted a kitten, her name is Mochi."
    assert taught[0]["tags"] == ["user:alice"] and taught[0]["messages"][1]["role"] == "assistant"
    assert len(taught) == 2  # one example per exchange, not the conversation again


def test_chat_over_http_and_its_commands(home, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from memzd.cli import app
    from memzd.store import Store

    monkeypatch.delenv("MEMZ_HTTP_TOKEN", raising=False)
    write_config(home, http={"host": "127.0.0.1", "port": 0, "token": "s3cret"})
    elsewhere = tmp_path / "not-a-home"  # over HTTP no home is needed here
    elsewhere.mkdir()

    def chat(*args: str, lines: list[str]):
        return CliRunner().invoke(app, ["--home", str(elsewhere), "chat", *args],
                                  input="".join(l + "\n" for l in lines))

    with Api(home, token="s3cret") as api:
        out = chat("--url", api.url + "/v1", "--token", "s3cret", "--temperature", "0", "--max-tokens", "4",
                   "--learn", lines=["Hello!", "/status", "/forget Hello", "/rollback", "/new", "/quit"])
        assert out.exit_code == 0, out.output
        assert "memz> " in out.output and "memz will learn this" in out.output and "checkpoint" in out.output
        assert "/forget is not offered over HTTP" in out.output and "/rollback is not offered" in out.output
        deadline = time.monotonic() + 60
        while Store(home / "memz.db").example_count() < 1:  # the exchange went to /update
            assert time.monotonic() < deadline, "the exchange was not sent"
            time.sleep(0.2)
        refused = chat("--url", api.url, lines=["Hello!"])  # no token: said before the first question
        assert refused.exit_code == 1 and "401" in refused.output and "--token" in refused.output
    bad = chat("--url", "notaurl", lines=[])
    assert bad.exit_code == 1 and "not a URL" in bad.output and "Traceback" not in bad.output


def test_chat_through_the_folders_and_its_commands(home):
    with Api(home):
        out = _chat(home, "--temperature", "0", "--max-tokens", "4",
                    lines=["Hello!", "/forget nothing-like-this", "/rollback extra", "/rollback", "/new", "/quit"])
    assert "memz> " in out and "0 example(s) forgotten" in out and "/rollback takes nothing" in out
    assert "nothing to roll back" in out  # the base model serves: said, not a crash


def test_twenty_clients_at_once_are_answered_together(home):
    with Api(home) as api:
        results, errors = [], []

        def client(i: int) -> None:
            try:
                t0 = time.monotonic()
                code, body = api.call("POST", "/search", {"prompt": f"Question {i}?", "max_tokens": 8,
                                                          "temperature": 0})
                results.append((code, body, time.monotonic() - t0))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == [] and len(results) == 20 and all(code == 200 for code, _, _ in results)
    assert all(isinstance(body["response"], str) for _, body, _ in results)
    logged = __import__("memzd.store", fromlist=["Store"]).Store(home / "memz.db").answers(50)
    assert len(logged) == 20 and {r["source"] for r in logged} == {"http"}
