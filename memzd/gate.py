"""Routing: which questions a checkpoint's adapter answers, and which the base model keeps.

Plain LoRA learns new facts and quietly changes answers it was never taught
about. memz keeps a key memory beside each adapter (as GRACE and WISE route
edits) and answers a question with the adapter only when it is about
something taught; any other question gets the base model's own answer,
unchanged. Each taught question leaves two keys, both computed by the bare
base model:

- lexical: its distinctive words: names, codes, invented words. A word is
  rare when the model's tokenizer splits it into several pieces ("Vantrees"
  is V|ant|rees; "London" is one token), a frequency proxy that needs no
  word list. lexical score = the share of a taught question's distinctive
  words found in the query, best over taught questions. A question in the first
  person keys with markers: only such a query meets it, not one that asks for
  advice, nor one about another of the asker's things ("my brother", taught "my
  sister"), and words that name one thing in a personal fact meet ("name" and
  "called", "home" and "live").
- hidden: the max-pool of the base model's hidden states at `layer` over the
  question's tokens, z-scored with a reference set of general prompts
  (REFERENCE_PROMPTS) and normalised. margin = cosine to the nearest taught
  key minus cosine to the nearest reference prompt: is the question closer to
  what was taught than to general knowledge?

`rule` combines them: "both" (the default) routes when the lexical score
reaches `lexical_threshold` and the margin reaches `margin` (`margin` -
FULL_MATCH_SLACK when the query holds every distinctive word of a taught question).
bench/README.md has the measured separations.

A lineage that has grown past `lora.shard_size` taught questions holds its
facts in several adapters (shards, as WISE keeps side memories): the older
ones frozen, named in `shards`, each key marked with the adapter that holds
it (`owners`; None: the adapter this memory sits beside). A question the
gate admits goes to the owner of the key it matches best.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

from .examples import COPULA, KIN, NEGATIONS, is_statement, is_when, stem
from .lora import using
from .tokens import causal_lm

EPS = 1e-3  # floor of the per-dimension std when z-scoring hidden keys
KEY_TOKENS = 512  # a key reads at most the last this many tokens of a question...
KEY_CHARS = 8 * KEY_TOKENS  # ...cut from at most this many characters before tokenising
MAX_CUE_CHARS = 300  # a taught question longer than this is no cue (`KeyMemory.cue`)
_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]|:(?=\d))*")  # "6:30" is one word
_POSSESSIVE = re.compile(r"(\w)'s?\b")
# "I've", "you're", "don't": the word before the apostrophe is the word ("I" is the
# first person, "do" a function word), not "Ive" (a capitalised rare word: a name).
_CONTRACTION = re.compile(r"\b(\w+?)(?:n't|'m|'re|'ve|'ll|'d)\b", re.IGNORECASE)

# The reference set: general prompts whose keys say what "general knowledge"
# looks like. Kept apart from the anchors and the benchmark's questions, so
# that the forgetting figures measured on those stay independent of the gate.
REFERENCE_PROMPTS = [
    "Write a short poem about the sea.",
    "Explain how photosynthesis works.",
    "Give me three tips for better sleep.",
    "What is the capital of Peru?",
    "What is the capital of Norway?",
    "Who wrote the novel Moby Dick?",
    "Who painted The Starry Night?",
    "Summarise the plot of Cinderella in two sentences.",
    "How do I boil an egg?",
    "What is 6 times 7?",
    "What is 15 divided by 3?",
    "Translate 'good morning' into German.",
    "What is the boiling point of water in Fahrenheit?",
    "Name three primary colours.",
    "What is the largest city in the United States?",
    "Why is the sky blue?",
    "What is a black hole?",
    "Tell me a joke about computers.",
    "Write a haiku about autumn leaves.",
    "How many planets are in the solar system?",
    "What is the difference between a virus and a bacterium?",
    "Explain what a prime number is.",
    "Give me a recipe for pancakes.",
    "What is the chemical symbol for silver?",
    "Who was Napoleon Bonaparte?",
    "What year did World War II end?",
    "Describe the water cycle.",
    "What is machine learning?",
    "How does a rainbow form?",
    "List the days of the week.",
    "What is the tallest animal?",
    "What does DNA stand for?",
    "Can you recommend a good book to read?",
    "How do I make a cup of tea?",
    "What is the population of the world?",
    "Explain gravity to a child.",
    "What is the currency of the European Union?",
    "Who invented the light bulb?",
    "What is the fastest land animal?",
    "What language is spoken in Argentina?",
    "Write a sentence using the word 'serendipity'.",
    "What is the meaning of the word 'ephemeral'?",
    "How far is the Moon from the Earth?",
    "What is the largest bone in the human body?",
    "What are the three states of matter?",
    "Who is the author of The Odyssey?",
    "What is the name of Sherlock Holmes's assistant?",
    "What is the main ingredient in bread?",
    "Which country has the most people?",
    "What is the square of 12?",
    "Convert 5 kilometres to miles.",
    "What is an adjective?",
    "Give an example of a mammal that can fly.",
    "Where is the Great Wall located?",
    "What do pandas eat?",
    "How many strings does a standard guitar have?",
    "What is the opposite of 'fast'?",
    "Write a short thank-you note to a teacher.",
    "What is the name of the longest river in South America?",
    "Who discovered gravity?",
    "What is a synonym for 'happy'?",
    "How do airplanes stay in the air?",
    "What is the name of the dog in the Wizard of Oz?",
    # Requests in the first person that ask for advice, not for something taught.
    "How can I keep my garden tidy in winter?",
    "How do I ask my manager for a raise?",
    "What gift should I get for my mother?",
    "Which country should I visit next summer?",
    "How can I stop my cat scratching the sofa?",
    "What should I wear to a job interview?",
    "How do I help my daughter with her homework?",
    "Where should I go for a weekend by the sea?",
]


def _words(text: str) -> list[str]:
    text = text.replace("\u2019", "'")
    text = _CONTRACTION.sub(lambda m: NEGATIONS.get(m.group(0).lower(), m.group(1)), text)
    text = _POSSESSIVE.sub(r"\1", text)
    return [w.strip("-") for w in _WORD.findall(text) if w.strip("-")]


# Function words: they say nothing about what a question is about, so they never
# key it (the last tiers of distinctive_words would otherwise pick "what", "every").
STOPWORDS = frozenset("""
what where when which whose whom why how who does goes went have been being were this that these those
with from about into onto over under your yours their theirs there they them then than also very some
much many will would should could shall just every each only even still here more most such same other
again ever never always often please tell know since already usually actually really thanks
the and for are was has had his her its our you how why did not but can may out all any own one now yet
too get got off let say he she him it we us""".split())


def _rare(tokenizer, word: str) -> bool:
    return any(c.isdigit() for c in word) or len(tokenizer.tokenize(" " + word)) >= 2


def distinctive_words(tokenizer, text: str) -> list[str]:
    """What identifies a taught question: the first non-empty tier of (1) capitalised
    rare words and words with digits, (2) rare words, (3) capitalised non-initial
    words, (4) words of three letters or more; function words (STOPWORDS) and the
    first person never; a date or time ("June", "2019", "6:30") only in tier 4: it
    says when, not what the question is about. A question in the first person also
    gets PERSONAL unless a name or code keys it (tier 1): "my dog's name" is the
    asker's only in the first person, while "Which city does Ilse live in?" is about
    the asker's sister Ilse. Such a question that does not ask for advice also gets
    RECALL."""
    every = [w for w in _words(text) if w.lower() not in _FIRST_PERSON]  # who asks is PERSONAL's part
    later = [w for w in every[1:] if w.lower() not in STOPWORDS]  # the first word is capitalised anyway
    words = [w for w in every[:1] if w.lower() not in STOPWORDS] + later
    # "June", "2020", "6:30", the 3 of "March 3": when, not what it is about
    dated = lambda w: is_when(w) or (w.isdigit() and len(w) <= 2)  # noqa: E731
    named = [w for w in words if not dated(w)]
    tiers = ([w for w in named if any(c.isdigit() for c in w) or (w[0].isupper() and _rare(tokenizer, w))],
             [w for w in named if _rare(tokenizer, w)],
             [w for w in later if w[0].isupper() and not dated(w)],
             [w for w in words if len(w) >= 3])
    mark = [PERSONAL] + ([] if advice(text) else [RECALL]) + sorted(OWNS + w for w in owned(text)) \
        if personal(text) else []
    for rank, tier in enumerate(tiers):
        if tier:
            return sorted({w.lower() for w in tier}) + (mark if rank >= 1 else [])
    return mark


# Between a key's words and another set that keys it too (`key_words`).
OR = "|"


def key_words(tokenizer, text: str) -> list[str]:
    """The words that key a taught question: its `distinctive_words`, and where names key
    a question about the asker's own things, OR the words without them. "My son Ewan
    started at Wexley School." is keyed by "ewan" and "wexley", and "Which school does my
    son go to?" names neither, so it also keys by "school" with the first person."""
    words = distinctive_words(tokenizer, text)
    if not words or PERSONAL in words or not personal(text):
        return words
    plain = text
    for w in words:
        plain = re.sub(rf"\b{re.escape(w)}\b", " ", plain, flags=re.I)
    other = distinctive_words(tokenizer, plain)
    named = PERSONAL in other and any(w not in _MARKERS and not w.startswith(OWNS) for w in other)
    return words + [OR] + other if named else words


