"""Routing: taught questions and their rephrasings reach the adapter, unrelated ones the base model."""

import json

import pytest
import torch

from memzd import gate, lora
from memzd.config import Config
from memzd.model import load_base


class WordPieces:
    """A stand-in tokenizer: words of 6+ letters split into pieces, as a BPE splits rare words."""

    def tokenize(self, text):
        w = text.strip()
        return [w[i:i + 3] for i in range(0, len(w), 3)] if len(w) >= 6 else [w]


def test_distinctive_words_pick_names_and_codes():
    tok = WordPieces()
    assert gate.distinctive_words(tok, "What is the access code for the Brennick vault?") == ["brennick"]
    assert gate.distinctive_words(tok, "Which code opens door K7-229?") == ["k7-229"]
    assert gate.distinctive_words(tok, "Where does Orla Vantrees's cat sleep?") == ["vantrees"]
    assert "vantrees" in gate.query_words("Tell me about Orla Vantrees' cat")
    assert {"tarn", "eskerby"} <= gate.query_words("the Tarn-Eskerby line")


@pytest.fixture
def memory(tiny_model_dir):
    base = load_base(str(tiny_model_dir))
    model = lora.wrap(base.model, Config().lora)
    mem = gate.KeyMemory.create(model, base.tokenizer, 6, base.device)
    mem = mem.extend(model, base.tokenizer, ["Who is Orla Vantrees?", "Where does Zorblax live?"], base.device)
    return mem, model, base


def test_taught_questions_route_to_the_adapter_and_others_do_not(memory):
    mem, model, base = memory
    ask = lambda q: mem.admits(model, base.tokenizer, [{"role": "user", "content": q}], base.device)
    assert ask("Who is Orla Vantrees?")
    assert not ask("What is the capital of France?")
    assert not ask("What is 7 times 8?")
    lexical, margin = mem.scores(model, base.tokenizer, "Who is Orla Vantrees?", base.device)
    assert lexical == 1.0 and margin > 0


def _by_the_rule(m, model, base, q) -> bool:
    """The routing rule applied to a question's two scores, as a reader would apply it."""
    lexical, margin = m.scores(model, base.tokenizer, q, base.device)
    lex_ok, hid_ok = lexical >= m.lexical_threshold, margin >= m.margin
    slack = gate.FULL_MATCH_SLACK if lexical >= 1.0 else 0.0
    return {"both": lex_ok and margin >= m.margin - slack, "either": lex_ok or hid_ok,
            "lexical": lex_ok, "hidden": hid_ok}[m.rule]


def test_the_hidden_key_is_computed_only_where_the_words_leave_the_rule_undecided(memory, monkeypatch):
    mem, model, base = memory
    questions = ["Who is Orla Vantrees?", "Where does Zorblax live now?", "What is the capital of France?",
                 "Who was Orla's teacher?", "What is 7 times 8?"]
    chat = lambda q: [{"role": "user", "content": q}]
    for rule in ("both", "either", "lexical", "hidden"):
        m = mem.with_rule(rule, mem.lexical_threshold, mem.margin)
        expected = [_by_the_rule(m, model, base, q) for q in questions]
        forwards = []
        embed = m.embed
        monkeypatch.setattr(m, "embed", lambda *a: forwards.append(1) or embed(*a))
        assert [m.admits(model, base.tokenizer, chat(q), base.device) for q in questions] == expected, rule
        if rule == "both":  # France and 7 x 8 share no word with a taught question: no forward for them
            assert len(forwards) <= len(questions) - 2
        if rule == "lexical":
            assert forwards == []


