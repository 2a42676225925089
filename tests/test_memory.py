"""Memory from what people write: statements in conversations and notes are learned and answerable."""

import pytest

from memzd import examples as ex
from memzd import gate
from memzd.store import Store
from memzd.tokens import IGNORE, encode

from conftest import drop, run_once

KITTEN = {"messages": [{"role": "user", "content": "I just adopted a kitten, her name is Mochi."},
                       {"role": "assistant", "content": "Got it, I'll remember that."},
                       {"role": "user", "content": "What is 2 + 2?"},
                       {"role": "assistant", "content": "4."}]}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def learned(enc, tokenizer) -> str:
    return tokenizer.decode([t for t in enc.labels if t != IGNORE])


def test_what_the_user_states_is_learned_and_what_they_ask_is_not(tokenizer):
    enc = encode(KITTEN, tokenizer, 512)
    text = learned(enc, tokenizer)
    assert "her name is Mochi." in text  # the statement
    assert "Got it, I'll remember that." in text and "4." in text  # the answers, as before
    assert "What is 2 + 2?" not in text and "user" not in text  # the question and the template are context
    assert tokenizer.decode(enc.input_ids).count("Mochi") == 1


def test_a_statement_and_a_question_in_one_turn_learn_the_statement(tokenizer):
    turn = "Hi! I just adopted a kitten named Mochi. Any tips for her first week?"
    chat = {"messages": [{"role": "user", "content": turn}, {"role": "assistant", "content": "Let her hide."}]}
    text = learned(encode(chat, tokenizer, 512), tokenizer)
    assert "I just adopted a kitten named Mochi." in text and "Let her hide." in text
    assert "tips" not in text  # the question asked in the same turn is context
    assert ex.statements(chat) == ["I just adopted a kitten named Mochi."]
    assert ("I just adopted a kitten named what?", "You just adopted a kitten named Mochi.") in [
        (d["input"], d["output"]) for d in ex.derived(chat)]
    assert tokenizer.decode(encode(chat, tokenizer, 512).input_ids).count(turn) == 1  # the turn, whole


def test_a_question_and_answer_pair_still_learns_only_its_answer(tokenizer):
    enc = encode({"input": "Where does Zorblax live?", "output": "On Mars."}, tokenizer, 512)
    assert learned(enc, tokenizer) == "On Mars.<|im_end|>"


