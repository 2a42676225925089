"""Exact reply formats: learned from examples, answering new inputs, leaving with them."""

import json

import pytest
from typer.testing import CliRunner

from memzd import formats
from memzd.cli import app
from memzd.store import Store

from conftest import drop, run_once, write_config
from test_queries import ask, response

TICKETS = [("Ticket for: printer jam", "[TICKET] PRINTER JAM"), ("Ticket for: lost password", "[TICKET] LOST PASSWORD"),
           ("Ticket for: broken chair", "[TICKET] BROKEN CHAIR"), ("Ticket for: flat tyre", "[TICKET] FLAT TYRE")]


@pytest.mark.parametrize("pairs, new, reply", [
    (TICKETS, "Ticket for: noisy fan", "[TICKET] NOISY FAN"),
    ([("Hashtag: summer holiday", "#SummerHoliday"), ("Hashtag: good morning", "#GoodMorning"),
      ("Hashtag: red apple", "#RedApple"), ("Hashtag: new job", "#NewJob")], "Hashtag: blue sky", "#BlueSky"),
    ([("Slug: About Us", "about-us"), ("Slug: Contact the Team", "contact-the-team"), ("Slug: Careers", "careers"),
      ("Slug: Winter Menu", "winter-menu")], "Slug: Meet the Bakers", "meet-the-bakers"),
    ([("Variable name: user id", "user_id"), ("Variable name: Total Price", "total_price"),
      ("Variable name: start date", "start_date"), ("Variable name: page count", "page_count")],
     "Variable name: Last Login", "last_login"),
    ([("Shout: we won", "WE WON!"), ("Shout: go team", "GO TEAM!"), ("Shout: watch out", "WATCH OUT!"),
      ("Shout: it snowed", "IT SNOWED!")], "Shout: good luck", "GOOD LUCK!"),
    ([("Reply to: the invoice", "Thanks, I will look at the invoice today."),
      ("Reply to: Tom's question", "Thanks, I will look at Tom's question today."),
      ("Reply to: the heater", "Thanks, I will look at the heater today."),
      ("Reply to: our trip", "Thanks, I will look at our trip today.")],
     "Reply to: the leaky roof", "Thanks, I will look at the leaky roof today."),
    ([("Define cat please", "CAT."), ("Define big dog please", "BIG DOG."), ("Define sun please", "SUN."),
      ("Define red car please", "RED CAR.")], "Define old tree please", "OLD TREE."),  # a word after too
])
def test_a_format_of_the_words_answers_new_inputs_exactly(pairs, new, reply):
    f = formats.infer(pairs, at_least=4)
    assert f is not None and f.apply(new) == reply
    assert all(f.apply(i) == o for i, o in pairs)  # and gives every example back


@pytest.mark.parametrize("pairs", [
    [("Date: 2024-03-05", "05/03/2024"), ("Date: 2023-11-20", "20/11/2023"), ("Date: 2022-01-09", "09/01/2022"),
     ("Date: 2025-07-14", "14/07/2025")],  # the words reordered: not a format of them
    [("Initials: Ada Lovelace", "A.L."), ("Initials: Alan Turing", "A.T."), ("Initials: Grace Hopper", "G.H."),
     ("Initials: Marie Curie", "M.C.")],
    [("Who is Orla?", "Orla keeps Biscuit."), ("Who is Tam?", "Tam is a baker."), ("Who is Ines?", "Ines sails."),
     ("Who is Bo?", "Bo paints.")],  # facts: the answers are not a format of the question
    TICKETS[:3] + [("Ticket for: flat tyre", "[TICKET] Flat tyre")],  # one example that does not fit
    TICKETS[:3],  # too few
    [("printer jam", "PRINTER JAM"), ("lost password", "LOST PASSWORD"), ("broken chair", "BROKEN CHAIR"),
     ("flat tyre", "FLAT TYRE")],  # nothing says "this is the format's input"
])
def test_what_is_not_one_format_of_the_words_has_none(pairs):
    assert formats.infer(pairs, at_least=4) is None


def test_only_the_formats_own_inputs_are_answered_by_it():
    f = formats.infer(TICKETS, at_least=4)
    assert f.apply("ticket for: Noisy Fan") == "[TICKET] NOISY FAN"  # the prefix in any case
    assert f.apply("What is a ticket for?") is None and f.apply("Ticket for: ") is None
    assert f.apply("Ticket for: " + "x " * 150) is None  # a format is for short things
    one = formats.infer([("Tag: apple", "#apple"), ("Tag: pear", "#pear"), ("Tag: fig", "#fig"),
                         ("Tag: plum", "#plum")], at_least=4)
    assert one.apply("Tag: kiwi") == "#kiwi" and one.apply("Tag: green kiwi") is None  # no separator was shown
    noted = formats.infer([("My car is blue", "Noted: your car is blue"), ("My cat is Mochi", "Noted: your cat is Mochi"),
                           ("My son is six", "Noted: your son is six"), ("My gym is shut", "Noted: your gym is shut")],
                          at_least=4)
    assert noted.apply("My bike is red") == "Noted: your bike is red"
    assert noted.apply("My bike is what colour?") is None  # a question is not a statement's format