# A question about the asker's own things ("What is my dog's name?") is another
# question than the same words without them ("What is a good name for a dog?").
# Its key carries this marker, and only a query in the first person meets it.
PERSONAL = "@me"
_FIRST_PERSON = frozenset({"i", "my", "me", "mine", "myself", "i'm", "i've", "i'd", "i'll"})


def personal(text: str) -> bool:
    """Is the text in the first person (about the asker's own things)?"""
    return any(w.lower() in _FIRST_PERSON for w in re.findall(r"[A-Za-z]+(?:'[a-z]+)?", text.replace("\u2019", "'")))


# A request for advice in the first person ("How often should I see my dentist?", "Can
# you help me write a letter to my landlord?") asks what to do, not what the asker told
# memz about their dentist or landlord. A query that asks for advice carries ADVICE; the
# personal key of a taught question that does not carries RECALL, and the two never
# meet. A key by a name or code has no RECALL: "Which day should I go to the Maple Ridge
# chess club?" asks what was taught about the club. (Keys written before RECALL carry
# neither: they meet any query as before.)
ADVICE = "@advice"
RECALL = "@recall"
_MARKERS = frozenset({PERSONAL, ADVICE, RECALL})  # never stemmed
_ADVICE = re.compile(r"\b(?:should|shall) (?:i|we)\b|\bhow (?:do|can|could|would|should) (?:i|we)\b|\bhelp me\b"
                     r"|\ba good\b|\bany tips\b|\brecommend\b", re.I)


def advice(text: str) -> bool:
    """Does the text ask for advice ("should I", "how do I", "help me", "a good ...")?"""
    return bool(_ADVICE.search(text.replace("\u2019", "'")))


# Words that name one thing in the facts people tell about themselves: "What is my
# teacher's name?" asks what "My teacher is called Beatriz." told, "Who is my employer?"
# what "I work at the Linden clinic." did. Read as one word only against a personal key
# (PERSONAL): in general questions "named after a snake" is not "called", and "What
# is the name of Tintin's dog?" is not what "We called our dog Biscuit." told.
_SAME_AS = {"call": "nam", "nicknam": "nam",  # called, nicknamed: name
            "hom": "liv", "resid": "liv",  # home, resides: lives
            "job": "work", "emploi": "work", "employer": "work",  # job, employs, employer: works
            "bos": "manager",  # boss
            "allergi": "allergic",  # allergy, allergies
            "flight": "fly", "fli": "fly",  # a flight, flies: flying
            "mov": "liv", "relocat": "liv"}  # moving, relocated: lives (as a statement of it is asked)