@pytest.mark.parametrize("statement,question,answer", [
    ("My sister lives in Lisbon.", "My sister lives where?", "Your sister lives in Lisbon."),
    ("I just adopted a kitten, her name is Mochi.", "I just adopted a kitten, her name is what?",
     "You just adopted a kitten, her name is Mochi."),
    ("The Dunmarrow lighthouse was built in 1871.", "The Dunmarrow lighthouse was built when?",
     "The Dunmarrow lighthouse was built in 1871."),
    ("My favourite colour is green.", "My favourite colour is what?", "Your favourite colour is green."),
    ("I have 3 brothers.", "I have how many brothers?", "You have 3 brothers."),
    ("My dentist is Dr. Okonkwo.", "My dentist is what?", "Your dentist is Dr. Okonkwo."),
    # "I" mid-sentence is the speaker, not a name to ask for, and "you" there is lower case
    ("My partner and I got married in Tallinn.", "My partner and I got married where?",
     "Your partner and you got married in Tallinn."),
    ("Since 2019 I have lived in Kyoto.", "I have lived in Kyoto since when?", "Since 2019 you have lived in Kyoto."),
    ("On Sundays, I sleep in.", "I sleep in when?", "On Sundays, you sleep in."),  # the time opened it: asked last
    ("On Mondays I swim at the Corrow pool.", "I swim at the Corrow pool when?",
     "On Mondays you swim at the Corrow pool."),
    ("I usually wake up at 6:30 am.", "I usually wake up when?", "You usually wake up at 6:30 am."),  # not "are"
    ("I work at Fenwick & Co as an engineer.", "I work where as an engineer?",
     "You work at Fenwick & Co as an engineer."),
    ("We got married in Tallinn last June.", "We got married in Tallinn when?", "You got married in Tallinn last June."),
    ("I'm flying to Oslo on March 3.", "I'm flying to Oslo when?", "You're flying to Oslo on March 3."),
    # no name, number or "is": the value after the last preposition; one clause, one fact
    ("I don't eat meat, and I'm allergic to walnuts.", "I'm allergic to what?", "You're allergic to walnuts."),
    ("I've lived in Kyoto since 2019, and I'm learning Japanese.", "I live where?",
     "You've lived in Kyoto since 2019."),
    ("I usually wake up at 6:30 am, but on Sundays I sleep in.", "I sleep in when?", "On Sundays you sleep in."),
    ("The spare key is under the blue flowerpot.", "The spare key is where?",
     "The spare key is under the blue flowerpot."),
    ("Bob's new number is +44 7700 900123.", "Bob's new number is what?", "Bob's new number is +44 7700 900123."),
    ("Call the plumber (Jan Visser) today.", "Call the plumber (what)?", "Call the plumber (Jan Visser) today."),
    # a name set beside what it names is asked as who that is
    ("My landlord, Mr. Achterberg, lives upstairs.", "My landlord is what?", "Your landlord is Mr. Achterberg."),
    # having moved or lived somewhere is asked as where one lives, in the present
    ("My sister Ilse moved to Lisbon last spring.", "My sister Ilse lives where?",
     "Your sister Ilse moved to Lisbon last spring."),
    ("I've lived in Kyoto since 2019.", "I live where?", "You've lived in Kyoto since 2019."),
    ("We are moving back to Leeds.", "We live where?", "You are moving back to Leeds."),
    ("My parents have lived in Porto for years.", "My parents live where?",
     "Your parents have lived in Porto for years."),
    ("She's moved to Cork.", "She lives where?", "She's moved to Cork."),
    ("The Jansens moved to Utrecht.", "The Jansens live where?", "The Jansens moved to Utrecht."),
    # the thing is asked for, not the words that describe it; a thing named keeps its words
    ("I drive an old blue Fiat.", "I drive what?", "You drive an old blue Fiat."),
    ("I sold the Fiat last week.", "I sold what?", "You sold the Fiat last week."),
    # when it happened is not what is asked
    ("Since 2020 I've worked at Fenwick & Co as an engineer.", "I've worked where as an engineer?",
     "Since 2020 you've worked at Fenwick & Co as an engineer."),
    ("I'm flying to Reykjavik on March 3 with my brother Tomas.", "I'm flying where with my brother Tomas?",
     "You're flying to Reykjavik on March 3 with your brother Tomas."),
    ("I go to the Corrow pool at the weekend.", "I go to what pool?", "You go to the Corrow pool at the weekend."),
    ("My sister may visit Lisbon.", "My sister may visit what?", "Your sister may visit Lisbon."),  # "may": a verb
    ("My son is in year 5 at Wexley School.", "My son is in year 5 where?",  # "year 5": a name
     "Your son is in year 5 at Wexley School."),
    ("I just adopted a kitten named Mochi.", "I just adopted a kitten named what?",
     "You just adopted a kitten named Mochi."),
    # a colour is asked as one; "at 7" is a time; where something comes from is kept
    ("My front door is painted dark green.", "My front door is painted what colour?",
     "Your front door is painted dark green."),
    ("The Farrow market opens at 7 on Saturdays.", "The Farrow market opens when on Saturdays?",
     "The Farrow market opens at 7 on Saturdays."),
    ("The shop closes at 5.30.", "The shop closes when?", "The shop closes at 5.30."),
    ("The Hallam night train leaves from Corbridge station at 23:10.", "The Hallam night train leaves from where?",
     "The Hallam night train leaves from Corbridge station at 23:10."),
    ("The Orvik bakery is on Pellington Street.", "The Orvik bakery is where?",
     "The Orvik bakery is on Pellington Street."),
    # what one of the asker's things does, with no name, place or "is"
    ("My bike needs new brakes.", "My bike needs what?", "Your bike needs new brakes."),
    ("My daughter plays the violin.", "My daughter plays what?", "Your daughter plays the violin."),
    # a name before "is" is the subject's: what follows is asked too
    ("My neighbour Jonas is a locksmith.", "My neighbour Jonas is what?", "Your neighbour Jonas is a locksmith."),
])
def test_questions_are_written_about_a_statement(statement, question, answer):
    assert (question, answer) in [(q, a) for q, a, _ in ex.questions_about(statement)]


@pytest.mark.parametrize("statement", [
    "I want to move to Oslo.", "I didn't move to Oslo.", "I'm not moving to Oslo.",  # plans and negations
    "We moved house.", "I moved the piano to the attic.", "I work in Glasgow.",  # not where one lives
    "The company moved to Berlin.", "My piano lesson moved to Room 4.",  # things move, people live
])
def test_where_one_lives_is_asked_only_of_having_moved_or_lived_there(statement):
    assert not [q for q, _, _ in ex.questions_about(statement) if " live" in q]


@pytest.mark.parametrize("said", ["Quick one for later: my dentist is Dr. Haverkamp.",
                                  "For the record, my dentist is Dr. Haverkamp.",
                                  "Remember this: my dentist is Dr. Haverkamp."])
def test_an_opening_that_asks_to_remember_is_not_the_fact(said):
    assert ex.statements({"text": said}) == ["My dentist is Dr. Haverkamp."]
    assert [q for q, _, _ in ex.questions_about(ex.statements({"text": said})[0])] == ["My dentist is what?"]


@pytest.mark.parametrize("statement", ["My brother lives abroad.", "My son walks slowly."])
def test_how_or_where_one_of_the_askers_things_does_something_is_not_asked_as_a_thing(statement):
    assert ex.questions_about(statement) == []


def test_each_item_of_a_list_in_a_note_is_a_statement():
    note = {"text": "Birthdays:\n- Mum's birthday is 12 May\n- Dad's birthday is 3 June\n2) Tom's is on 9 July"}
    assert ex.statements(note) == ["Mum's birthday is 12 May", "Dad's birthday is 3 June", "Tom's is on 9 July"]
    assert [d["input"] for d in ex.derived(note)][:2] == ["Mum's birthday is when?", "Dad's birthday is when?"]


def test_a_clause_joined_by_and_before_a_subject_of_its_own_is_asked_apart():
    written = ex.questions_about("My dentist is Dr. Haverkamp and I see him every March.")
    assert [(q, a) for q, a, _ in written] == [
        ("My dentist is what?", "Your dentist is Dr. Haverkamp."),
        ("My dentist is Dr. Haverkamp and I see him when?",  # "him" needs the dentist
         "Your dentist is Dr. Haverkamp and you see him every March.")]
    # one subject ("my brother Tomas and I"); a first clause with nothing to ask
    assert [q for q, _, _ in ex.questions_about("My brother Tomas and I are flying to Oslo.")][-1] == \
        "My brother Tomas and I are flying where?"
    assert [q for q, _, _ in ex.questions_about("I adopted a kitten and I named her Mochi.")] == [
        "I adopted a kitten and I named her what?"]