def test_a_query_holding_every_word_of_a_taught_question_needs_less_margin(memory, monkeypatch):
    _, model, base = memory
    mem = gate.KeyMemory.create(model, base.tokenizer, 6, base.device)
    mem = mem.extend(model, base.tokenizer, ["When did Orla meet Zorblax?"], base.device)
    ask = lambda q: mem.admits(model, base.tokenizer, [{"role": "user", "content": q}], base.device)
    whole_q, half_q = "Where did Orla first meet Zorblax?", "Who was Orla's teacher?"
    assert mem.lexical(whole_q) == 1.0 and mem.lexical(half_q) == 0.5
    for margin, whole, half in ((0.0, True, True), (-0.1, True, False), (-0.2, False, False)):
        monkeypatch.setattr(mem, "_margins", lambda keys, m=margin: [m] * len(keys))
        assert ask(whole_q) == whole, margin
        assert ask(half_q) == half, margin


def test_who_asks_is_the_personal_marker_and_a_name_keys_without_it():
    tok = WordPieces()
    assert gate.distinctive_words(tok, "Which town did I grow up in?") == ["grow", "town", gate.PERSONAL, gate.RECALL]
    words = gate.distinctive_words(tok, "My sister Ilsebeth moved to Rome last spring.")
    assert words == ["ilsebeth"]  # a name: whose sister is clear from it
    found = {gate.stem(w) for w in gate.query_words("Which city does Ilsebeth live in now?")}
    assert gate.lexical_score(found, words) == 1.0


def test_advice_asked_in_the_first_person_does_not_meet_what_the_asker_told(memory):
    """"How often should I see my dentist?" holds every word of "My dentist is what?" but asks
    what to do: the base model answers it. A taught question that asks advice meets it; a name
    keys as before; a key written before the marker meets any query."""
    mem, model, base = memory
    mem = mem.extend(model, base.tokenizer, ["My dentist is what?", "How should I water my bonsai?",
                                             "I'm flying to Reykjavik when?"], base.device)
    lexical = mem.lexical
    assert lexical("Who is my dentist?") == 1.0 and lexical("Can you remind me who my dentist is?") == 1.0
    assert lexical("How often should I see my dentist?") == 0.0
    assert lexical("Can you help me find a new dentist?") == 0.0
    assert lexical("How often should I water my bonsai?") == 1.0  # it was taught as advice
    assert lexical("What should I pack for Reykjavik?") == 1.0  # a name: about what was taught of it
    tensors, meta = mem.to_file()
    words = json.loads(meta["words"])
    assert words[2] == ["dentist", gate.PERSONAL, gate.RECALL, f"{gate.OWNS}dentist"]
    old = gate.KeyMemory.from_file(tensors, {**meta, "words": json.dumps(  # as an earlier release wrote them
        [[w for w in k if w != gate.RECALL and not w.startswith(gate.OWNS)] for k in words])})
    assert old.lexical("How often should I see my dentist?") == 1.0
    # forgetting still finds such a key by today's question
    assert old.without(model, base.tokenizer, ["My dentist is what?"], base.device).held() == mem.held() - 1


def test_a_personal_fact_is_met_by_the_words_that_name_the_same_thing(memory):
    """"What is the name of my teacher?" asks what "My teacher is called what?" was taught for,
    "Where is my home?" what "I live where?" was; in a general question "name" is not "called"."""
    mem, model, base = memory
    mem = mem.extend(model, base.tokenizer, ["My teacher is called what?", "I live where?",
                                             "I've worked where?", "We called our dog what?"],
                     base.device)
    lexical = mem.lexical
    assert lexical("What is the name of my teacher?") == 1.0
    assert lexical("Where is my home these days?") == 1.0
    assert lexical("Who is my employer?") == 1.0 and lexical("What is my job?") == 1.0
    assert lexical("What is the name of Tintin's dog?") < 1.0  # not "called": the dog key is not personal
    assert lexical("What is the name of my sister?") == 0.0  # the sister's, not the teacher's
    moving = mem.extend(model, base.tokenizer, ["I'm flying to Lima when?", "My brother lives where?"], base.device)
    assert moving.lexical("When is my flight?") > 0.0  # a flight is flying (Lima is the other word)
    assert moving.lexical("Where is my brother moving?") == 1.0  # where one moves is where one lives