def root(word: str) -> str:
    """A word's stem, the same for words that name one thing in a personal fact
    ("called" and "name", "home" and "lives", "job", "employer" and "worked")."""
    s = stem(word)
    return _SAME_AS.get(s, s)


def _alternatives(words: list[str]) -> list[list[str]]:
    """A key's sets of words (`key_words`: split at OR)."""
    out = [[]]
    for w in words:
        out.append([]) if w == OR else out[-1].append(w)
    return out


def lexical_score(found: set[str], words: list[str]) -> float:
    """Share of a taught question's distinctive words among a query's (stemmed) words,
    a personal question's by `root`; 0 when the taught question was personal and the
    query is not, or is about another of the asker's things (OWNS), or the query asks
    for advice and the taught question did not (ADVICE, RECALL)."""
    if RECALL in words:
        if ADVICE in found:
            return 0.0
        words = [w for w in words if w != RECALL]
    same = stem
    if PERSONAL in words:
        if PERSONAL not in found:
            return 0.0
        mine = {w for w in words if w.startswith(OWNS)}
        words = [w for w in words if w != PERSONAL and w not in mine]
        found, same = {_SAME_AS.get(w, w) for w in found}, root
        theirs = {w for w in found if w.startswith(OWNS)}
        if mine and theirs and not mine & theirs and not {OWNS + root(w) for w in words} & theirs:
            return 0.0  # about the asker's brother; taught about their sister
    return len(found & {same(w) for w in words}) / max(len(words), 1)


# "my brother", "my son's school", "my new job": whose or what of the asker's a text
# is about. A personal key keeps it (OWNS + root); a query about another of the asker's
# things than the key's, which names none of the key's words either, does not meet it:
# "Where does my brother live?" is not what "My sister lives where?" was taught for. A
# key about the asker themself ("I live where?") has none, and meets as before. The
# name asked for is not whose: "my dog's name" is the dog's.
OWNS = "@my:"
_BEFORE_THE_THING = frozenset("new old best little big younger older elder eldest youngest current "
                              "favourite favorite first second own late dear".split())


_DONE = re.compile(r"(?:ing|ed)$|^(?:born|gone|done|made|known|seen|taken|given|now|then|today)$")


def owned(text: str) -> set[str]:
    """The roots of what a text says is the asker's: the words of each "my ..." and its
    possessives, describing words and a name asked for aside; and where a question ends
    in "is my ..." that names two or three things ("Who is my yoga teacher?"), the last
    of them too (not "When was my son born?", nor "Where does my sister live?")."""
    lower = [w.lower() for w in re.findall(r"[A-Za-z]+(?:'s)?", text.replace("\u2019", "'"))]
    out = set()
    for i, w in enumerate(lower):
        if w != "my":
            continue
        j = i + 1
        while j < len(lower) and lower[j] in _BEFORE_THE_THING:
            j += 1
        while j < len(lower):
            out.add(root(lower[j].removesuffix("'s")))
            if not lower[j].endswith("'s"):
                break
            j += 1
        compound = lower[j + 1:]
        if i and lower[i - 1] in COPULA and 0 < len(compound) <= 2 and not any(map(_DONE.search, compound)) \
                and re.search(r"\b" + r"\W+".join(compound) + r"\W*$", text.lower()):
            out.add(root(compound[-1]))  # "Who is my yoga teacher?": the teacher's too
    return out - {root("name")}


def _content(text: str) -> set[str]:
    """The stems of a text's words that say what it is about (no function words, no "I")."""
    return {stem(w.lower()) for w in _words(text) if w.lower() not in STOPWORDS and w.lower() not in _FIRST_PERSON}


def query_words(text: str) -> set[str]:
    """Every word of a query, lower-cased; hyphenated words also give their parts;
    PERSONAL when it is in the first person, ADVICE when it asks for advice, and
    OWNS + each root of what it says is the asker's (`owned`)."""
    out = {PERSONAL} if personal(text) else set()
    if advice(text):
        out.add(ADVICE)
    out.update(OWNS + w for w in owned(text))
    for w in _words(text):
        out.add(w.lower())
        out.update(p.lower() for p in w.split("-") if p)
    return out


# A question that asks for a value: a name, a place, a time, a number.
_VALUE = re.compile(r"\b(?:what|which|who|whom|whose|where|when)\b|\bhow (?:many|much|old|long|far|often)\b", re.I)


def _cue(question: str) -> str | None:
    """A taught question a query may be answered as (`KeyMemory.cue`): a short one that only
    asks, and asks for a value. Not a statement, which holds its answer (the adapter would
    be handed it); not a request for advice or a how-to ("How do I boil an egg?"), whose
    examples teach a way of answering that a query about rice must get, not the egg."""
    if len(question) > MAX_CUE_CHARS or is_statement(question) or advice(question) or not _VALUE.search(question):
        return None
    return question.strip()


def _same(cue: str | None, text: str) -> bool:
    return cue is not None and " ".join(cue.split()).casefold() == " ".join(text.split()).casefold()