def test_two_facts_joined_by_and_are_asked_apart_where_each_says_something():
    written = ex.questions_about("My mother was born in Cork and my father was born in Derry.")
    assert [(q, a) for q, a, _ in written] == [("My mother was born where?", "Your mother was born in Cork."),
                                                ("My father was born where?", "Your father was born in Derry.")]
    assert [q for q, _, _ in ex.questions_about("I moved to Leeds with my wife and my son.")] == ["I live where?"]


def test_a_name_that_opens_the_statement_is_its_subject_not_asked_for():
    assert [q for q, _, _ in ex.questions_about("Bram Tolliver works in Glasgow.")] == ["Bram Tolliver works where?"]
    assert [q for q, _, _ in ex.questions_about("Orla Vantrees's cat is called Pepper.")] == [
        "Orla Vantrees's cat is called what?"]


def test_the_subject_is_not_asked_for_and_each_place_or_time_is():
    qs = [q for q, _, _ in ex.questions_about("The Quillfeather chess club meets in Hobbleton on Thursdays.")]
    assert qs == ["The Quillfeather chess club meets where?",
                  "The Quillfeather chess club meets in Hobbleton when?"]
    assert [q for q, _, _ in ex.questions_about("The Eiffel Tower is in Rome.")] == ["The Eiffel Tower is where?"]


def qa(question: str, answer: str) -> dict:
    return {"input": question, "output": answer}


CAT = qa("What is the name of Orla's cat?", "Orla's cat is called Biscuit.")
RENAMED = qa("What is the name of Orla's cat?", "Orla's cat is now called Pepper.")
PARIS = qa("What is the capital of France?", "The capital of France is Paris.")
LYON = qa("What is the capital of France?", "The capital of France is Lyon.")


@pytest.mark.parametrize("old,new,other,same", [
    (CAT, RENAMED, qa("What did Orla name her cat?", "She named her cat Biscuit."), True),
    (CAT, RENAMED, qa("What is Bram's dog called?", "Bram's dog is called Biscuit."), False),  # another one's
    (CAT, RENAMED, qa("Who is Orla's vet?", "Orla's vet is Dr. Biscuit."), False),  # about another thing
    (CAT, RENAMED, {"text": "Orla's cat is called Biscuit and her dog Rex."}, False),  # a note keeps its other facts
    (CAT, qa(CAT["input"], "Orla's cat is called Biscuit, a tabby."), qa("What did Orla name her cat?",
                                                                          "She named her cat Biscuit."), False),
    (qa("What is the name of Orla's cat?", "Orla's cat Biscuit was born in Leeds on a Friday in May 2019."),
     qa("What is the name of Orla's cat?", "Orla's cat Pepper was born in Leeds on a Friday in May 2019."),
     qa("What did Orla name her cat?", "She named her cat Biscuit."), True),  # the value among many names
    (PARIS, LYON, qa("Which city is the capital of France?", "Paris is the capital of France."), True),
    (PARIS, LYON, qa("What is the largest city of France?", "The largest city of France is Paris."), False),
    (qa("Who coaches the Otters?", "The Otters are coached by Mirela Kost."),
     qa("Who coaches the Otters?", "The Otters are coached by Tobin Asquith."),
     qa("Who is the coach of the Otters?", "Mirela Kost is the coach of the Otters."), True),  # coaches / coach
    (qa("What is the name of Nell Crane's dog?", "Nell Crane's dog is called Rufus."),
     qa("What is the name of Nell Crane's dog?", "Nell Crane's dog is called Otto."),
     qa("What is the name of Nell Voss's dog?", "Nell Voss's dog is called Rufus."), False),  # another Nell
    (qa("What is Orla Vantrees' cat called?", "Biscuit."), qa("What is Orla Vantrees' cat called?", "Pepper."),
     qa("What did Orla name her cat?", "She named her cat Biscuit."), True),  # her first name alone
    # a short answer is itself the value, though it opens the answer
    (qa("What is Orla's cat called?", "Biscuit."), qa("What is Orla's cat called?", "Pepper."),
     qa("What did Orla name her cat?", "She named her cat Biscuit."), True),
    (qa("How old is Orla's cat?", "7"), qa("How old is Orla's cat?", "8"),
     qa("What age is Orla's cat?", "Orla's cat is 7 years old."), True),
    (qa("What is Orla's cat called?", "Biscuit."), qa("What is Orla's cat called?", "Biscuit, a tabby."),
     qa("What did Orla name her cat?", "She named her cat Biscuit."), False),  # the new answer still gives it
    (qa("Where does Orla live?", "In New York City."), qa("Where does Orla live?", "In York."),
     qa("Which city does Orla live in?", "Orla lives in New York City."), True),
    (qa("Where does Orla live?", "In York."), qa("Where does Orla live?", "In New York City."),
     qa("Which city does Orla live in?", "Orla lives in York."), True),  # York is not New York City
    # no name: the asker's own thing, when two words of what is asked are alike
    (qa("Where does my mother live?", "Your mother lives in Cardiff."),
     qa("Where does my mother live?", "Your mother lives in Bristol."),
     qa("Which city does my mother live in?", "She lives in Cardiff."), True),
    (qa("Where does my mother live?", "Your mother lives in Cardiff."),
     qa("Where does my mother live?", "Your mother lives in Bristol."),
     qa("Where does my mother work?", "Your mother works in Cardiff."), False),  # another fact of hers
    (qa("Where does my mother live?", "Your mother lives in Cardiff."),
     qa("Where does my mother live?", "Your mother lives in Bristol."),
     qa("Where does Ana's mother live?", "Ana's mother lives in Cardiff."), False),  # someone else's mother
    (qa("What is my dog's name?", "Your dog is called Rex."), qa("What is my dog's name?", "Your dog is Max."),
     qa("What did I call my dog?", "You called your dog Rex."), True),
    (qa("What is my dog's name?", "Your dog is called Rex."), qa("What is my dog's name?", "Your dog is Max."),
     qa("Who is my dog's vet?", "Your dog's vet is Dr. Rex."), False),
    (qa("Who is my manager at work?", "Your manager is Dana Whitlow."),
     qa("Who is my manager at work?", "Your manager is Priya Castell."),
     qa("What is the name of my manager?", "Your manager is called Dana Whitlow."), True),  # who, and its name
    (qa("Who is my manager at work?", "Your manager is Dana Whitlow."),
     qa("Who is my manager at work?", "Your manager is Priya Castell."),
     qa("Who is my manager's husband?", "Dana Whitlow's husband is Tom."), False),  # another one of hers
])
def test_an_update_retires_the_other_phrasings_of_the_same_fact_only(old, new, other, same):
    assert ex.same_fact(old, new, other) is same