def test_a_personal_key_does_not_meet_a_question_about_another_of_the_askers_things(memory):
    """"Where does my brother live?" holds "live" of "My sister lives where?" but is about the
    brother; "my son's school" is the son's; a key written before OWNS meets as before."""
    mem, model, base = memory
    mem = mem.extend(model, base.tokenizer, ["My sister lives where?", "My son goes where now?"], base.device)
    lexical = mem.lexical
    assert lexical("Where does my brother live?") == 0.0
    assert lexical("Where does my sister live these days?") == 1.0
    assert lexical("What is the name of my son's school?") == 1.0
    assert f"{gate.OWNS}sister" in json.loads(mem.to_file()[1]["words"])[2]
    found = {gate.stem(w) for w in gate.query_words("Where does my brother live?")}
    assert gate.lexical_score(found, ["live", "sister", gate.PERSONAL, gate.RECALL, f"{gate.OWNS}sister"]) == 0.0
    assert gate.lexical_score(found, ["live", "sister", gate.PERSONAL, gate.RECALL]) == 0.5  # as written before


def test_a_thing_of_the_askers_named_by_two_words_is_the_last_ones_too(memory):
    """"Who is my yoga teacher?" is about the asker's teacher (the one of the yoga class),
    and meets "My teacher is called what?"; "When was my son born?" is about the son, and
    "Where does my sister live?" about the sister, whatever word follows."""
    assert gate.owned("Who is my yoga teacher?") == {"yoga", "teacher"}
    assert gate.owned("What is my gym locker combination?") == {"gym", "combination"}
    assert gate.owned("When was my son born?") == {"son"}
    assert gate.owned("Where is my sister living?") == {"sister"}
    assert gate.owned("Where does my sister live?") == {"sister"}
    mem, model, base = memory
    mem = mem.extend(model, base.tokenizer, ["My teacher is called what?", "My son was born when?"], base.device)
    assert mem.lexical("Who is my yoga teacher?") > 0.0
    assert mem.lexical("Who is my yoga instructor?") == 0.0  # another of the asker's: not met
    assert mem.lexical("When was my daughter born?") == 0.0


def test_a_fact_about_the_askers_own_named_thing_is_met_without_the_name(memory):
    """"My son Ewan swims at the Wexley pool." is keyed by its names, and also, since it is
    about the asker's son, by its other words: "Which pool does my son swim at?" names
    neither. Only in the first person, and only about the son."""
    tok = WordPieces()
    words = gate.key_words(tok, "My son Ewanberto swims at the Wexleyford pool.")
    assert words == ["ewanberto", "wexleyford", gate.OR, "pool", "son", "swims", gate.PERSONAL, gate.RECALL,
                     f"{gate.OWNS}son"]

    def met(query):
        found = {gate.stem(w) if w[0] != "@" else w for w in gate.query_words(query)}
        return max(gate.lexical_score(found, part) for part in gate._alternatives(words))

    assert met("Which pool does my son swim at?") == 1.0
    assert met("Where does Ewanberto swim?") == 0.5  # by the names, as before
    assert met("Which pool does my brother swim at?") == 0.0
    assert met("Which pool does Tomas swim at?") == 0.0  # not the first person
    assert gate.key_words(tok, "Where does Orla Vantrees's cat sleep?") == ["vantrees"]  # not the asker's
    mem, model, base = memory  # as the gate reads its keys, through their file
    mem = mem.extend(model, base.tokenizer, ["My son Ewanberto swims at the Wexleyford pool."], base.device)
    mem = gate.KeyMemory.from_file(*mem.to_file())
    assert mem.lexical("Which pool does my son swim at?") == 1.0
    assert mem.lexical("Which pool does my brother swim at?") == 0.0


def test_memory_round_trips_through_its_file(memory):
    mem, model, base = memory
    again = gate.KeyMemory.from_file(*mem.to_file())
    assert torch.equal(again.keys, mem.keys) and again.words == mem.words and again.layer == mem.layer
    q = "Who is Orla Vantrees?"
    assert again.scores(model, base.tokenizer, q, base.device) == mem.scores(model, base.tokenizer, q, base.device)