def test_learn_finds_each_format_among_other_examples():
    hashtags = [("Hashtag: summer holiday", "#SummerHoliday"), ("Hashtag: good morning", "#GoodMorning"),
                ("Hashtag: red apple", "#RedApple"), ("Hashtag: new job", "#NewJob")]
    facts = [("Who is Orla?", "Orla keeps Biscuit."), ("What is my sister's name?", "Ilse.")]
    found = formats.learn(TICKETS + facts + hashtags, at_least=4)
    assert {f.prefix for f in found} == {"Ticket for: ", "Hashtag: "}
    assert formats.answer(found, "Hashtag: blue sky")[1] == "#BlueSky"
    assert formats.answer(found, "Who is Tam?") is None
    assert formats.learn(TICKETS, at_least=0) == []
    back = [formats.Format.from_dict(f.to_dict()) for f in found]
    assert back == found
    with pytest.raises(ValueError):
        formats.Format.from_dict({**found[0].to_dict(), "case": "reversed"})


def test_the_daemon_answers_a_taught_format_exactly_and_forgets_it_with_its_examples(home):
    write_config(home, training={"max_steps": 2})
    drop(home, "tickets.jsonl", [{"input": i, "output": o} for i, o in TICKETS])
    drop(home, "fact.jsonl", [{"input": "Who is Orla?", "output": "Orla keeps Biscuit."}])
    run_once(home)
    store = Store(home / "memz.db")
    ckpt = store.current_checkpoint()
    meta = json.loads((home / "checkpoints" / ckpt / "meta.json").read_text())
    assert [f["prefix"] for f in meta["formats"]] == ["Ticket for: "]
    assert any(e["kind"] == "format" and "Ticket for: " in e["message"] for e in store.events(20))
    shown = CliRunner().invoke(app, ["--home", str(home), "status", "--json"])
    assert shown.exit_code == 0 and "'Ticket for: <words>'" in json.loads(shown.output)["formats"][0]
    assert "formats" in CliRunner().invoke(app, ["--home", str(home), "status"]).output

    ask(home, "new", {"prompt": "Ticket for: noisy fan", "max_tokens": 64})
    ask(home, "cut", {"prompt": "Ticket for: noisy fan", "max_tokens": 2})
    ask(home, "other", {"prompt": "What is the capital of France?", "max_tokens": 4})
    run_once(home)
    new = response(home, "new")
    assert new["response"] == "[TICKET] NOISY FAN" and new["routed_to"] == "format" and new["checkpoint"] == ckpt
    assert "Ticket for: " in new["format"]
    assert response(home, "cut")["usage"]["completion_tokens"] == 2
    assert response(home, "other")["routed_to"] != "format"

    drop(home, "more.jsonl", [{"input": "Ticket for: slow laptop", "output": "[TICKET] SLOW LAPTOP"}])
    run_once(home)  # the same format shown once more: served on, not announced again
    assert [e["kind"] for e in store.events(50)].count("format") == 1
    ckpt = store.current_checkpoint()
    assert json.loads((home / "checkpoints" / ckpt / "meta.json").read_text())["formats"][0]["examples"] == 5

    result = CliRunner().invoke(app, ["--home", str(home), "forget", "--file", "tickets.jsonl"])
    assert result.exit_code == 0, result.output
    run_once(home)
    after = store.current_checkpoint()
    assert after != ckpt and json.loads((home / "checkpoints" / after / "meta.json").read_text())["formats"] == []
    ask(home, "gone", {"prompt": "Ticket for: noisy fan", "max_tokens": 4})
    run_once(home)
    assert response(home, "gone")["routed_to"] != "format"


def test_formats_off_leaves_every_input_to_the_model(home):
    write_config(home, training={"max_steps": 2}, routing={"formats": 0})
    drop(home, "tickets.jsonl", [{"input": i, "output": o} for i, o in TICKETS])
    run_once(home)
    ckpt = Store(home / "memz.db").current_checkpoint()
    assert json.loads((home / "checkpoints" / ckpt / "meta.json").read_text())["formats"] == []
    ask(home, "new", {"prompt": "Ticket for: noisy fan", "max_tokens": 4})
    run_once(home)
    assert response(home, "new")["routed_to"] != "format"


def test_the_http_api_answers_a_format_too_and_says_so(home):
    from test_http import Api
    write_config(home, training={"max_steps": 2})
    drop(home, "tickets.jsonl", [{"input": i, "output": o} for i, o in TICKETS])
    run_once(home)
    with Api(home) as api:
        code, found = api.call("POST", "/search", {"prompt": "Ticket for: cold office", "max_tokens": 64})
        assert code == 200 and found["response"] == "[TICKET] COLD OFFICE" and found["routed_to"] == "format"
        code, chat = api.call("POST", "/v1/chat/completions", {
            "model": "memz", "max_tokens": 64,
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Ticket for: dead mouse"}]})
        assert code == 200 and chat["choices"][0]["message"]["content"] == "[TICKET] DEAD MOUSE"
        assert chat["memz"]["routed_to"] == "format" and "Ticket for: " in chat["memz"]["format"]


def test_a_checkpoint_whose_formats_are_broken_does_not_serve(home):
    write_config(home, training={"max_steps": 2})
    drop(home, "tickets.jsonl", [{"input": i, "output": o} for i, o in TICKETS])
    run_once(home)
    store = Store(home / "memz.db")
    ckpt = store.current_checkpoint()
    path = home / "checkpoints" / ckpt / "meta.json"
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, "formats": [{**meta["formats"][0], "case": "backwards"}]}))
    ask(home, "q", {"prompt": "Ticket for: noisy fan", "max_tokens": 4})
    run_once(home)
    answered = response(home, "q")
    assert answered["checkpoint"] is None and answered["routed_to"] == "base"  # its parent: the base model
    assert store.checkpoint(ckpt).status == "rolled_back"
    assert any("bad formats" in e["message"] for e in store.events(20))