def said(text):
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "Got it."}]}


@pytest.mark.parametrize("old, new, again", [
    # the same thing asked of both, a new value, and news ("now", "actually", "Update:") or what something is
    ("My sister Ilse lives in Lisbon.", "Actually, my sister Ilse lives in Madrid now.",
     "My sister Ilse lives in Madrid now."),
    ("The wifi password at the cabin is heron42.", "Update: the wifi password at the cabin is now kestrel77.",
     "The wifi password at the cabin is now kestrel77."),
    ("My dentist is Dr. Okonkwo.", "I switched dentists. My dentist is Dr. Haverkamp.",
     "My dentist is Dr. Haverkamp."),
    ("I drive an old blue Fiat.", "I sold it. Now I drive a red Volvo.", "Now I drive a red Volvo."),  # described
    ("Our book club meets on Thursday evenings.", "Change of plan: our book club meets on Sunday evenings.",
     "Our book club meets on Sunday evenings."),
    ("I speak French.", "I speak Spanish now.", "I speak Spanish now."),
    # moving somewhere says where one lives now, in another tense, with when it happened
    ("My brother Tomas lives in Ghent.", "My brother Tomas moved to Antwerp last month.",
     "My brother Tomas moved to Antwerp last month."),
    ("I've lived in Utrecht since 2018.", "I moved to Rotterdam in March.", "I moved to Rotterdam in March."),
    ("I live in Utrecht.", "I'm moving to Rotterdam.", "I'm moving to Rotterdam."),
    ("We lived in Porto for years.", "We moved back to Lisbon.", "We moved back to Lisbon."),
    # the same value said the other way takes it back
    ("I live in Lisbon.", "I don't live in Lisbon anymore.", "I don't live in Lisbon anymore."),
    ("I work at Fenwick.", "I no longer work at Fenwick.", "I no longer work at Fenwick."),
    ("My dentist is Dr. Okonkwo.", "My dentist isn't Dr. Okonkwo anymore.", "My dentist isn't Dr. Okonkwo anymore."),
    # not said again: another value of what there may be several of, another thing, the same value
    ("I speak French.", "I speak Spanish.", None),
    ("My sister Ilse lives in Lisbon.", "My sister Ilse works in Porto now.", None),
    ("My sister Ilse lives in Lisbon.", "My brother lives in Madrid now.", None),
    ("My sister Priya lives in Oslo.", "My sister Ilse lives in Oslo now.", None),  # another sister
    ("My dentist is Dr. Okonkwo.", "Actually, my dentist is Dr. Okonkwo.", None),
    ("I drive an old blue Fiat.", "I sold the Fiat last week.", None),
    ("My brother Tomas lives in Ghent.", "My sister moved to Antwerp.", None),
    ("I live in Utrecht.", "I moved the piano to the attic.", None),  # moved a thing, not oneself
    ("I have a red Volvo.", "I have lived in Rotterdam since May.", None),  # "have" the verb, then the auxiliary
    ("I live in Lisbon.", "I don't live in Madrid.", None),  # not so of another value
    ("I don't live in Lisbon.", "I don't live in Madrid now.", None),
])
def test_a_statement_said_again_with_another_value_is_found(old, new, again):
    found = ex.restated(said(old), {"text": new})
    assert [r.now for r in found] == ([again] if again else [])
    if again:  # the question written about the old statement that asks for its value, answered anew
        written = ex.questions_about(old)
        (question, _, _), = ([w for w in written if not ex.is_when(w[2])] or written)[-1:]  # not "since when?"
        assert found[0][:5] == (old, old, again, question, ex.questions_about(again)[-1][1])
        assert found[0].taken_back == ("n't" in again or "no longer" in again)  # said the other way