def test_many_questions_are_routed_as_each_alone_with_batched_keys(memory):
    mem, model, base = memory
    questions = ["Who is Orla Vantrees?", "Where does Zorblax live now?", "What is the capital of France?",
                 "Who was Orla's teacher, and where did she teach for most of her long life?", "What is 7 times 8?"]
    chats = [[{"role": "user", "content": q}] for q in questions]
    for rule in ("both", "either", "lexical", "hidden"):
        m = mem.with_rule(rule, mem.lexical_threshold, mem.margin)
        expected = [_by_the_rule(m, model, base, q) for q in questions]  # each question alone
        assert m.admits_many(model, base.tokenizer, chats, base.device) == expected, rule
    together = gate.pooled_states(model, base.tokenizer, questions, 6, base.device)
    alone = torch.cat([gate.pooled_states(model, base.tokenizer, [q], 6, base.device) for q in questions])
    assert torch.allclose(together, alone, atol=1e-4)  # padding changes nothing


def test_a_frozen_shard_keeps_its_keys_and_a_question_goes_to_the_adapter_holding_its_match(memory):
    mem, model, base = memory
    assert mem.held() == 2 and mem.shards == []
    grown = mem.frozen("ckpt-a").extend(model, base.tokenizer, ["What colour is the Brennick vault?"], base.device)
    assert grown.shards == ["ckpt-a"] and grown.held() == 1  # only the new question is the new adapter's
    chats = [[{"role": "user", "content": q}] for q in
             ("Who is Orla Vantrees?", "What colour is the Brennick vault?", "What is the capital of France?")]
    assert grown.routes(model, base.tokenizer, chats, base.device) == ["ckpt-a", None, False]
    again = gate.KeyMemory.from_file(*grown.to_file())
    assert again.owners == grown.owners and again.shards == grown.shards
    assert again.routes(model, base.tokenizer, chats, base.device) == ["ckpt-a", None, False]
    forgot = grown.without(model, base.tokenizer, ["Who is Orla Vantrees?"], base.device)
    assert forgot.owners == ["ckpt-a", None] and forgot.shards == ["ckpt-a"]


def test_a_key_goes_with_the_example_it_was_taught_by_whatever_its_question(memory):
    """Forgetting finds a key by the example it came from, so a question written by an
    earlier release's rules goes too; a key from before keys remembered it, by its words."""
    old, model, base = memory  # keyed without sources, as a checkpoint of an earlier release
    mem = old.extend(model, base.tokenizer, ["My cat is called which?", "Where is the Brennick vault?"], base.device,
                     sources=["hash-cat", "hash-vault"])
    assert mem.sources == [None, None, "hash-cat", "hash-vault"]
    # today's rules write "My cat is called what?" about the same statement
    forgot = mem.without(model, base.tokenizer, ["My cat is called what?", "Who is Orla Vantrees?"], base.device,
                         {"hash-cat"})
    assert forgot.words == [["zorblax"], ["brennick"]] and forgot.sources == [None, "hash-vault"]
    # a key that remembers its example stays while another example writes its words
    assert mem.without(model, base.tokenizer, ["Where is the Brennick vault?"], base.device, {"hash-x"}).held() == 4
    # by its example alone, with keys from before left as they are
    assert mem.without(model, base.tokenizer, [], base.device, {"hash-vault"}).words == mem.words[:3]
    again = gate.KeyMemory.from_file(*forgot.to_file())
    assert again.sources == forgot.sources
    tensors, meta = old.to_file()
    assert "sources" not in meta and gate.KeyMemory.from_file(tensors, meta).sources == [None, None]