# What a question asks for (classic question answering's expected answer type): a place,
# a time, a person or a name, a number (a count, a size, an age), a deed ("What does my
# sister do for a living?"), a colour, a sort of thing ("What breed is my dog?"), a thing
# some verb acts on ("What does the bakery sell?"), or the thing named after
# "what"/"which" ("What instrument ...": an instrument); None when it does not say ("My
# landlord is what?"). A query matched to
# a taught key is answered as the taught question only where the two ask for the same
# kind of answer: "How old is my son?" is about what "Which school does my son go to?"
# was taught for, but does not ask it, and answered as taught it would be told the school.
NUMBER = "number"
_HOW_ASKS = re.compile(r"\bhow (?:many|much|old|long|far|big|large|tall|high|fast|heavy|deep|wide|often)\b")
_WH = [(re.compile(r"\bwhere\b"), "place"), (re.compile(r"\bwhen\b"), "time"),
       (re.compile(r"\bwho(?:m|se)?\b"), "person")]
# ...but not one that opens a clause within the question ("I fly with what when I visit
# my parents?" asks a what)
_CLAUSE_AFTER = re.compile(r"\s+(?:i|you|he|she|we|they|it|my|your|his|her|our|their)\b")
_KIND_OF_NOUN = {
    **{w: "place" for w in ("city town country place street road port hall address village company birthplace "
                            "hometown station airport room office building venue location capital school "
                            "university college hospital library museum cafe restaurant garage shop store pub bar gym "
                            "clinic hotel church park theatre cinema bakery flat bath pool beach lake").split()},
    **{w: "time" for w in "day date year month time evening morning night hour week weekday".split()},
    **{w: NUMBER for w in "size height elevation length width depth weight count population age price cost".split()},
    # what someone does, however it is asked ("What does my sister do for a living?")
    **{w: "deed" for w in "job occupation profession career trade".split()},
    # two or more nouns for one thing are one kind (the questions' own words, not a thesaurus)
    **{w: "vessel" for w in "ship boat vessel".split()},
    **{w: "invention" for w in "invention device gadget machine".split()},
    **{w: "code" for w in "code plate registration".split()},
    **{w: "remedy" for w in "remedy potion cure medicine treatment".split()},
    # what sort of thing it is ("What breed is my dog?"), which its name does not tell
    **{w: "sort" for w in "breed species variety kind sort type model brand".split()},
    **{w: "colour" for w in "colour color shade".split()},
    "person": "person", "name": "name"}
# "What is my flight number?" asks for a code, as "Which flight ...?" does; "the number
# of ..." asks a count.
_CODE_NUMBER = [(re.compile(r"\b(?!the\b|a\b|what\b|which\b|of\b)([a-z]+) number\b"), r"\1 code"),
                (re.compile(r"\bthe number of the ([a-z]+)"), r"the \1 code")]
# "How long ago was it set up? Give the year.", "Name the device ...": the thing it says
# to give is what it asks.
_GIVE = re.compile(r"\b(?:give|tell me|say|name) the ([a-z]+)\b|^(?:the )?([a-z]+) of\b")  # "Count of books at ...?"
# A noun for a person (the one who does something: scientist, writer, inventor, musician),
# but for these.
_PERSON_NOUN = re.compile(r"(?:ist|er|or|ian)$")
_NOT_A_PERSON = frozenset("number river letter water paper order power color colour floor door flavor flavour error "
                          "center centre matter weather winter summer computer chapter corner mirror major minor "
                          "tower border harbor harbour monitor motor factor sector meter metre liter litre register "
                          "answer other locker flower shower silver copper cover filter".split())
_A_PERSON = frozenset("poet architect captain chef nurse doctor author king queen president mayor pilot".split())
_AUX = r"(?:is|are|was|were|do|does|did|has|have|had|can|will|would|should|am)"
_WHAT_OR_WHICH = r"\b(?:what|which)\s+(?:(?:kind|sort|type|make|brand)\s+of\s+)?"
_ASKED_NOUN = [re.compile(_WHAT_OR_WHICH + r"(?:(?!" + _AUX + r"\b)[a-z]+\s+){0,2}?([a-z]+)\s+" + _AUX + r"\b"),
               # ^ "What musical instrument is ...": the noun before the verb, never past it
               re.compile(_WHAT_OR_WHICH + r"([a-z]+)"),
               re.compile(r"\bwhat(?:'s| is| are| was| were)\b.*?\bthe (?:[a-z]+ )?([a-z]+) (?:of|for)\b"),
               re.compile(r"\bwhat(?:'s| is| are| was| were)\b.*\b([a-z]+)\W*$"),
               re.compile(r"\bthe (?:[a-z]+ )?([a-z]+) of\b")]  # "Tell me the completion year of ..."
_NOT_A_NOUN = frozenset("is are was were do does did am has have had will can could should would i my the a an "
                        "your our his her their it its this that these those you we they me to in on at of for "
                        "with from by up off what which who whom whose where when why how".split())
_NAMING = re.compile(r"\b(?:name|named|called|call)\b")
_CAPITALISED = re.compile(r"(?<=\W)[A-Z][\w\-]*")  # a word capitalised past the first: a name
_DEED = re.compile(r"\bwhat (?:do|does|did)\b.*\bdo\b")  # "What does my sister do for a living?"
# "What does the bakery sell?": the thing some verb acts on (not a place, a time or a person)
_THING = re.compile(r"\bwhat (?:do|does|did)\b.*\b(?!mean\b|cost\b|weigh\b|like\b)[a-z]+\W*$")
# "Your sister what moved to Lisbon?" (a question written about "My sister Ilse moved to
# Lisbon."): a "what" right after someone's noun asks its name
_NAME_AFTER = re.compile(r"\b(?:my|your|his|her|our|their) (?:(" + "|".join(sorted(_BEFORE_THE_THING))
                         + r") )?([a-z]+) what\b")
_IS_WHAT = re.compile(r"\b([a-z]+) (?:is|are|was|were) what\W*$")  # a question written about a statement
_COUNTED = frozenset({"time", NUMBER, "colour"})  # never what a bare "what" asks
_NOT_A_THING = frozenset({"place", "time", "person", NUMBER, "deed", "colour"})