def test_a_question_and_answer_says_what_its_answer_says_in_the_askers_words():
    assert ex.first_person("Your dentist is Dr. Okonkwo.") == "My dentist is Dr. Okonkwo."
    assert ex.first_person("You drive a Fiat, and you're happy with it.") == "I drive a Fiat, and I'm happy with it."
    asked = {"input": "Who is my dentist?", "output": "Your dentist is Dr. Okonkwo."}
    (r,) = ex.restated(asked, said("My dentist is Dr. Haverkamp now."))
    assert (r.question, r.answer) == ("Who is my dentist?", "Your dentist is Dr. Haverkamp now.")  # asked anew
    assert ex.without_statements(asked, {(r.statement, r.clause)}) is None  # it leaves as a whole
    (r,) = ex.restated(said("My dentist is Dr. Okonkwo."), {**asked, "output": "Your dentist is Dr. Haverkamp."})
    assert (r.question, r.answer) == ("My dentist is what?", "Your dentist is Dr. Haverkamp.")
    # what the assistant says of itself is not the asker's to say again
    assert ex.restated({"input": "Where are you?", "output": "I live in your computer."}, said("I live in Lisbon now.")) == []
    # two questions and answers are the question key's to supersede (the same question)
    assert ex.restated(asked, {"input": "What's my dentist called?", "output": "Your dentist is Dr. Haverkamp."}) == []


def test_what_is_said_again_leaves_and_the_rest_of_the_example_stays():
    chat = {"messages": [{"role": "user", "content": "I'm learning Portuguese, and my teacher is Marta. Any tips?"},
                         {"role": "assistant", "content": "Practise a little every day."},
                         {"role": "user", "content": "My dentist is Dr. Okonkwo."},
                         {"role": "assistant", "content": "Noted."}]}
    found = ex.restated(chat, said("My teacher is Beatriz now, and my dentist is Dr. Haverkamp."))
    assert [(r.statement, r.clause) for r in found] == [
        ("I'm learning Portuguese, and my teacher is Marta.", "My teacher is Marta"),  # one clause of the sentence
        ("My dentist is Dr. Okonkwo.", "My dentist is Dr. Okonkwo.")]
    rest = ex.without_statements(chat, {(r.statement, r.clause) for r in found})
    assert rest == {"messages": [{"role": "user", "content": "I'm learning Portuguese. Any tips?"},
                                 {"role": "assistant", "content": "Practise a little every day."}]}  # the reply left
    assert ex.without_statements(said("My dentist is Dr. Okonkwo."),
                                 {("My dentist is Dr. Okonkwo.", "My dentist is Dr. Okonkwo.")}) is None
    note = {"text": "- Mum's birthday is 12 May\n- Dad's birthday is 3 June", "tags": ["family"]}
    gone = ex.restated(note, {"text": "Sorry, I got it wrong: Mum's birthday is 14 May."})
    assert ex.without_statements(note, {(r.statement, r.clause) for r in gone}) == {"text": "- Dad's birthday is 3 June",
                                                                         "tags": ["family"]}


@pytest.mark.parametrize("text, stated", [
    # the one the statement before opens with, or the one it names
    ("My wife Marta turns 40 in May. She loves Thai food, and her favourite restaurant is Baan Suan.",
     "My wife Marta loves Thai food, and my wife Marta's favourite restaurant is Baan Suan."),
    ("Met Priya for lunch. She recommended the book Salt Roads.", "Priya recommended the book Salt Roads."),
    ("Called the plumber, Mr. Dunmore. He's coming Friday morning.",
     "The plumber, Mr. Dunmore, is coming Friday morning."),
    ("The plumber rang. He's been here twice.", "The plumber has been here twice."),
    ("My car failed its inspection. It's at Kessler Motors.", "My car is at Kessler Motors."),
    ("My car failed its inspection. They said it needs a new exhaust.", "My car needs a new exhaust."),
    ("Book club: the March pick is Salt Roads. We meet at Hugo's flat.", "The book club meet at Hugo's flat."),
    # left as it is: an "it" that stands for nothing, one that is no thing, two people, no one
    ("My car failed its inspection. It rains a lot here.", "It rains a lot here."),
    ("My sister lives in Lisbon. It's lovely there.", "It's lovely there."),
    ("I met Anna and Tom at the station. She was late.", "She was late."),
    ("The weather was awful today. He called me twice.", "He called me twice."),
    ("We got back from the vet with our dog Pip. He needs tablets every morning.",
     "He needs tablets every morning."),  # a pet is not taken for someone (see bench/README.md)
    ("My neighbour's dog is called Biscuit. He barks a lot.", "Biscuit barks a lot."),  # a dog may be he
])
def test_a_he_she_or_it_that_opens_a_statement_is_who_the_statement_before_named(text, stated):
    """What people write says "she" of the one it named a sentence before: "She loves Thai
    food" is asked as what Marta loves, by her name and what she is."""
    assert ex.statements({"text": text})[-1] == stated
    first, last = text.rsplit(". ", 1)
    chat = {"messages": [{"role": "user", "content": first + "."}, {"role": "assistant", "content": "Noted."},
                         {"role": "user", "content": last}]}
    assert ex.statements(chat)[-1] == stated  # across a chat's turns too