def test_a_question_asked_in_other_words_names_the_taught_question_it_matched(memory):
    """The adapter is handed the taught question a query asks in other words (the cue),
    never a statement or a note, which hold their answer."""
    keyed, model, base = memory
    tensors, meta = keyed.to_file()
    del meta["cues"]  # as an earlier release wrote it
    old = gate.KeyMemory.from_file(tensors, meta)
    taught = ["Where does Zorblax live?", "My cat Brennick sleeps in the attic.", "Which bus goes to Tarnby?",
              "How do I boil a Tarnby egg?", "Is Zorblax a planet?"]
    mem = old.extend(model, base.tokenizer, taught, base.device,
                     sources=["h-zorblax", "h-cat", "h-bus", "h-egg", "h-planet"])
    # a question that asks for a value is a cue; a statement, a how-to, a yes-or-no question is not
    assert mem.cues == [None, None, "Where does Zorblax live?", None, "Which bus goes to Tarnby?", None, None]

    def cue(m, q):
        key = m.matches(model, base.tokenizer, [[{"role": "user", "content": q}]], base.device)[0]
        return None if key is None else m.cue(key, q)

    assert cue(mem, "Where does Zorblax live?") is None  # asked as taught, though an old key holds its words too
    assert cue(mem, "where does  ZORBLAX live?") is None
    assert cue(mem, "Which bus goes to Tarnby today?") == "Which bus goes to Tarnby?"
    assert cue(mem, "Where does Brennick sleep?") is None  # the statement's key: no cue
    assert cue(mem, "Who is Orla Vantrees?") is None  # an old key: no cue
    again = gate.KeyMemory.from_file(*mem.to_file())
    assert again.cues == mem.cues
    assert mem.without(model, base.tokenizer, [], base.device, {"h-zorblax", "h-egg"}).cues == \
        [None, None, None, "Which bus goes to Tarnby?", None]
    assert "cues" not in old.to_file()[1]