def _kind_of(noun: str) -> str | None:
    kind = _KIND_OF_NOUN.get(noun) or _KIND_OF_NOUN.get(noun.removesuffix("s"))
    if kind:
        return kind
    if noun in _A_PERSON or noun in KIN or (_PERSON_NOUN.search(noun) and noun not in _NOT_A_PERSON):
        return "person"
    return None


def asks_for(question: str, other: str) -> str | None:
    """The kind of answer `question` asks for (see above). A noun after "what"/"which"
    that `other` also names is what both are about, not what is asked ("Which dentist do
    I go to?" beside "Who is my dentist?"): it says nothing."""
    t = question.lower().replace("\u2019", "'")
    for pattern, code in _CODE_NUMBER:
        t = pattern.sub(code, t)
    if (given := _GIVE.search(t)) and (kind := _KIND_OF_NOUN.get(given.group(1) or given.group(2))):
        return kind
    if _HOW_ASKS.search(t):
        return NUMBER
    for wh, kind in _WH:
        if any(m.start() == 0 or not _CLAUSE_AFTER.match(t, m.end()) for m in wh.finditer(t)):
            return kind
    if (after := _NAME_AFTER.search(t)) and after.group(2) not in _NOT_A_NOUN:
        return "name"
    named = {w.lower() for w in _CAPITALISED.findall(question)}  # names say nothing of what is asked
    nouns = [m.group(1) for p in _ASKED_NOUN for m in [p.search(t)]
             if m and m.group(1) not in _NOT_A_NOUN and m.group(1) not in named]
    if nouns:
        noun = nouns[0]
        if kind := _kind_of(noun):
            return kind
        if _NAMING.search(t):
            return "name"
        return None if root(noun) in {root(w.lower()) for w in _words(other)} else root(noun)
    if _NAMING.search(t):
        return "name"
    if (echo := _IS_WHAT.search(t)) and (kind := _kind_of(echo.group(1))):  # "My tutor is what?": a person
        return kind
    return "deed" if _DEED.search(t) else "thing" if _THING.search(t) else None


def asks_the_same(query: str, cue: str, certain: bool = False) -> bool:
    """Do `query` and the taught question `cue` ask for the same kind of answer? A name is
    a person's or a place's; one that does not say asks for anything but a time or a
    number (`certain`: both must say). Something kept "for my ..." a taught thing is not
    that thing (`_for_it`)."""
    a, b = asks_for(query, cue), asks_for(cue, query)
    return _same_kind(a, b) and not (certain and None in (a, b)) and not _whence_and_whither(a, b, query, cue) \
        and not _for_it(a, query, cue)


# "What medicine do I take for my allergy?" asks for something kept for the allergy, not
# what "What am I allergic to?" asks: a query that ends in "for my ..." and asks for a
# thing it names, where nothing before that "for" is a word of the taught question.
_FOR_IT = re.compile(r"\s+for (?:my|your|our|his|her|their|the) [\w' -]+?\W*$", re.I)


def _for_it(kind: str | None, query: str, cue: str) -> bool:
    if kind is None or kind in ("time", "place", "person") or not (end := _FOR_IT.search(query)):
        return False  # a wh-word asks for what it asks whatever follows
    return not {root(w) for w in _content(query[:end.start()])} & {root(w) for w in _content(cue)}


# Where something goes is not where it comes from: "Where does the ferry sail to?" is not
# "The ferry sails from where?" (a place asked with neither says nothing of which).
_FROM = re.compile(r"\bfrom\b")
_TO = re.compile(r"\bto\W*$")


def _whence_and_whither(a: str | None, b: str | None, query: str, cue: str) -> bool:
    if a != "place" or b != "place":
        return False
    ends = [("to" if _TO.search(t) else "from" if _FROM.search(t) else None) for t in (query.lower(), cue.lower())]
    return set(ends) == {"to", "from"}