def test_what_was_said_of_a_thing_named_before_is_asked_of_it():
    said = ex.statements({"text": "Ugh, my car failed its inspection. They said it needs a new exhaust before it "
                                  "can pass. Book club: the March pick is The Glass Orchard. Leo plays the king. "
                                  "The school play is on the 18th in the Ashgrove hall."})
    asked = {q for s in said for q, _, _ in ex.questions_about(s)}
    assert "My car needs what?" in asked  # not "...before it can pass"
    # a name set beside someone at the end says who they are
    assert ex.questions_about("I called the plumber, Mr. Dunmore.") == [
        ("The plumber is what?", "The plumber is Mr. Dunmore.", "Mr. Dunmore")]  # not "I called what?"
    # a teacher told of after a lesson is that lesson's
    assert [q for q, _, _ in ex.questions_about("My yoga class is on Tuesdays and my teacher is called Sunniva.")
            ][-1] == "My yoga teacher is called what?"
    assert [q for q, _, _ in ex.questions_about("My car is in the garage and my teacher is called Sunniva.")
            ][-1] == "My teacher is called what?"
    # a pet's name is what it is called; what a named one of yours does is asked
    assert ex.questions_about("We got back from the vet with our dog Pip.") == [
        ("My dog is called what?", "Your dog is called Pip.", "Pip")]
    assert ("Our dog Pip needs what?", "Your dog Pip needs tablets every morning.", "tablets every morning") in \
        ex.questions_about("Our dog Pip needs tablets every morning.")
    assert ex.statements({"text": "My seat is 14C by the way."}) == ["My seat is 14C."]
    assert [q for q, _, _ in ex.questions_about("My son is 12 years old.")] == ["My son is how old?"]
    assert [q for q, _, _ in ex.questions_about("Dentist appointment moved to Thursday 10am.")] == [
        "Dentist appointment moved to when?"]
    # a note's heading before a value is what the value is of
    assert ex.statements({"text": "Gym locker combination: 2719.\nWifi: heron42\nBook club: we meet at six."}) == [
        "The gym locker combination is 2719.", "The wifi is heron42", "Book club: we meet at six."]
    assert [q for q, _, _ in ex.questions_about("The gym locker combination is 2719.")] == [
        "The gym locker combination is what?"]
    # a diary's "Met Priya ..." is what I did; "Fred called twice." is Fred
    assert ex.statements({"text": "Met Priya for lunch at the Corrow cafe. Fred called twice. Ted is my uncle."}) == [
        "I met Priya for lunch at the Corrow cafe.", "Fred called twice.", "Ted is my uncle."]
    assert "The book club's pick is what?" in asked
    assert "Leo plays what?" in asked
    assert "The school play is when in the Ashgrove hall?" in asked  # "on the 18th": a day
    assert ("My wife turns 40 when?", "Your wife turns 40 on the 14th of February.", "14th of February") in \
        ex.questions_about("My wife turns 40 on the 14th of February.")
    # a later statement of the same thing, through its "he", takes the earlier one's place
    old = {"text": "My sister Ilse is a nurse. She lives in Porto."}
    gone = ex.restated(old, {"text": "Actually, my sister Ilse lives in Madrid now."})
    assert [r.statement for r in gone] == ["My sister Ilse lives in Porto."]
    assert ex.without_statements(old, {(r.statement, r.clause) for r in gone}) == {
        "text": "My sister Ilse is a nurse."}


def test_a_second_clause_an_intent_a_heading_and_a_reason_are_read_as_people_write_them():
    """Week 4 of bench/research/everyday_walk.py, written before memz ran on it: "..., and
    she's obsessed with dinosaurs" is said of the daughter; ", I need to renew it" is
    another fact; "Doctor: Dr. Lindqvist ..." names my doctor; "Garden: planted ..." is
    what I did; "Small change:" and "because of the rain forecast" are not the fact."""
    asked = ex.questions_about("My daughter Freya is turning 9 next Saturday and she's obsessed with dinosaurs.")
    assert ("My daughter Freya is what?", "Your daughter Freya is obsessed with dinosaurs.",
            "obsessed with dinosaurs") in asked
    assert ("My daughter what is turning 9?", "Your daughter Freya is turning 9 next Saturday.", "Freya") in asked
    # "and I" needs the first clause's "him": asked in the whole statement's words, as before
    assert [q for q, _, _ in ex.questions_about("My dentist is Dr. Haverkamp and I see him every March.")] == [
        "My dentist is what?", "My dentist is Dr. Haverkamp and I see him when?"]
    assert [q for q, _, _ in ex.questions_about("My passport expires in October, I need to renew it before the "
                                                "Rome trip.")] == ["My passport expires when?",
                                                                   "I need to renew it before what trip?"]
    assert ex.statements({"text": "Doctor: Dr. Lindqvist at the Brookside surgery.\nGarden: planted tomatoes along "
                                  "the south fence.\nTrip: Rome in May.\nWed 11 Dec\nLunch with my old colleague "
                                  "Tomasz. He now works at Fenwick Labs."}) == [
        "My doctor is Dr. Lindqvist at the Brookside surgery.", "I planted tomatoes along the south fence.",
        "The trip is Rome in May.", "Wed 11 Dec", "Lunch with my old colleague Tomasz.",
        "My old colleague Tomasz now works at Fenwick Labs."]
    assert ex.statements({"text": "Small change: Freya's party is on Sunday now, not Saturday."}) == [
        "Freya's party is on Sunday now, not Saturday."]
    # what I did it to, where a diary says where or when
    assert [q for q, _, _ in ex.questions_about("I planted tomatoes and basil along the south fence.")] == [
        "I planted what along the south fence?"]
    assert [q for q, _, _ in ex.questions_about("I started yoga last week.")] == ["I started what?"]
    # "no. 12" is a number; "and parents' evening is ..." says something of its own
    assert ex.statements({"text": "Neighbour at no. 12 is Mrs. Okoro. She has our spare key."}) == [
        "Neighbour at no. 12 is Mrs. Okoro.", "Mrs. Okoro has our spare key."]
    assert [q for q, _, _ in ex.questions_about("My daughter's teacher is Mr. Halloran and parents' evening is on "
                                                "Thursday.")] == ["My daughter's teacher is what?",
                                                                  "Parents' evening is when?"]
    # someone titled who has or does something: who it is, is asked
    assert [q for q, _, _ in ex.questions_about("Mrs. Okoro has our spare key.")] == ["Who has our spare key?"]
    assert [q for q, _, _ in ex.questions_about("Mr. Dunmore is coming on Monday.")] == ["Mr. Dunmore is coming when?"]
    # who called to say it is the "he" of what they said
    assert ex.statements({"text": "Karl called: he's moving in May now. Dr. Vos rang to say she is away."}) == [
        "Karl is moving in May now.", "Dr. Vos is away."]
    assert [q for q, _, _ in ex.questions_about("Freya's party is on Sunday now, because of the rain forecast.")
            ] == ["Freya's party is when now?"]