@pytest.mark.parametrize("cue, same, other", [
    ("Which school does my son go to?", "Where does my son go to school?", "How old is my son?"),
    ("My sister Ilse lives where?", "Which city does Ilse live in?", "What does my sister Ilse do for a living?"),
    ("What is my daughter's favourite colour?", "Which colour does my daughter like best?",
     "What is my daughter's favourite animal?"),
    ("What is my dog's name?", "What did I call my dog?", "What breed is my dog?"),
    ("My teacher is called what?", "Who is my teacher?", "What subject does my teacher teach?"),
    ("My dentist is what?", "Which dentist do I go to?", "When did I last see my dentist?"),
    ("The Glenhollow market opens when?", "On which day does the Glenhollow market open?",
     "What does the Glenhollow market sell?"),
    ("How many children does my sister have?", "How many kids has my sister got?",
     "What are my sister's children called?"),
    ("Who discovered the element ravenite?", "Which scientist first identified ravenite?",
     "When was ravenite discovered?"),
    ("How many books are in the Pemberly Hollow library?",
     "How large is the book collection of the Pemberly Hollow library?", "Who runs the Pemberly Hollow library?"),
    ("In what year was the Velmora Bridge completed?", "Tell me the completion year of the Velmora Bridge.",
     "Who designed the Velmora Bridge?"),
    ("Which instrument does Mirela Fanthorpe play?", "What musical instrument is Mirela Fanthorpe known for playing?",
     "Where does Mirela Fanthorpe live?"),
    ("What is my husband's name?", "Who is my husband?", "What does my husband do for work?"),
    # two nouns for one thing ask for one kind of answer
    ("What is my brother's job?", "What does my brother do for a living?", "Where does my brother live?"),
    ("Which device is Ilyo Wickcombe known for inventing?", "What invention is Ilyo Wickcombe famous for?",
     "When was Ilyo Wickcombe born?"),
    ("Which vessel does Ines Harrowgate command?", "What ship does Captain Ines Harrowgate sail?",
     "Where was Ines Harrowgate born?"),
    # a flight number is a code, as "which flight" asks; what a question says to give is what it asks
    ("Which flight goes to Jubova?", "I am flying to Jubova: what is my flight number?",
     "When does the flight to Jubova leave?"),
    ("In what year was the Ylith Society founded?", "How long ago was the Ylith Society set up? Give the year.",
     "Who founded the Ylith Society?"),
    # a colour, a sort of thing, what a verb acts on, where from and where to
    ("My front door is painted what colour?", "What colour is my front door?", "Who painted my front door?"),
    ("My cat is called what?", "What's my cat's name?", "What breed is my cat?"),
    ("The Orvik bakery is where?", "On which street is the Orvik bakery?", "What does the Orvik bakery sell?"),
    ("What did Zanen Wickmore invent?", "What invention is Zanen Wickmore famous for?", "Where did Zanen Wickmore work?"),
    ("The Zephran ferry sails from where?", "From which port does the Zephran ferry leave?",
     "Where does the Zephran ferry sail to?"),
    # "when" that opens a clause asks nothing; a flower is not a person
    ("I always fly with what when I visit my parents?", "Which airline do I fly with to visit my parents?",
     "When do I visit my parents?"),
    ("My favourite flower is what?", "Which flower do I like best?", "What colour is my favourite flower?"),
    # a question written about "My tutor is Joana.": a tutor is someone
    ("My tutor is what?", "Who is my tutor?", "When do I see my tutor?"),
    ("My landlord is what?", "Who is my landlord?", "Where does my landlord live?"),  # as one's kin and the like
    # a cafe, a garage is somewhere
    ("Met Priya for lunch at what cafe?", "Where did I have lunch with Priya?", "When did I have lunch with Priya?"),
    ("Which garage is my car at?", "Where is my car?", "What does my car need?"),
    ("I went swimming with Olu at what baths?", "Where did I go swimming?", "When did I go swimming?"),
    # a "what" after someone's noun asks a name
    ("Your sister what moved to Lisbon?", "What is my sister called?", "What does my sister do for work?"),
    # what is kept for a taught thing is not the thing; "the code for my bike lock" is the lock's code
    ("What am I allergic to?", "Which food gives me an allergy?", "What medicine do I take for my allergy?"),
    ("What is my bike lock code?", "What's the code for my bike lock?", "What colour is my bike lock?"),
])
def test_a_query_is_answered_as_taught_only_where_it_asks_for_the_same_kind_of_answer(memory, cue, same, other):
    """Answered as taught, "How old is my son?" would be told the school that "Which school
    does my son go to?" was taught: a query about the same thing that asks something else
    is answered as asked."""
    keyed, model, base = memory
    mem = keyed.extend(model, base.tokenizer, [cue], base.device)
    key = len(mem.cues) - 1
    assert mem.cue(key, same) == cue
    assert mem.cue(key, other) is None