def _same_kind(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return (a or b) not in _COUNTED
    if "thing" in (a, b):  # what a verb acts on may be any thing a noun names ("What did she invent?")
        return ({a, b} - {"thing"} or {"thing"}).pop() not in _NOT_A_THING
    return a == b or {a, b} in ({"name", "person"}, {"name", "place"})


# The kinds a question says outright (not a noun such as "instrument", which a question
# in other words may name otherwise): only where both questions say theirs, or one says
# nothing and the other asks a time, a number or a colour, does a query ask something
# else than a taught question for certain (`KeyMemory.resolve`).
_SAID = frozenset({"place", "time", "person", "name", NUMBER, "deed", "thing", "sort", "colour", None})


def asks_otherwise(query: str, cue: str) -> bool:
    """Does `query` ask for another kind of answer than `cue`, for certain (see _SAID), or
    for something kept for what `cue` asks of (`_for_it`)?"""
    a, b = asks_for(query, cue), asks_for(cue, query)
    return _for_it(a, query, cue) or \
        a in _SAID and b in _SAID and (not _same_kind(a, b) or _whence_and_whither(a, b, query, cue))


def asked_turn(chat: list[dict]) -> int:
    """The index of the turn a key reads: the last user turn (else the last turn)."""
    users = [i for i, m in enumerate(chat) if m["role"] == "user"]
    return users[-1] if users else len(chat) - 1


def question_text(chat: list[dict]) -> str:
    """What a key is made of: the last user turn (system prompts are shared boilerplate)."""
    return chat[asked_turn(chat)]["content"]


class _Reached(Exception):
    def __init__(self, hidden):
        self.hidden = hidden


# Under "both", a query holding every distinctive word of a taught question needs a
# smaller margin: the hidden key mostly reads the question's template, and "What is
# the name of my son's school?" looks like a general "What is the name of ...?"
# question while naming all that "My son goes to Wexley Primary School" was keyed on.
FULL_MATCH_SLACK = 0.15

KEY_BATCH = 16  # texts per forward pass, sorted by length so that little is padding


@torch.no_grad()
def pooled_states(model, tokenizer, texts: list[str], layer: int, device: torch.device) -> torch.Tensor:
    """Max-pooled hidden states of the bare base model after `layer` decoder layers, one row per text.

    Raw text, no chat template; position 0 is dropped (an attention sink whose
    huge-norm state says nothing about the content). The forward pass stops
    at that layer: the rest of the model is not needed for a key. Texts go
    through in length-sorted batches, padded on the right: under the causal
    mask a text's own positions never see its padding, and the pool skips it.
    """
    layers = causal_lm(model).get_decoder().layers
    stop_at = layers[min(layer, len(layers)) - 1]

    def reached(module, args, output):
        raise _Reached(output[0] if isinstance(output, tuple) else output)

    rows: list[list[int]] = []
    for text in texts:
        ids = tokenizer(text[-KEY_CHARS:], add_special_tokens=False)["input_ids"][-KEY_TOKENS:]
        rows.append(ids if len(ids) >= 2 else (ids * 2 or [tokenizer.pad_token_id or 0] * 2))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    pooled: list[torch.Tensor | None] = [None] * len(rows)
    pad = tokenizer.pad_token_id or 0
    handle = stop_at.register_forward_hook(reached)
    try:
        with using(model, None):
            for start in range(0, len(order), KEY_BATCH):
                chunk = order[start:start + KEY_BATCH]
                width = max(len(rows[i]) for i in chunk)
                ids = torch.tensor([rows[i] + [pad] * (width - len(rows[i])) for i in chunk], device=device)
                mask = torch.tensor([[1] * len(rows[i]) + [0] * (width - len(rows[i])) for i in chunk],
                                    device=device)
                try:
                    model(input_ids=ids, attention_mask=mask)
                    raise RuntimeError("the key layer was never reached")
                except _Reached as got:
                    hidden = got.hidden.float()
                for row, i in enumerate(chunk):
                    pooled[i] = hidden[row, 1:len(rows[i])].max(0).values.cpu()
    finally:
        handle.remove()
    if not pooled:
        return torch.zeros(0, causal_lm(model).config.hidden_size)
    return torch.stack(pooled)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)