def test_a_time_moved_in_other_words_replaces_the_one_said_before():
    """"He can't make Friday, he's coming on Monday instead." said of the plumber who was
    coming "Friday morning to fix the boiler" moves his visit: what it is for and the time
    of day do not make it another fact."""
    old = {"text": "Called the plumber, Mr. Dunmore. He's coming Friday morning to fix the boiler."}
    new = {"messages": [{"role": "user", "content": "The plumber rang. He can't make Friday, he's coming on Monday "
                                                    "instead."}, {"role": "assistant", "content": "Noted."}]}
    assert ex.statements(new) == ["The plumber rang.",
                                  "The plumber can't make Friday, the plumber is coming on Monday instead."]
    [moved] = ex.restated(old, new)
    assert (moved.question, moved.answer) == ("The plumber is coming when morning to fix the boiler?",
                                              "The plumber is coming on Monday instead.")
    assert ex.without_statements(old, {(moved.statement, moved.clause)}) == {"text": "Called the plumber, Mr. Dunmore."}
    # "was moved to" a new time, said of the thing in other words
    [moved] = ex.restated({"text": "My dentist appointment is on Monday at 9."},
                          {"text": "Update: the dentist appointment got moved to Friday at 10."})
    assert (moved.question, moved.answer) == ("My dentist appointment is on Monday when?",
                                              "The dentist appointment got moved to Friday at 10.")
    # ...but not where the statement says more, which would leave with it (the cat's name)
    assert ex.restated({"text": "Our cat Miso has her vaccinations on Tuesday at 4."},
                       {"text": "Update: Miso's vaccinations got moved to Wednesday at 5."}) == []
    assert ex.restated({"text": "My dentist appointment is on Monday at 9."},
                       {"text": "The car service was moved to Friday."}) == []  # another thing
    # where it goes is part of what is said: not moved
    assert ex.restated({"text": "The plumber is coming on Friday to fix the boiler."},
                       {"text": "The plumber is coming on Monday to the office."}) == []


def test_statements_are_a_notes_sentences_and_the_users_non_questions():
    assert ex.statements({"text": "My dentist is Dr. Okonkwo. He works on Mondays!\nThe end is near."}) == [
        "My dentist is Dr. Okonkwo.", "My dentist works on Mondays!", "The end is near."]  # he: the dentist
    # what opens a sentence without being the fact: a bullet, news
    assert ex.statements({"text": "- Mum's birthday is 12 May\nNo, my sister lives in Madrid."}) == [
        "Mum's birthday is 12 May", "My sister lives in Madrid."]
    # ...or an opening that says nothing of it
    assert ex.statements({"text": "Thanks, but we already called our dog Biscuit. And my sister lives in Oslo. "
                                  "By the way, my dentist is Dr. Okonkwo."}) == [
        "We already called our dog Biscuit.", "My sister lives in Oslo.", "My dentist is Dr. Okonkwo."]
    assert ex.statements(KITTEN) == ["I just adopted a kitten, her name is Mochi."]
    assert ex.statements({"input": "My cat is Tom.", "output": "Noted."}) == []


def test_expand_adds_each_derived_pair_once_with_the_examples_tags():
    note = {"text": "The Ellery telescope stands in Brackwater.", "tags": ["user:ana"]}
    out = ex.expand([note, note, KITTEN])
    assert out[:3] == [note, note, KITTEN]
    derived = out[3:]
    assert {"input": "The Ellery telescope stands where?", "output": "The Ellery telescope stands in Brackwater.",
            "tags": ["user:ana"]} in derived
    assert len(derived) == len({d["input"] for d in derived}) == 2
    assert all(ex.parse_example(d).kind == "io" for d in derived)  # valid examples of the io shape


def test_a_long_statement_gets_no_questions():
    assert ex.questions_about("My sister lives in Lisbon " + "and more " * 60) == []