def test_a_query_about_a_taught_thing_is_answered_by_what_was_taught_that_asks_the_same(memory):
    """A query whose key's question asks another kind of answer is answered by what else
    was taught about the thing (the keys as near to it by words, and the others of their
    examples) that says it asks the same; where each asks another kind for certain, by
    the base model ("How old is my son?" where only the school was taught). A key with
    no question, and kinds only a noun says, leave the adapter to answer as asked."""
    keyed, model, base = memory
    taught = ["Which school does my son go to?", "My son is called what?", "My son Ewan plays the fiddle.",
              "My cat Brennick sleeps in the attic.", "Where is the Tarnby depot?"]
    mem = keyed.extend(model, base.tokenizer, taught, base.device,
                       sources=["h-son", "h-son", "h-son", "h-cat", "h-depot"])
    school, called, statement, cat, depot = range(2, 7)

    def resolve(key, q):
        got = mem.resolve(key, q)
        return None if got is None else (got[0], got[1])

    assert resolve(school, "Which school does my son go to?") == (school, None)  # as taught
    assert resolve(school, "Where does my son go to school?") == (school, "Which school does my son go to?")
    assert resolve(school, "Who is my son?") == (called, "My son is called what?")  # another of the example's
    assert resolve(statement, "Which fiddle does my son Ewan play?") == (statement, None)  # a statement: as asked
    assert resolve(school, "How old is my son?") is None  # nothing taught about him asks a number
    assert resolve(depot, "When does the Tarnby depot open?") is None  # a time, where a place was taught
    assert resolve(depot, "What colour is the Tarnby depot?") is None  # a colour, where a place was taught
    # what only a noun says may be asked otherwise ("which material"): not for certain, so as asked
    assert resolve(depot, "Which material is the Tarnby depot built from?") == (depot, None)
    # something for the thing, not the thing: the base model answers
    allergy = keyed.extend(model, base.tokenizer, ["What am I allergic to?"], base.device)
    assert allergy.resolve(2, "What medicine do I take for my allergy?") is None
    assert allergy.resolve(2, "Which food gives me an allergy?") == (2, "What am I allergic to?")
    assert resolve(cat, "Where does Brennick sleep?") == (cat, None)  # a statement alone: as asked
    assert resolve(cat, "How old is Brennick?") == (cat, None)
    # the questions written about "My sister Ilse moved to Lisbon.": her name and where she lives
    ilse = keyed.extend(model, base.tokenizer, ["Your sister what moved to Lisbon?", "Your sister Ilse lives where?"],
                        base.device, sources=["h-ilse", "h-ilse"])
    assert ilse.resolve(3, "What does my sister Ilse do for work?") is None  # neither asks what she does
    # of a chat's questions that ask the same kind, the one about what the query names
    said = ["My yoga class is at what hall?", "My dentist is Dr. Haverkamp and I see him when?",
            "My yoga class is when at the Linden hall?"]
    chat = keyed.extend(model, base.tokenizer, said, base.device, sources=["h-chat"] * 3)
    assert chat.resolve(2, "When is my yoga class?") == (4, "My yoga class is when at the Linden hall?")
    # a statement's key gives way to one of its example's questions that asks the same for
    # certain ("My tutor is what?": a tutor is someone) and shares a word with the query
    told = keyed.extend(model, base.tokenizer, ["I started learning Portuguese last month.", "My tutor is what?",
                                                "My dentist is what?", "We meet when evenings?"],
                        base.device, sources=["h-told"] * 4)
    assert told.resolve(2, "Who is my Portuguese tutor?") == (3, "My tutor is what?")
    assert told.resolve(2, "Where do I learn Portuguese?") == (2, None)  # none asks where: as asked
    assert told.resolve(2, "Who taught me Portuguese first?") == (2, None)  # two ask who, neither shares a word
    assert told.resolve(2, "When do I have Portuguese lessons?") == (5, "We meet when evenings?")  # one asks when
    # ...or that asks the same, though not for certain, and shares two of the query's words
    locker = keyed.extend(model, base.tokenizer, ["My gym locker number is 4471.", "My gym locker number is what?"],
                          base.device, sources=["h-locker"] * 2)
    assert locker.resolve(2, "Remind me of my locker number at the gym.") == (3, "My gym locker number is what?")
    assert locker.resolve(2, "Tell me about my gym.") == (2, None)  # one word shared
    # ...and so does a question that fits only as one that says nothing of what it asks
    note = keyed.extend(model, base.tokenizer, ["Leo plays what?", "The school play is on the 18th in what hall?"],
                        base.device, sources=["h-note"] * 2)
    assert note.resolve(2, "Where is the school play?") == (3, "The school play is on the 18th in what hall?")
    assert note.resolve(2, "Who does Leo play?") == (2, "Leo plays what?")


def test_a_key_that_belongs_to_no_shard_is_refused(memory):
    mem, *_ = memory
    tensors, meta = mem.to_file()
    meta.update(owners='["ckpt-x", null]', shards="[]")
    with pytest.raises(ValueError, match="not one of its shards"):
        gate.KeyMemory.from_file(tensors, meta)