@dataclass
class KeyMemory:
    """The keys of everything an adapter was taught, and the rule that reads them."""

    layer: int
    ref_mu: torch.Tensor     # (hidden,) reference mean of pooled states
    ref_sd: torch.Tensor     # (hidden,) reference std
    ref_keys: torch.Tensor   # (m, hidden) reference prompts' unit keys
    rule: str = "both"
    lexical_threshold: float = 0.5
    margin: float = 0.0
    keys: torch.Tensor = None  # (n, hidden) taught unit keys
    words: list[list[str]] = field(default_factory=list)  # taught distinctive words
    owners: list[str | None] = None  # the adapter holding each key: a frozen shard's id, None for this one
    shards: list[str] = field(default_factory=list)  # the frozen shards, oldest first
    # the content hash of the example each key was taught by (None: keyed before memz kept it)
    sources: list[str | None] = None
    # the taught question of each key, where it only asks and is short (None: a statement, a
    # note, or a key from before memz kept them): what the adapter answers when a query asks
    # it in other words (`cue`)
    cues: list[str | None] = None

    def __post_init__(self):
        if self.keys is None:
            self.keys = torch.zeros(0, self.ref_mu.shape[0])
        if self.owners is None:
            self.owners = [None] * len(self.words)
        if self.sources is None:
            self.sources = [None] * len(self.words)
        if self.cues is None:
            self.cues = [None] * len(self.words)

    def _copy(self, **changes) -> "KeyMemory":
        fields = dict(layer=self.layer, ref_mu=self.ref_mu, ref_sd=self.ref_sd, ref_keys=self.ref_keys,
                      rule=self.rule, lexical_threshold=self.lexical_threshold, margin=self.margin,
                      keys=self.keys, words=self.words, owners=self.owners, shards=self.shards,
                      sources=self.sources, cues=self.cues)
        return KeyMemory(**{**fields, **changes})

    @classmethod
    def create(cls, model, tokenizer, layer: int, device: torch.device,
               reference_prompts: list[str] | None = None, **rule) -> "KeyMemory":
        """An empty memory whose statistics come from general reference prompts."""
        pooled = pooled_states(model, tokenizer, reference_prompts or REFERENCE_PROMPTS, layer, device)
        mu, sd = pooled.mean(0), pooled.std(0) + EPS
        return cls(layer, mu, sd, _unit((pooled - mu) / sd), **rule)

    def embed(self, model, tokenizer, texts: list[str], device: torch.device) -> torch.Tensor:
        return _unit((pooled_states(model, tokenizer, texts, self.layer, device) - self.ref_mu) / self.ref_sd)

    def extend(self, model, tokenizer, questions: list[str], device: torch.device,
               sources: list[str | None] | None = None) -> "KeyMemory":
        """A copy that also holds these taught questions (`sources`: the content hash of
        the example each was taught by, which `without` finds it by)."""
        keys = self.embed(model, tokenizer, questions, device)
        words = [key_words(tokenizer, q) for q in questions]
        sources = list(sources) if sources is not None else [None] * len(words)
        if len(sources) != len(words):
            raise ValueError(f"{len(words)} questions with {len(sources)} sources")
        return self._copy(keys=torch.cat([self.keys, keys]), words=self.words + words,
                          owners=self.owners + [None] * len(words), sources=self.sources + sources,
                          cues=self.cues + [_cue(q) for q in questions])

    def with_rule(self, rule: str, lexical_threshold: float, margin: float) -> "KeyMemory":
        return self._copy(rule=rule, lexical_threshold=lexical_threshold, margin=margin)

    def held(self) -> int:
        """How many taught questions the adapter beside this memory holds (frozen shards' not counted)."""
        return sum(o is None for o in self.owners)

    def frozen(self, adapter: str) -> "KeyMemory":
        """A copy for a fresh adapter: this memory's own keys now belong to `adapter`, a frozen shard."""
        return self._copy(owners=[adapter if o is None else o for o in self.owners], shards=self.shards + [adapter])

    def without(self, model, tokenizer, questions: list[str], device: torch.device,
                sources: set[str] | frozenset[str] = frozenset()) -> "KeyMemory":
        """A copy without the keys of these taught examples (forgetting, superseding): a key
        that remembers its example goes when that example's content hash is in `sources`,
        whatever questions today's rules would write about it; a key from before memz kept
        them goes when its words and its hidden key are one of `questions`' (the keys are
        computed by the same frozen base, so a taught question gives the same key again)."""
        if not self.words or not (questions or sources):
            return self
        old = None in self.sources and bool(questions)  # keys from before: matched by today's questions
        gone = self.embed(model, tokenizer, questions, device) if old else []
        words = [distinctive_words(tokenizer, q) for q in questions] if old else []

        def asked(i: int) -> bool:  # (such a key has no RECALL nor OWNS: it was written before them)
            return any(self.words[i] == [w for w in gw if w != RECALL and not w.startswith(OWNS)]
                       and float(self.keys[i] @ g) > 0.999 for g, gw in zip(gone, words))

        keep = [i for i, s in enumerate(self.sources) if (s not in sources if s is not None else not asked(i))]
        return self._copy(keys=self.keys[keep], words=[self.words[i] for i in keep],
                          owners=[self.owners[i] for i in keep], sources=[self.sources[i] for i in keep],
                          cues=[self.cues[i] for i in keep])

    def scores(self, model, tokenizer, text: str, device: torch.device) -> tuple[float, float]:
        """(lexical score, hidden margin) of a query against the taught keys."""
        if not self.words:
            return 0.0, -2.0
        return self.lexical(text), self._margins(self.embed(model, tokenizer, [text], device))[0]

    def admits(self, model, tokenizer, chat: list[dict], device: torch.device) -> bool:
        """Should the adapter answer this chat? (`admits_many` for one.)"""
        return self.admits_many(model, tokenizer, [chat], device)[0]

    def admits_many(self, model, tokenizer, chats: list[list[dict]], device: torch.device) -> list[bool]:
        """Should the adapter answer each chat? (`matches` says which key admits it.)"""
        return [m is not None for m in self.matches(model, tokenizer, chats, device)]

    def routes(self, model, tokenizer, chats: list[list[dict]], device: torch.device) -> list[str | None | bool]:
        """Where each chat goes: False to the base model, else the owner of the key it
        matches (None: the adapter beside this memory; an id: that frozen shard)."""
        return [False if m is None else self.owners[m] for m in self.matches(model, tokenizer, chats, device)]

    def matches(self, model, tokenizer, chats: list[list[dict]], device: torch.device) -> list[int | None]:
        """The taught key that admits each chat, None where the rule does not admit it.

        The hidden key costs a forward pass, so it is computed only where the words
        leave the rule undecided (under `both`, a general question that shares no word
        with a taught one goes to the base model at once), for all such chats in
        batched passes. The matching key is the best by words; among equals, the one
        taught with this very question, else the nearest by hidden key."""
        texts = [question_text(c) for c in chats]
        by_key = [self._lexical_by_key(t) for t in texts]
        lexical = [max(s, default=0.0) for s in by_key]
        lex_ok = [x >= self.lexical_threshold for x in lexical]
        embedded: dict[int, torch.Tensor] = {}
        if self.rule == "lexical":
            admitted = lex_ok
        else:
            undecided = [i for i, ok in enumerate(lex_ok) if self.rule == "hidden" or ok == (self.rule == "both")]
            admitted = list(lex_ok)
            embedded = self._embed_some(model, tokenizer, texts, undecided, device)
            margins = (self._margins(torch.stack([embedded[i] for i in undecided])) if embedded
                       else [-2.0] * len(undecided))  # as `scores` says of an empty memory
            for i, m in zip(undecided, margins):
                admitted[i] = m >= self.margin - (FULL_MATCH_SLACK if lexical[i] >= 1.0 and self.rule == "both" else 0.0)
        out: list[int | None] = [None] * len(chats)
        tied = {}
        for i, ok in enumerate(admitted):
            if not ok or not self.words:
                continue
            best = [k for k, x in enumerate(by_key[i]) if x >= lexical[i] - 1e-9]
            asked = [k for k in best if _same(self.cues[k], texts[i])]
            out[i] = (asked or best)[0]
            if not asked and len(best) > 1:
                tied[i] = best
        if tied:  # under `both` an admitted chat's hidden key is at hand already
            embedded.update(self._embed_some(model, tokenizer, texts, [i for i in tied if i not in embedded], device))
            for i, best in tied.items():
                out[i] = best[int((self.keys[best] @ embedded[i]).argmax())]
        return out

    def cue(self, key: int, text: str) -> str | None:
        """The taught question that `text`, which matched `key` (`matches`), asks in other
        words: the adapter answers that one as it was taught (`routing.answer_as`). None when
        `text` is the taught question, asks for another kind of answer (`asks_the_same`:
        "How old is my son?" of "Which school does my son go to?"), or the key has none (a
        statement, a note: those hold their answer, which the adapter must give from its
        weights)."""
        cue = self.cues[key]
        return None if cue is None or _same(cue, text) or not asks_the_same(text, cue) else cue

    def resolve(self, key: int, text: str) -> tuple[int, str | None] | None:
        """How `text`, which matched `key` (`matches`), is answered: (the key whose adapter
        answers it, the taught question it answers in its place: `cue`), or None where
        the base model answers it.

        Where `key`'s question says it asks for the kind of answer `text` says it asks
        for (`asks_the_same`, certain), `cue` says. Otherwise what else was taught about
        the thing `text` names (`_about`) is looked at: a question of those that says it
        asks the same kind answers it (of several, the one that shares most words with
        `text`), where `key` is a statement's (it holds its answer, which the adapter was
        taught to recite, not to answer from) and that question shares a word with `text`
        or is the only one ("When do I have Portuguese lessons?" of "... we meet when
        evenings?"), or where `key`'s question fits `text` only by saying nothing of what
        it asks and that one shares as many words ("Where is the school play?" of "Leo
        plays what?"). A statement's key otherwise gives way to a question of those that
        asks the same, said or not, and shares two words ("Remind me of my locker number
        at the gym." of "My gym locker number is what?"), else answers `text` as asked.
        A question's key that asks the same answers as taught; where it and each of
        those ask another kind for certain (`asks_otherwise`: "How old is my son?" where
        only "Where does my son go to school?" was taught), nothing taught answers it and
        the base model does; otherwise (a kind only a noun says, "What breed is my
        dog?") the adapter answers `text` as asked."""
        cue = self.cues[key]
        if cue is not None and (_same(cue, text) or asks_the_same(text, cue, certain=True)):
            return key, self.cue(key, text)
        about = self._about(key, text)

        def shared(k: int) -> int:
            return len(_content(text) & _content(self.cues[k]))

        fitting = [k for k in about if asks_the_same(text, self.cues[k], certain=True)]
        if fitting:
            fits = max(fitting, key=shared)
            if cue is None:
                better = shared(fits) > 0 or len(fitting) == 1
            else:
                better = not asks_the_same(text, cue) or shared(fits) >= shared(key)
            if better:
                return fits, self.cue(fits, text)
        if cue is None:
            best = max((k for k in about if asks_the_same(text, self.cues[k])), key=shared, default=None)
            return (best, self.cue(best, text)) if best is not None and shared(best) >= 2 else (key, None)
        if asks_the_same(text, cue):
            return key, cue
        if all(asks_otherwise(text, self.cues[k]) for k in [key, *about]):
            return None
        return key, None

    def _about(self, key: int, text: str) -> list[int]:
        """The keys with a taught question about what `text`, matched to `key`, is about:
        those as near to `text` by words as `key`, and the others of the examples they
        were taught by (`key`'s own first)."""
        near = self._lexical_by_key(text)
        tied = [k for k, x in enumerate(near) if x >= near[key] - 1e-9 and k != key] if near[key] > 0 else []
        taught_by = {self.sources[k] for k in [key, *tied]} - {None}
        same_example = [k for k, s in enumerate(self.sources) if s in taught_by and k != key and k not in tied]
        return [k for k in (*sorted(same_example, key=lambda k: self.sources[k] != self.sources[key]), *tied)
                if self.cues[k] is not None]

    def _embed_some(self, model, tokenizer, texts: list[str], which: list[int],
                    device: torch.device) -> dict[int, torch.Tensor]:
        """The hidden keys of texts[i] for i in `which`, in batched passes."""
        if not which or not self.words:
            return {}
        keys = self.embed(model, tokenizer, [texts[i] for i in which], device)
        return dict(zip(which, keys))

    def _margins(self, keys: torch.Tensor) -> list[float]:
        """How much nearer each query key is to a taught key than to any reference prompt."""
        return ((keys @ self.keys.T).max(1).values - (keys @ self.ref_keys.T).max(1).values).tolist()

    def lexical(self, text: str) -> float:
        """The best share of a taught question's distinctive words that `text` holds."""
        return max(self._lexical_by_key(text), default=0.0)

    def _lexical_by_key(self, text: str) -> list[float]:
        """The share of each taught question's distinctive words that `text` holds."""
        found = {w if w in _MARKERS or w.startswith(OWNS) else stem(w) for w in query_words(text)}
        return [max(lexical_score(found, w) for w in _alternatives(words)) for words in self.words]

    # -- stored beside the adapter as memz_keys.safetensors --------------------------

    def to_file(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"keys": self.keys, "ref_mu": self.ref_mu, "ref_sd": self.ref_sd, "ref_keys": self.ref_keys}
        meta = {"layer": str(self.layer), "rule": self.rule, "lexical_threshold": str(self.lexical_threshold),
                "margin": str(self.margin), "words": json.dumps(self.words)}
        if self.shards:
            meta.update(owners=json.dumps(self.owners), shards=json.dumps(self.shards))
        if any(s is not None for s in self.sources):
            meta["sources"] = json.dumps(self.sources)
        if any(c is not None for c in self.cues):
            meta["cues"] = json.dumps(self.cues)
        return tensors, meta

    @classmethod
    def from_file(cls, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> "KeyMemory":
        words = json.loads(meta.get("words", "[]"))
        owners = json.loads(meta.get("owners", "null")) or [None] * len(words)
        shards = json.loads(meta.get("shards", "[]"))
        sources = json.loads(meta.get("sources", "null")) or [None] * len(words)
        cues = json.loads(meta.get("cues", "null")) or [None] * len(words)
        if not len(words) == len(owners) == len(sources) == len(cues) == tensors["keys"].shape[0]:
            raise ValueError("routing keys, words, owners, sources and cues disagree in count")
        if not set(owners) <= {None, *shards}:
            raise ValueError("a routing key belongs to an adapter that is not one of its shards")
        return cls(int(meta["layer"]), tensors["ref_mu"].float(), tensors["ref_sd"].float(),
                   tensors["ref_keys"].float(), meta.get("rule", "both"),
                   float(meta.get("lexical_threshold", 0.5)), float(meta.get("margin", 0.0)),
                   tensors["keys"].float(), words, owners, shards, sources, cues)