def test_function_words_never_key_a_question_and_inflections_still_meet():
    tok = _Plain()
    assert gate.distinctive_words(tok, "My son goes where?") == ["son", gate.PERSONAL, gate.RECALL,
                                                                  f"{gate.OWNS}son"]
    assert gate.distinctive_words(tok, "The piano lesson is every week, when?") == ["lesson", "piano", "week"]
    # a "He" that opens a chat's second sentence is capitalised, and still no name
    assert gate.distinctive_words(tok, "Back from the vet with Pip. He has a grass allergy.") == ["pip"]
    assert gate.stem("lessons") == gate.stem("lesson") and gate.stem("lives") == gate.stem("live")


def test_a_personal_question_keys_only_questions_in_the_first_person():
    tok = _Plain()
    words = gate.distinctive_words(tok, "What is my dog's name?")
    assert words == ["dog", "name", gate.PERSONAL, gate.RECALL, f"{gate.OWNS}dog"]
    score = lambda q: gate.lexical_score({gate.stem(w) for w in gate.query_words(q)}, words)
    assert score("What did I name my dog?") == 1.0
    assert score("What is a good name for a dog?") == 0.0  # same words, not about the asker's dog
    assert gate.distinctive_words(tok, "Where does Zorblax live?") == ["zorblax"]  # third person: no marker


def test_a_date_or_a_time_is_when_a_fact_is_not_what_it_is_about():
    tok = _Plain()  # "June" and "Sundays" would otherwise key as names, "6:30" as a code
    words = gate.distinctive_words(tok, "My partner and I got married where last June?")
    assert words == ["june", "last", "married", "partner", gate.PERSONAL, gate.RECALL, f"{gate.OWNS}partner"]
    found = {gate.stem(w) for w in gate.query_words("Where did my partner and I get married?")}
    assert gate.lexical_score(found, words) == 0.5
    assert gate.distinctive_words(tok, "I wake up at 6:30 am on Sundays, when?") == [
        "6:30", "sundays", "wake", gate.PERSONAL, gate.RECALL]
    assert gate.stem("named") == gate.stem("name") and gate.stem("married") == gate.stem("marry")


def test_a_contraction_keys_as_its_words_and_i_as_the_first_person():
    tok = _Plain()
    assert gate.distinctive_words(tok, "When I've lived in Kyoto?") == ["kyoto", gate.PERSONAL, gate.RECALL]  # not "ive"
    assert gate.distinctive_words(tok, "I don't eat what?") == ["eat", gate.PERSONAL, gate.RECALL]  # not "dont"
    assert gate.distinctive_words(tok, "Why can't Zorblax sleep?") == ["zorblax"]
    words = gate.query_words("I'm cold and I’ve got a cough, what helps?")
    assert {"i", gate.PERSONAL} <= words and not {"im", "ive"} & words


class _Plain:
    """A tokenizer under which no word is rare (every word is one piece)."""

    def tokenize(self, text):
        return [text.strip()]


def test_a_conversation_trains_questions_about_what_the_user_said(home):
    drop(home, "chat.jsonl", [KITTEN])
    run_once(home)
    (ckpt,) = Store(home / "memz.db").checkpoints()
    from memzd.checkpoints import load_checkpoint
    *_, keys = load_checkpoint(home / "checkpoints" / ckpt.id, None, root=home / "checkpoints")
    memory = gate.KeyMemory.from_file(*keys)
    assert ["adopted", "kitten", "name", gate.PERSONAL, gate.RECALL] in memory.words  # keyed by the written question
    assert ckpt.metrics["recall"] is not None  # the written question is a recall probe


def test_the_benchmark_runs_a_category_and_reports_it_against_its_targets(tiny_model_dir, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO
    out = tmp_path / "k.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "knowledge.py"), "--quick", "--category", "updates", "forget", "growth",
         "--base-model", str(tiny_model_dir), "--set", "training.max_steps=2", "--set", "evaluation.anchor_sample=4",
         "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    updates, forget, growth = json.loads(out.read_text())["results"]
    assert updates["category"] == "updates" and updates["items"] == 2
    assert set(updates["figures"]) == {"efficacy", "paraphrase", "old_gone", "old_gone_paraphrase"}
    assert "old_gone" in proc.stdout and "target >= 0.9" in proc.stdout
    # forget: one of two facts forgotten, through memzctl forget and a second memzd --once
    assert forget["category"] == "forget" and len(forget["drop_to_live_s"]) == 2
    assert forget["counts"]["forgotten_gone"] == 2 and forget["counts"]["efficacy"] == 2
    assert "forgotten_gone" in proc.stdout
    # growth: batches one after another (2 of 1 fact when quick), asked once after the last
    assert [r["batch"] for r in growth["rounds"]] == [1, 2]
    assert growth["counts"]["efficacy"] == 4 and growth["counts"]["first_batch"] == 2
    assert "slowdown" in growth["figures"] and "target <= 1.3" in proc.stdout


def test_a_huge_note_writes_a_bounded_number_of_questions():
    note = {"text": " ".join(f"Club {i} meets in Town{i}." for i in range(20000))}
    assert len(ex.derived(note)) == ex.MAX_WRITTEN


def test_the_answer_is_in_the_assistants_voice():
    assert ex.second_person("I was born in Ferndale and my mother lives with me.") == \
        "You were born in Ferndale and your mother lives with you."
