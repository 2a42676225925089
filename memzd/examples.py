"""The four example shapes: detection, validation and the canonical form.

A line's shape is detected from its keys; a line that fits none raises
ExampleError saying what was expected. The canonical form (what is stored and
hashed) keeps only the fields that change training, so the same example
dropped twice, with other tags or key order, hashes the same. A `user:NAME`
tag makes an example that user's own (it trains that user's lineage), so the
same text taught by two users is two examples.

Statements are memory too: a {"text"} note's sentences, and what the user
says (not asks) in a conversation. `expand` adds, for each statement,
question-and-answer pairs written by rule, so that the fact can be retrieved
and not only recited; the learner trains and keys the expanded batch. A
statement said again with another value ("Actually, my sister lives in Madrid
now.") supersedes the earlier one (`restated`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

from .errors import ExampleError

SHAPES = {
    "io": ("input", "output"),
    "prompt": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
}
OPTIONAL = ("system", "tags")
ROLES = ("system", "user", "assistant")
USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
EXPECTED = ('one of {"input", "output"}, {"prompt", "completion"}, '
            '{"messages": [{"role", "content"}, ...]} or {"text"}')


@dataclass
class Example:
    """A validated example: its shape, canonical fields, and content hash."""

    kind: str
    data: dict

    @cached_property
    def json(self) -> str:
        return json.dumps(self.data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    @cached_property
    def user(self) -> str | None:
        """The user whose memory this is (its first `user:NAME` tag), or None: shared."""
        return user_of(self.data)

    @cached_property
    def hash(self) -> str:
        return content_hash(self.data)


def content_hash(data: dict) -> str:
    """An example's content hash, as the store keeps it: its fields less the tags, and its user."""
    content = {k: v for k, v in data.items() if k != "tags"}
    user = user_of(data)
    if user is not None:
        content["user"] = user
    blob = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _text(obj: dict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        raise ExampleError(f"missing field '{key}'")
    if not isinstance(value, str):
        raise ExampleError(f"field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ExampleError(f"field '{key}' is empty")
    return value


def parse_example(obj: Any) -> Example:
    """Validate one decoded JSON line and return its canonical Example."""
    if not isinstance(obj, dict):
        raise ExampleError(f"expected a JSON object, got {type(obj).__name__}; expected {EXPECTED}")
    kinds = [k for k, keys in SHAPES.items() if keys[0] in obj]
    if len(kinds) != 1:
        found = ", ".join(sorted(obj)) or "no keys"
        reason = "mixes several shapes" if kinds else "fits no shape"
        raise ExampleError(f"{reason} (keys: {found}); expected {EXPECTED}")
    kind = kinds[0]
    known = [*SHAPES[kind], *OPTIONAL]
    for key in obj:  # other keys are the writer's own (an id, a source) and are let be; a misspelt one is not
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.75) if key not in known else []
        if near:
            raise ExampleError(f"unknown field {key!r}: did you mean {near[0]!r}?")
    data: dict[str, Any] = {}
    if kind == "messages":
        data["messages"] = _messages(obj["messages"])
        if not any(m["role"] == "assistant" for m in data["messages"]):
            # only the user speaks: what they state is a note (system turns say nothing to remember)
            kind, data = "text", {"text": _said(data["messages"])}
    else:
        for key in SHAPES[kind]:
            data[key] = _text(obj, key)
    if "system" in obj:
        if "text" in obj:
            raise ExampleError("field 'system' does not apply to a {\"text\"} example")
        if kind != "text":  # a user-only chat's system prompt says nothing to remember
            data["system"] = _text(obj, "system")
    if "tags" in obj:
        tags = obj["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ExampleError("field 'tags' must be a list of strings")
        users = [t[len("user:"):] for t in tags if t.startswith("user:")]
        if any(not USER_RE.fullmatch(u) for u in users):
            raise ExampleError("a 'user:NAME' tag needs a NAME of 1-64 of A-Z a-z 0-9 _ . @ -")
        if len(set(users)) > 1:
            raise ExampleError(f"field 'tags' names several users ({', '.join(users)}); an example "
                               "belongs to one user, or to everyone with no user: tag")
        data["tags"] = tags
    return Example(kind, data)


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ExampleError("field 'messages' must be a non-empty list of {\"role\", \"content\"}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ExampleError(f"messages[{i}] must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise ExampleError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        content = m.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ExampleError(f"messages[{i}].content must be a non-empty string")
        out.append({"role": role, "content": content})
    return out


def _said(messages: list[dict]) -> str:
    """What the user states in a conversation with no assistant turn, as one note (the
    sentences of their turns that tell, of three words or more); refused when there is none."""
    said = [t.strip() for t in _pieces({"messages": messages}) if len(t.split()) >= 3]
    if not said:
        raise ExampleError("'messages' has no assistant turn to learn from, and the user states nothing "
                           "(a statement of three words or more) to remember")
    return " ".join(said)


def to_chat(data: dict) -> list[dict] | None:
    """The example as chat messages, or None for a plain {"text"} example.

    input/output and prompt/completion both become one user turn and one
    assistant turn, since memz answers questions through the chat template.
    """
    system = [{"role": "system", "content": data["system"]}] if "system" in data else []
    if "messages" in data:
        return system + data["messages"]
    if "input" in data:
        return system + [{"role": "user", "content": data["input"]},
                         {"role": "assistant", "content": data["output"]}]
    if "prompt" in data:
        return system + [{"role": "user", "content": data["prompt"]},
                         {"role": "assistant", "content": data["completion"]}]
    return None


def question_of(data: dict) -> str:
    """The last user turn before the final answer (for recall probes and routing keys)."""
    chat = to_chat(data)
    if chat is None:
        return data["text"]
    users = [m["content"] for m in chat if m["role"] == "user"]
    return users[-1] if users else ""


def answer_of(data: dict) -> str:
    chat = to_chat(data)
    if chat is None:
        return data["text"]
    return [m["content"] for m in chat if m["role"] == "assistant"][-1]


def system_of(data: dict) -> str | None:
    """The example's system prompt, given as `system` or as a system turn of `messages`."""
    systems = [m["content"] for m in to_chat(data) or [] if m["role"] == "system"]
    return systems[0] if systems else None


def question_key(data: dict) -> str | None:
    """The question an example answers, normalised (case, spacing, end punctuation), or None
    for a note: a later example with the same key and another answer supersedes it."""
    chat = to_chat(data)
    if chat is None or chat[-1]["role"] != "assistant":
        return None
    users = [m["content"] for m in chat[:-1] if m["role"] == "user"]
    if not users:
        return None
    text = " ".join(users[-1].lower().replace("\u2019", "'").split()).rstrip(" ?.!")
    return text or None


def user_of(data: dict) -> str | None:
    """The `user:NAME` tag's NAME of a canonical example, or None (shared)."""
    for tag in data.get("tags", ()):
        if tag.startswith("user:"):
            return tag[len("user:"):]
    return None


# -- statements: questions written about what people state ---------------------------

# Words whose following span is a place ("lives in Lisbon": where?).
_PLACE = {"in", "at", "near", "from", "to", "into", "inside", "outside", "behind", "under", "beside"}
_MONTH = "(?:january|february|march|april|may|june|july|august|september|october|november|december)"
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_WHEN = re.compile(r"^(?:1\d{3}|20\d\d|(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?|"
                   rf"{_MONTH}|\d{{1,2}}(?::\d\d)?\s*(?:am|pm)|\d{{1,2}}:\d\d|"
                   r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)\s+\d{1,2}(?::\d\d)?\s*(?:am|pm)|"
                   rf"{_MONTH}\s+{_DAY}|{_DAY}\s+(?:of\s+)?{_MONTH})(?:,?\s+\d{{4}})?$", re.I)
_ORDINAL = re.compile(r"^\d{1,2}(?:st|nd|rd|th)$")  # "on the 18th": a day of the month
# Words of a question that say nothing of what it is about, as _asks stems them
# ("called" -> "call"; "does", "was", "this" are too short to stem).
_ASKING = {"what", "which", "who", "whom", "whose", "where", "when", "why", "how", "does", "did", "the", "and",
           "for", "name", "named", "call", "her", "his", "their", "its", "tell", "about", "with",
           "has", "have", "had", "was", "were", "are", "this", "that", "many", "much", "from", "into",
           "ask", "asks", "know", "give", "say", "says"}
# The second person, so that a stated fact is answered as the assistant would say it.
_PERSON = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "am": "are",
           "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd", "we": "you", "us": "you",
           "our": "your", "ours": "yours", "we're": "you're"}
# "I" is written in capitals wherever it stands: it is neither a name nor a sentence's start.
_I = {"i", "i'm", "i've", "i'll", "i'd"}
_AFTER = _PLACE | {"of", "with", "for", "about", "on", "by"}  # ...a value that ends a sentence
_ALONG = _AFTER | {"along", "around", "across", "through", "over", "last", "this", "yesterday", "today"}
_IN_NAMES = {"&", "of", "de", "van", "von", "da", "del"}  # "Fenwick & Co", "Isle of Man"
_DETERMINERS = {"the", "a", "an", "my", "your", "his", "her", "its", "our", "their", "this", "that"}
# Capitalised words that open a sentence without being part of a name ("In New York City.").
_OPENERS = _PLACE | _DETERMINERS | _PERSON.keys() | {"on", "by", "with", "for", "and", "but", "since", "after",
                                                      "before", "until", "during", "then", "yes", "no", "it", "she",
                                                      "he", "they", "we", "there", "here", "now", "today"}
_SENTENCE = re.compile(r"(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bSt\.)(?<!\bMrs\.)(?<=[.!;?])"
                       r"(?!(?<=\b[Nn]o\.)\s+\d)\s+|\n+")  # "at no. 12": a number, not a full stop
_TOKEN = re.compile(r"(?:Dr|Mr|Ms|Mrs|St)\.|\d+(?:\.\d+)+|\+?[A-Za-z0-9][\w'’:\-]*|[^\sA-Za-z0-9]")  # "+44": a number
# "I've lived in Kyoto since 2019, and I'm learning Japanese": two facts, asked apart; so are
# "I switched dentists: my dentist is Dr. Haverkamp." (not "Wifi: heron42", a clause too short).
_CLAUSE = re.compile(r",\s+(?:and|but|so)\s+|[;:]\s+")
# A second clause with its own subject, joined without a comma, where the first already
# says something (`_SAYS`; "My brother Tomas and I are flying to Oslo" is one subject):
# "My yoga class is on Tuesdays and my teacher is called Sunniva" is two facts, asked apart
# where the second says something too ("I moved here with my wife and my son" is one);
# "My dentist is Dr. Haverkamp and I see him every March" is asked apart in its first
# clause only, since "him" needs the dentist. A subject without "my" or "the" says so by
# its verb: "My daughter's teacher is Mr. Halloran and parents' evening is on Thursday".
_AND_NOUN = re.compile(r"\s+and\s+(?=(?:my|our|his|her|their|the)\s|[a-z]+['’]?(?: [a-z]+)? (?:is|are|was|were)\s)")
_AND_PRONOUN = re.compile(r"\s+and\s+(?=(?:I|we|he|she|they)(?:['’](?:m|ve|s|re))?\s)")
# Someone who teaches, told of after what they teach: "my piano lesson ..., and my teacher is ..."
_LESSON = re.compile(r"^(?:[Mm]y|[Oo]ur) ([a-z]+) (?:class|classes|lesson|lessons|course|training|practice|club|team)"
                     r" (?:is|are|was|were|starts|started|meets|runs)\b")
_ROLE = re.compile(r"^([Mm]y|[Oo]ur) (?=(?:teacher|tutor|coach|instructor|trainer)\b)")
_SPLICE = re.compile(r",\s+(?=(?:the|my|our)\s)")
_INTENT = re.compile(r",\s+(?=I (?:need|needs|should|must|have to|want|will|'ll|plan|hope|might)\b)")
_SAYS = re.compile(r"\s(?:is|are|was|were|am|has|have|had|[a-z]+ed)\s", re.I)


def _says(clause: str) -> bool:
    """Does a clause hold a verb that says something of its subject (`_SAYS`)?"""
    return bool(_SAYS.search(f" {clause} "))


# "My landlord, Mr. Achterberg, lives upstairs": a name set beside what it names.
_SET_NAME = r"((?:(?:Dr|Mr|Ms|Mrs|St)\. )?[A-Z][\w'’\-]*(?: [A-Z][\w'’\-]*)*)"
_APPOSITION = re.compile(rf"^((?:[Mm]y|[Oo]ur|[Tt]he)(?: [a-z]+){{1,2}}), {_SET_NAME}, (.+)$")
# ...or at a sentence's end: "I called the plumber, Mr. Dunmore."
_APPOSITION_ENDS = re.compile(rf"^(.+ )((?:the|my|our) [a-z]+), {_SET_NAME}$")
_PET_NAMED = re.compile(r"\b(?:[Mm]y|[Oo]ur) (dog|cat|puppy|kitten|horse|pony|rabbit|parrot|hamster) ([A-Z][a-z]+)\b"
                        r"(?!['’])")
# Someone titled who does or has something: who it is is asked ("Who has our spare key?")
_WHO_DOES = re.compile(r"^((?:Dr|Mr|Mrs|Ms|Prof)\. [A-Z][\w'’\-]*) ((?:has|have|keeps|looks after|lives|works|teaches"
                       r"|runs|owns|cuts|fixes|cleans|walks|feeds|drives|sings|plays) .+)$")
_NAMED_SO = re.compile(r"\b(?:called|named|call|name)\b", re.I)  # "We called our dog Biscuit" asks it already
_BULLET = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+")  # "- Mum's birthday is 12 May", "2) ..."
# An opening that says a sentence is news, not what it is about: "Update: the wifi password
# is ...", "Change of plan: ...", "Sorry, I got that wrong: ...", "Actually, ...".
_PREAMBLE = re.compile(r"^(?:(?:(?:quick|small|slight|minor|little|big|last-minute|one|another|latest|important) )?"
                       r"(?:update|correction|change|note|fyi|edit|ps|sorry|oops|actually)\b[^:.!?]{0,40}:\s+"
                       r"|(?:actually|no|oh|ok|okay|so|well|also|btw|anyway|sorry|oops|ugh|argh|phew|oh no)\s*,\s+)+", re.I)
# An opening that is neither the fact nor news of it: "Thanks, but we already called our
# dog Biscuit.", "And my sister lives in Lisbon.", "By the way, my dentist is Dr. Okonkwo.",
# "Quick one for later: my dentist is ...", "For the record, ...", "Remember this: ...".
_OPENING = re.compile(r"^(?:(?:thanks|thank you|yes|yeah|by the way|hi|hey|hello|for the record|just so you know"
                      r"|for your information|remember this|for later)\s*[,!:]\s+|(?:and|but)\s+"
                      r"|(?:quick one|one more thing|reminder|remember|heads up|something to remember|note to self)"
                      r"\b[^:.!?]{0,30}:\s+"
                      # "They said it needs a new exhaust.": what was said, not who said it
                      r"|(?:they|he|she) (?:said|say|says|told me)(?: that)? (?=(?:it|he|she|his|her|the|my)\b))+", re.I)
# A diary's sentence that opens with what was done says who did it: "Met Priya for lunch
# at the Corrow cafe." is "I met Priya ..." (not "Fred called.", nor "Ted is my uncle.").
_DID = (r"(?:[A-Z][a-z]+ed|Met|Saw|Had|Went|Got|Bought|Took|Made|Found|Gave|Told|Sent|Paid|Left|Ate"
        r"|Drove|Rang|Spoke|Heard|Lost|Won|Ran|Swam|Began|Brought|Caught|Sold|Wrote|Flew) ")
_DIARY = re.compile(rf"^{_DID}(?!(?:is|was|has|had|and|[a-z]+ed|[a-z]+s)\b)")
_DID_AFTER = re.compile(rf"^{_DID}(?!(?:is|was|has|had|and)\b)", re.I)  # past a heading, a name cannot be it
# Who called to say it is who the "he" or "she" after is: "Karl called: he's moving in May now."
_RANG = re.compile(r"^((?:(?:Dr|Mr|Mrs|Ms)\. )?[A-Z][a-z]+) (?:called|rang|phoned|texted|emailed|messaged|wrote)"
                   r"(?: me)?(?::|,| to say)\s+(he|she)(['’]s)?\s+")
_AFTERTHOUGHT = re.compile(r",? by the way([.!]?)$", re.I)  # "My seat is 14C by the way."
# A note's heading that names what the sentence after it is about.
_LABEL = re.compile(r"^([A-Z][a-z]+(?: [a-z]+){0,2}): the ")
# ...or that a value follows: "Gym locker combination: 2719.", "Wifi: heron42"
_LABEL_VALUE = re.compile(r"^([A-Z][a-z]+(?: [a-z]+){0,4}): (?!(?:the|a|an|my|our|his|her|their|it|we|they|he|she|I)\b)"
                          r"((?:\S+ ){0,3}\S+?)([.!]?)$")
# ...or someone ("Doctor: Dr. Lindqvist at the Brookside surgery."), or what was done
# ("Garden: planted tomatoes and basil along the south fence.")
_HEADING = re.compile(r"^([A-Z][a-z]+(?: [a-z]+){0,2}):\s+")
_NUMBER = re.compile(r"\d")
_AT_TIME = {"at", "until", "till"}
_HOUR = re.compile(r"^\d{1,2}(?:[:.]\d\d)?$")  # "at 7", "until 5.30"
_PLACE_NOUNS = {"station", "street", "road", "airport", "square", "park", "harbour", "harbor", "bridge", "avenue",
                "lane", "market", "church", "hall", "port", "terminal"}
_ON_PLACE = {"Street", "St", "Road", "Rd", "Avenue", "Lane", "Square", "Island", "Boulevard", "Drive", "Hill", "Row",
             "Terrace", "Crescent", "Quay", "Wharf"}  # "on Pellington Street": a place
_COLOURS = {"red", "green", "blue", "yellow", "black", "white", "grey", "gray", "brown", "orange", "purple", "pink",
            "violet", "silver", "gold", "golden", "beige", "turquoise", "maroon", "navy", "crimson", "teal"}
_SHADES = {"dark", "light", "pale", "bright", "deep", "pastel"}
# "My bike needs new brakes.", "My daughter plays the violin.": what one of the asker's
# things does, to up to three words that end the sentence (not "lives abroad": where).
# So for one named: "Leo plays the king." -> "Leo plays what?"
_OWNED_DOES = re.compile(r"^(?:(?:[Mm]y|[Oo]ur)(?: [a-z]+){1,2}(?: [A-Z][a-z]+)?|(?!(?:It|He|She|They|We|There|This|That)\b)[A-Z][a-z]+)"
                         r" ([a-z]+[^s\W]s) ((?:[a-z]+ ){0,2}[a-z]+)[.!]?$")
# "My car needs a new exhaust before it can pass.": what comes after it is asked apart, if at all
# ...and so is why ("..., because of the rain forecast.")
_THEN = re.compile(r",?\s+(?:(?:before|after|because|until|unless|once|so that)\s+(?:it|he|she|they|we|I|you)\b"
                   r"|because of\b|due to\b).*$")
_NOT_A_THING = re.compile(r"^(?:abroad|nearby|upstairs|downstairs|here|there|home|alone|away|well|hard|fast|late|early"
                          r"|a lot|too much|every \w+|[a-z]+ly)\b")
MAX_STATEMENT_CHARS = 300  # longer sentences are taught as they are, with no questions about them
MAX_QUESTIONS = 3          # questions written per statement
MAX_WRITTEN = 16           # ...and per example: a long note costs training time, not all of it
SHORT = 3                  # an answer of at most this many words is itself a value (same_fact)


def sentences(text: str) -> list[tuple[str, bool]]:
    """The text cut into its sentences, each with the space before it (so the pieces join
    back into the text), and whether it tells (True) or asks (it ends in a question mark):
    "I adopted a kitten named Mochi. Any tips?" tells one thing and asks another."""
    cuts = [0] + [m.start() for m in _SENTENCE.finditer(text)] + [len(text)]
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    return [(p, not p.rstrip().endswith("?")) for p in pieces]


def is_statement(text: str) -> bool:
    """A user turn that tells something (a sentence of it does not end in a question mark)."""
    return any(tells and piece.strip() for piece, tells in sentences(text))


def _statement(piece: str) -> str | None:
    """The fact a telling sentence states: without a list's bullet ("- Mum's birthday is 12
    May"), an opening that only says it is news ("Update:", "Actually,", "No,", "Sorry, I
    got that wrong:") or that says nothing ("Thanks, but", "And", "By the way,"); None
    when under three words are left."""
    said = _BULLET.sub("", piece.strip())
    while (shorter := _OPENING.sub("", _PREAMBLE.sub("", said))) != said:
        said = shorter
    said = _AFTERTHOUGHT.sub(r"\1", said[:1].upper() + said[1:])
    if rang := _RANG.match(said):  # "Karl called: he's moving in May now." -> "Karl is moving in May now."
        rest = said[rang.end():]
        said = _put(rang.group(1), rang.group(2), rang.group(3), rest) + " " + rest
    head = _HEADING.match(said)
    after = said[head.end():] if head else ""
    if label := _LABEL.match(said):  # "Book club: the March pick is ..." -> "The book club's March pick is ..."
        said = f"The {label.group(1).lower()}'s {said[label.end():]}"
    elif head and re.match(_TITLE_NAME, after):  # "Doctor: Dr. Lindqvist at ..." -> "My doctor is Dr. Lindqvist at ..."
        noun = head.group(1).lower()
        said = f"{'My' if noun.split()[-1] in KIN else 'The'} {noun} is {after}"
    elif head and after[:1].islower() and _DID_AFTER.match(after):  # "Garden: planted tomatoes ..." -> "I planted ..."
        said = "I " + after
    elif valued := _LABEL_VALUE.match(said):  # "Gym locker combination: 2719." -> "The gym locker combination is 2719."
        said = f"The {valued.group(1).lower()} is {valued.group(2)}{valued.group(3)}"
    elif _DIARY.match(said):  # "Met Priya for lunch." in a diary: I did
        said = "I " + said[0].lower() + said[1:]
    return said if len(said.split()) >= 3 else None


def _pieces(data: dict) -> list[str]:
    """The sentences an example says that tell: a note's, or those of the user's turns."""
    if "text" in data:
        return [piece for piece, tells in sentences(data["text"]) if tells]
    if "messages" in data:
        return [piece for m in data["messages"] if m["role"] == "user"
                for piece, tells in sentences(m["content"]) if tells]
    return []


def _stated(data: dict) -> list[tuple[str, str | None]]:
    """Each sentence an example says that tells (`_pieces`), with the statement it makes
    (`_statement`, a "he", "she" or "it" that opens it put as the one before named them:
    `_resolved`), or None."""
    pieces = _pieces(data)
    said = [_statement(piece) for piece in pieces]
    resolved = iter(_resolved([s for s in said if s]))
    return [(piece, next(resolved) if s else None) for piece, s in zip(pieces, said)]


def statements(data: dict) -> list[str]:
    """What an example states: the sentences of a note, or of the user's turns, that tell
    rather than ask (three words or more), each as `_stated` reads it."""
    return [s for _, s in _stated(data) if s]


# -- who "he", "she" and "it" are: the sentence before says ---------------------------

# What someone is to the asker or to others: "my wife Marta", "the plumber, Mr. Dunmore".
KIN = frozenset("wife husband partner son daughter child kid sister brother mother father mum mom dad parent "
                "grandmother grandfather grandma grandpa granny aunt uncle cousin niece nephew friend girlfriend "
                "boyfriend fiance fiancee neighbour neighbor boss manager colleague coworker tutor teacher coach "
                "dentist doctor nurse vet landlord landlady plumber electrician builder mechanic lawyer "
                "accountant therapist trainer instructor babysitter nanny roommate flatmate housemate".split())
_TITLE_NAME = r"(?:Dr|Mr|Mrs|Ms|Prof)\. [A-Z][\w'’\-]*"
_NAME_RUN = r"[A-Z][\w\-]*(?: [A-Z][\w\-]*)*"
# "My wife Marta turns 40", "The plumber, Mr. Dunmore, is coming", "Priya works ...": the
# someone a statement opens with; "Called the plumber, Mr. Dunmore.", "Met Priya for lunch":
# the someone it names past its verb.
_SOMEONE_OPENS = re.compile(rf"^(?:My|Our|The) (?:([a-z]+) )?([a-z]+)(?:,? (?:{_TITLE_NAME}|{_NAME_RUN}))?(?=[ ,.!]|$)")
_NAME_OPENS = re.compile(rf"^(?:{_TITLE_NAME}|[A-Z][a-z]+(?: [A-Z][a-z]+)?)(?= (?:is|was|has|had|can|will|[a-z]+s|[a-z]+ed)\b)")
_SOMEONE_NAMED = re.compile(rf"\b(?:the|my|our) (?:(?:old|new|best|dear|former|little|big|younger|older|elder) )?"
                            rf"(?P<kin>[a-z]+),? (?:{_TITLE_NAME}|{_NAME_RUN})\b|(?P<titled>{_TITLE_NAME})"
                            rf"|(?:\b(?:with|and|met|meet|saw|see|visited|called|told|asked)|^Met) (?P<name>{_NAME_RUN})")
# "It rained", "It's been a long week", "It was lovely": an "it" that stands for nothing; an
# "it" is read as the thing before where it does something or is somewhere ("It needs a
# new exhaust.", "It's at Kessler Motors.").
_IT_DOES = re.compile(r"^It(?:['’]s| is| was) (?:at|in|on|under|behind|near|next to|inside|outside|by)\s"
                      r"|^It (?!(?:rain|snow|seem|look|turn|feel|take|took|happen|depend|matter|occur|make|made|get|got"
                      r"|go|went|has been|had been|is|was|will|would|could|might)\w*\b)[a-z]+s\b", re.I)
_PRONOUN = re.compile(r"^(He|She|It|His|Her|We)(['’]s)?\b( ?)")
# "The book club's March pick is ... We meet at Hugo's flat.": a "we" of a group named before
_GROUP = re.compile(r"^(?:The|Our|My) (?:[a-z]+ )?(?:club|team|choir|band|group|class|committee|crew|society)\b")
_HE_THEN = re.compile(r"^(he|she)(['’]s)?\s")  # "... and she's obsessed with dinosaurs"
_CLAUSE_PRONOUN = re.compile(r"((?:,|;|,? and|,? but|,? so) )(he|she|his|her)(['’]s)?(?= [a-z])")
_APPOSED = re.compile(r",.*$")  # "The plumber, Mr. Dunmore" is "The plumber" again
_HAS = re.compile(r"^(?:been|got|gone|had)\b")  # "She's been" is "she has been"


def _someone(statement: str) -> str | None:
    """The one person a statement names, as it names them, for a "he" or "she" after it:
    the one it opens with ("My wife Marta turns 40 ..." -> "My wife Marta"), else the one
    it names ("Met Priya for lunch at the Corrow cafe." -> "Priya"; "Called the plumber,
    Mr. Dunmore." -> "the plumber, Mr. Dunmore"); None where it names none or two."""
    opens = _SOMEONE_OPENS.match(statement)
    if opens and opens.group(2) in KIN:
        return opens.group(0)
    if opens and opens.group(1) in KIN:  # "The plumber rang."
        return statement.split()[0] + " " + opens.group(1)
    if named := _NAME_OPENS.match(statement):
        return named.group(0)
    found = {m.group("titled") or m.group("name") or m.group(0) for m in _SOMEONE_NAMED.finditer(statement)
             if m.group("kin") is None or m.group("kin") in KIN}
    found = {f for f in found if not any(f != g and f in g for g in found)}  # "Mr. Dunmore" of "the plumber, Mr. Dunmore"
    return found.pop() if len(found) == 1 else None


# What follows the thing a statement opens with ("My car needs ...")
_VERBS = {"is", "are", "was", "were", "has", "have", "had", "can", "will", "won't", "can't", "does", "did", "needs"}


def _something(statement: str) -> str | None:
    """The thing a statement opens with, for an "it" after it: "My car failed its
    inspection." -> "My car" (not someone: "My wife Marta", nor someone's: "My
    neighbour's dog")."""
    opens = re.match(r"^(?:My|Our|The) ([a-z]+)(?: ([a-z]+))?(?: ([a-z]+))?", statement)
    if not opens:
        return None
    words = [w for w in opens.groups() if w]
    verb = next((i for i, w in enumerate(words) if i and (w in _VERBS or w.endswith("ed")
                                                         or (w.endswith("s") and not w.endswith("ss")))), None)
    if verb is None or words[verb - 1] in KIN:
        return None
    return statement.split()[0] + " " + " ".join(words[:verb])


def _put(who: str, pronoun: str, contracted: str | None, rest: str) -> str:
    """`who` in a pronoun's place: "her" -> "Marta's", "he's" -> "the plumber is" ("has"
    before "been")."""
    if pronoun.lower() in ("his", "her"):
        return f"{who}'s"
    if contracted:
        return f"{who} {'has' if _HAS.match(rest.lstrip()) else 'is'}"
    return who


def _resolved(said: list[str]) -> list[str]:
    """Statements in order, each "he", "she" or "it" that opens one put as the statement
    before named them (`_someone`, `_something`): "My wife Marta turns 40. She loves Thai
    food." -> "My wife Marta loves Thai food.", asked by her name and what she is; "Her
    favourite restaurant is ..." -> "My wife Marta's favourite restaurant is ..."; a "he"
    or "her" that opens a later clause too ("..., so he needs ..."); "we" where the one
    before names a group ("The book club ..."). Left as it is where the one before names
    no one, or two."""
    out: list[str] = []
    for statement in said:
        m = _PRONOUN.match(statement)
        before = out[-1] if out else None
        if m and before:
            word, contracted, space = m.groups()
            rest = statement[m.end():]
            if word == "It":
                who = _something(before) if _IT_DOES.match(statement) else None
            elif word == "We":
                who = group.group(0) if (group := _GROUP.match(before)) and not contracted else None
            else:
                who = _someone(before)
            if who and not (word in ("His", "Her") and contracted):
                who = who[0].upper() + who[1:]
                statement = _put(who, word, contracted, rest) + space + rest
                if "," in who and not statement[len(who):].startswith(","):  # "The plumber, Mr. Dunmore, is coming"
                    statement = f"{who},{statement[len(who):]}"
                if word not in ("It", "We"):  # "..., and her favourite restaurant is Baan Suan": hers too
                    short = _APPOSED.sub("", who)
                    inner = (short[0].lower() + short[1:]) if short.split()[0] in ("My", "Our", "The") else short
                    statement = _CLAUSE_PRONOUN.sub(lambda c: c.group(1) + _put(inner, c.group(2), c.group(3),
                                                                                c.string[c.end():]), statement)
        out.append(statement)
    return out


def second_person(text: str) -> str:
    """'My sister lives in Lisbon' -> 'Your sister lives in Lisbon' (the assistant's voice)."""
    def swap(m: re.Match) -> str:
        word = m.group(0)
        lower = word.lower().replace("’", "'")
        new = _PERSON.get(lower)
        if new is None or (lower == "am" and not re.search(r"\bI\s+$", m.string[:m.start()])):
            return word  # "6:30 am" is a time; only "I am" is the speaker
        return new.capitalize() if word[0].isupper() and lower not in _I else new
    text = re.sub(r"\b[A-Za-z]+(?:['’][a-z]+)?\b", swap, text)
    text = re.sub(r"\b([Yy]ou) was\b", r"\1 were", text)  # "I was born" -> "you were born"
    return text[0].upper() + text[1:] if text else text


def _spans(tokens: list[str]) -> list[tuple[int, int]]:
    """Answer spans: runs of capitalised words after the first word ("I" is none), and numbers."""
    def named(t: str) -> bool:
        return (t[0].isupper() and t.lower().replace("’", "'") not in _I) or bool(_NUMBER.search(t))

    spans, i = [], 1
    while i < len(tokens):
        t = tokens[i]
        if named(t):
            j = i + 1
            while j < len(tokens) and (named(tokens[j]) or tokens[j].lower() in ("am", "pm")
                                       or (tokens[j] in _IN_NAMES and j + 1 < len(tokens) and named(tokens[j + 1]))):
                j += 1
            # A name that opens the sentence after a determiner is its subject ("The
            # Eiffel Tower is in Rome"): "The what is in Rome?" reads badly and routes poorly.
            # So is the rest of a name that opens it ("Bram Tolliver works in Glasgow").
            opening = i == 1 and tokens[0][0].isupper() and tokens[0].lower() not in _OPENERS
            if not (i <= 2 and tokens[i - 1].lower() in _DETERMINERS) and not opening:
                spans.append((i, j))
            i = j
        else:
            i += 1
    links = [k for k, t in enumerate(tokens) if t.lower() in ("is", "are", "was", "named", "called")]
    if links and links[-1] + 1 < len(tokens) and (
            not spans  # "my favourite colour is green": the words after the last is/are/named
            or (links[-1] >= spans[-1][1] and tokens[links[-1] + 1][0].islower())):  # past the subject's
        end = len(tokens)                                   # name: "My neighbour Jonas is a locksmith"
        while end > links[-1] + 1 and not tokens[end - 1][0].isalnum():
            end -= 1
        start = links[-1] + 1 + (tokens[links[-1] + 1].lower() in _PLACE)  # "is under the mat": where?
        if start < end:
            spans.append((start, end))
    if not spans and len(tokens) > 3 and tokens[0] == "I" and _DID_AFTER.match(tokens[1] + " "):
        end = 2  # "I planted tomatoes and basil along the south fence": what I did it to
        while end < len(tokens) and tokens[end].isalpha() and tokens[end].islower() and tokens[end] not in _ALONG:
            end += 1
        if 2 < end <= 6 and end < len(tokens) and tokens[end] in _ALONG:
            spans.append((2, end))
    if not spans:  # "I'm allergic to walnuts": the last words after a preposition, up to 3
        end = len(tokens)
        while end and not tokens[end - 1][0].isalnum():
            end -= 1
        start = end
        while start > 1 and tokens[start - 1][0].isalnum() and tokens[start - 1].lower() not in _AFTER:
            start -= 1
        if start > 1 and tokens[start - 1].lower() in _AFTER and 0 < end - start <= 3:
            spans.append((start, end))
    if all(b <= 3 for _, b in spans) and (said := _OWNED_DOES.match(_join(tokens))) \
            and not _NOT_A_THING.match(said.group(2)):  # none, or only the name of what does it
        end = len(tokens) - (not tokens[-1][0].isalnum())  # "My bike needs new brakes": needs what?
        spans.append((end - len(said.group(2).split()), end))
    return spans


def _join(tokens: list[str]) -> str:
    out = ""
    for t in tokens:
        out += t if not out or out.endswith("(") or t in (",", ".", ";", ":", "!", "?", ")") else " " + t
    return out


def _clauses(statement: str) -> list[str]:
    """A statement's clauses when it joins facts of three words or more each (", and",
    ", but", ", so", ";", ":", or "and" before a subject that says something, `_AND_NOUN`),
    else the statement itself."""
    def apart(clause: str) -> list[str]:  # "...and my teacher is called Sunniva"
        parts = _AND_NOUN.split(clause, maxsplit=1)
        if len(parts) == 2 and all(map(_says, parts)):
            return parts
        parts = _SPLICE.split(clause, maxsplit=1)  # "The plumber can't make Friday, the plumber is coming on Monday"
        if len(parts) == 2 and _says(parts[1]):
            return parts
        parts = _INTENT.split(clause, maxsplit=1)  # "My passport expires in October, I need to renew it"
        return parts if len(parts) == 2 else [clause]

    clauses = [part for clause in _CLAUSE.split(statement.strip().rstrip(".!;")) for part in apart(clause)]
    if len(clauses) > 1 and all(len(c.split()) >= 3 for c in clauses):
        for i in range(1, len(clauses)):  # "My yoga class is on Tuesdays and my teacher is ...": the yoga teacher
            if (lesson := _LESSON.match(clauses[i - 1])) and (role := _ROLE.match(clauses[i])):
                clauses[i] = f"{role.group(1)} {lesson.group(1)} {clauses[i][len(role.group(1)) + 1:]}"
        return [c[0].upper() + c[1:] for c in clauses]
    return [statement]


def questions_about(statement: str) -> list[tuple[str, str, str]]:
    """(question, answer, key) triples written by rule about one statement.

    Each answer span (a name, a number, a date, else what follows the last
    'is', else the last words after a preposition) becomes a question that asks
    for it in the statement's own words: 'My sister lives in Lisbon.' -> 'My
    sister lives where?', answered 'Your sister lives in Lisbon.' The echo form
    keeps the statement's words, which is what the routing keys and a person's
    later question share. Where someone moved or has lived is asked as where they
    live, in the present, as a person asks it: "My sister Ilse moved to Lisbon last
    spring." -> "My sister Ilse lives where?" (`_lives`). Clauses joined by ', and',
    ', but', ';' or ':' (or 'and my ...') are asked one at a time, each answered by
    its own clause; so is a first clause that says something before 'and I' ('and she'),
    and where the first names someone, an 'and he' or 'and she' clause after it, as said
    of them ('..., and she's obsessed with dinosaurs' -> 'My daughter Freya is obsessed
    with what?').
    """
    if len(statement) > MAX_STATEMENT_CHARS:
        return []
    clauses = _clauses(statement)
    if len(clauses) > 1:  # one fact each: asked apart
        return [q for c in clauses for q in questions_about(c)][-MAX_QUESTIONS:]
    body = statement.strip().rstrip(".!;")
    if len((cut := _THEN.sub("", body)).split()) >= 3:
        body = cut
    first, *then = _AND_PRONOUN.split(body, maxsplit=1)
    if then and _says(first) and (asked := questions_about(first)):
        if (he := _HE_THEN.match(then[0])) and (who := _someone(first)):
            # "My daughter Freya is turning 9 and she's obsessed with dinosaurs": the
            # second clause is about her as much as the first, and asked as its own
            rest, keys = then[0][he.end():], {key for _, _, key in asked}
            said = questions_about(_put(who, he.group(1), he.group(2), rest) + " " + rest.lstrip())
            return asked + [q for q in said if q[2] not in keys]
        # "My dentist is what?", not "My dentist is what and I see him?"; then the rest
        # asked in the whole statement's words ("... and I see him when?").
        keys = {key for _, _, key in asked}
        return (asked + [q for q in _asked(body) if q[2] not in keys])[-MAX_QUESTIONS:]
    named = _APPOSITION.match(body)
    if named:  # "My landlord, Mr. Achterberg, lives upstairs": who the landlord is, then the rest
        who, name, rest = named.groups()
        return (questions_about(f"{who} is {name}") + questions_about(f"{who} {rest}"))[-MAX_QUESTIONS:]
    named = _APPOSITION_ENDS.match(body)
    if named:  # "I called the plumber, Mr. Dunmore": who the plumber is, then the rest
        rest, who, name = named.groups()
        others = [q for q in _asked(f"{rest}{who}") if q[2] != who]  # not "I called what?": the plumber
        return (questions_about(f"{who[0].upper()}{who[1:]} is {name}") + others)[-MAX_QUESTIONS:]
    return _asked(body)


def _asked(body: str) -> list[tuple[str, str, str]]:
    """`questions_about` one clause (`body`, without its full stop): a question for each
    answer span, in the clause's own words; a pet's name as what it is called ("I got back
    from the vet with our dog Pip." -> "My dog is called what?")."""
    def first(question: str, answer: str, name: str) -> list[tuple[str, str, str]]:
        asked = [q for q in _spanned(body) if q[2] != name]  # the name is asked so, not by its span
        return [(question, answer, name)] + asked[-(MAX_QUESTIONS - 1):]

    if who := _WHO_DOES.match(body):  # "Mrs. Okoro has our spare key." -> "Who has our spare key?"
        return first(f"Who {who.group(2)}?", second_person(body) + ".", who.group(1))
    pet = _PET_NAMED.search(body)
    if pet and not _NAMED_SO.search(body[:pet.start()]):
        noun, name = pet.groups()
        return first(f"My {noun} is called what?", f"Your {noun} is called {name}.", name)
    return _spanned(body)


def _spanned(body: str) -> list[tuple[str, str, str]]:
    """`_asked` by the clause's answer spans (`_spans`)."""
    tokens = _TOKEN.findall(body)
    out = []
    for a, b in _spans(tokens)[-MAX_QUESTIONS:]:
        key = _join(tokens[a:b])
        before, after = tokens[:a], tokens[b:]
        if _WHEN.match(key) or (_ORDINAL.match(key) and [w.lower() for w in before[-2:]] == ["on", "the"]):
            wh = "when"
            if before and before[-1].lower() in ("last", "next", "this", "every", "the"):  # "last June": when?
                before = before[:-1]
            if before and before[-1].lower() in ("on", "in", "at", "by"):  # "since when" keeps its since
                before = before[:-1]
        elif key[0].islower() and not _NUMBER.search(key):  # a plain value: "allergic to what?"
            wh = "what"  # ...or a place: "the spare key is under the blue flowerpot" -> "is where?"
            lead = key.split()
            if lead[-1].lower() in _COLOURS and "colour" not in (w.lower() for w in before):  # "painted dark
                lead = lead[:-1]                                                  # green": "painted what colour?"
                while lead and lead[-1].lower() in _SHADES:
                    lead = lead[:-1]
                wh, before = "what colour", before + lead
            if before[-1:] and before[-1].lower() in _PLACE - {"to", "from", "into"} and \
                    key.split()[0].lower() in _DETERMINERS:
                wh, before = "where", before[:-1]
        elif before and before[-1].lower() in _AT_TIME and _HOUR.match(key):  # "opens at 7": when?
            wh, before = "when", before[:-1]
        elif before and (before[-1].lower() in _PLACE or (before[-1].lower() == "on" and key.split()[-1] in _ON_PLACE)):
            # "sails from Saltmere": from where (whence is not whither); "is on Pellington Street": where
            wh, before = ("from where", before[:-1]) if before[-1].lower() == "from" else ("where", before[:-1])
            if after and after[0].lower() in _PLACE_NOUNS:  # "from Corbridge station": from where?
                after = after[1:]
        elif _NUMBER.search(key) and [w.lower() for w in after[1:2]] == ["old"]:  # "is 7 years old": how old?
            wh, after = "how old", after[2:]
        elif _NUMBER.search(key) and not before[-1:] in (["is"], ["are"], ["was"]):
            wh = "how many" if key.replace(",", "").isdigit() else "what"
        else:  # a name: the thing, not the words that describe it ("I drive an old blue Fiat.": "I drive what?")
            wh, before = "what", _undescribed(before)
        if wh != "when":  # when it happened is not what is asked: "Since 2020 I've worked where?" -> "I've worked where?"
            before, after = _undated(before, then=key), _undated(after)
        words = before + [wh] + after
        if wh == "when" and all(w.lower() in _INTO_TIME for w in before):  # the time opened it:
            # "On Sundays I sleep in." -> "I sleep in when?", "Since 2020 I've worked at Fenwick since when?"
            rest = after[next((i for i, w in enumerate(after) if w[0].isalnum()), len(after)):]
            words = rest + [w.lower() for w in before] + [wh] if len(rest) >= 2 else words
        while words and not words[-1][0].isalnum() and words[-1] != ")":
            words = words[:-1]
        question = _join(words)
        question = (wh == "where" and _lives(before)) or question[0].upper() + question[1:] + "?"
        out.append((question, second_person(body) + ".", key))
    return out


def _undescribed(before: list[str]) -> list[str]:
    """The words before a value without the article and the (at most two) words that
    describe it: "I drive an old blue" -> "I drive". What is asked for is the thing, and
    a person asks "What car do I drive?", not "I drive an old blue what?". A thing named
    keeps its words: "I adopted a kitten named what?"."""
    for i in range(len(before) - 1, max(1, len(before) - 3) - 1, -1):
        if before[i].lower() in _ARTICLES:
            between = [w.lower() for w in before[i + 1:]]
            if all(w.isalpha() and w not in COPULA and w not in _AFTER and w not in _NAMING for w in between):
                return before[:i]
            break
    return before


def _undated(words: list[str], then: str = "") -> list[str]:
    """The words without the dates and the words of time in them, with what leads into
    them: "Since 2020 I've worked", "married in Tallinn last June", "flying to Oslo on
    March 3" lose "Since 2020", "last June", "on March 3". A person asks "Where do I
    work?", not "Since 2020 I've worked where?", and the date keyed the question as much
    as the place did. `then`: the word that follows them ("year" before "5" is a name)."""
    out, i = [], 0
    while i < len(words):
        end = next((j for j in range(min(len(words), i + 4), i, -1) if _WHEN.match(_join(words[i:j]))
                    and not (j == i + 1 and words[i] in ("may", "march"))), None)  # "I may go": a verb
        following = words[i + 1] if i + 1 < len(words) else then
        numbered = following[:1].isdigit()  # "year 5": a name, not a time
        if end is None and words[i].lower() in _WHILE and not numbered:
            end = i + 1
        if end is None:
            out.append(words[i])
            i += 1
            continue
        while out and out[-1].lower() in _INTO_TIME:
            out.pop()
        i = end
    return out


def is_when(word: str) -> bool:
    """Is the word a date or a time ("2019", "June", "Sundays", "6:30")?"""
    return bool(_WHEN.match(word))


def stem(word: str) -> str:
    """A crude stem, so that "lives" meets "live", "named" "name" and "married" "marry".
    Applied to both sides when they are compared (stored words stay as they were taught)."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) >= len(suffix) + 3 and word.endswith(suffix):
            word = word[:-len(suffix)]
            break
    if len(word) > 3 and word[-1] in "ey":  # "name" meets "named", "marry" "married"
        word = word[:-1] + ("i" if word[-1] == "y" else "")
    return word


def _named(text: str) -> set[str]:
    """The names and numbers a text holds (answer spans), lower case, possessives cut."""
    tokens = _TOKEN.findall(text.strip().rstrip(".!?;"))
    return {re.sub(r"['’]s$", "", _join(tokens[a:b])).lower() for a, b in _spans(tokens)} - {""}


def _values(answer: str) -> set[str]:
    """The values an answer gives: its names and numbers, and the whole answer when it is
    short ("Biscuit.", "7", "New York City": a value that opens the answer is no span)."""
    tokens = _TOKEN.findall(answer.strip().rstrip(".!?;"))
    whole = {re.sub(r"['’]s$", "", _join(tokens)).lower()} if sum(t[0].isalnum() for t in tokens) <= SHORT else set()
    return (_named(answer) | whole) - {""}


def _holds(text: str, value: str) -> bool:
    """Does `text` give `value` (a whole word or words, any case)?"""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text.lower()) is not None


def _subjects(question: str) -> list[frozenset[str]]:
    """The names a question is about, each the words of one name ("What did Orla name her
    cat?" -> [{"orla"}]; "Where does Nell Voss live?" -> [{"nell", "voss"}])."""
    names, name = [], []
    for t in _TOKEN.findall(question)[1:] + ["."]:
        word = re.sub(r"['’]s?$", "", t)
        if t[0].isupper() and t.lower() not in _PERSON and word:
            name.append(word.lower())
            if word == t:
                continue  # a possessive ends the name: "Nell Voss's dog"
        if name:
            names.append(frozenset(name))
            name = []
    return names


def _same_one(a: list[frozenset[str]], b: list[frozenset[str]]) -> bool:
    """Do two questions name the same one? A name meets itself and its shorter forms ("Orla"
    is "Orla Vantrees"), never another with the same first name ("Nell Voss", "Nell Crane")."""
    return any(x <= y or y <= x for x in a for y in b)


def _asks(question: str) -> set[str]:
    """What a question asks about, past its names: its other words, stemmed ("coaches": "coach")."""
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", question) if w[0].islower()}
    words = {stem(w) for w in words - _ASKING - _PERSON.keys() if len(w) > 2}
    return words - {stem(w) for w in _ASKING}


def same_fact(old: dict, new: dict, other: dict) -> bool:
    """Does `other` state the fact that `new` changed in `old`? `old` and `new` answer
    the same question differently; `other` (a question and answer taught beside `old`)
    is the same fact when its answer holds a value that `old` gave and `new` no longer
    gives ("Biscuit"), and its question names what the old question named ("Orla")
    and asks about the same thing ("cat"): "What did Orla name her cat?" -> "She
    named her cat Biscuit." goes with "What is the name of Orla's cat?" -> "Orla's
    cat is called Biscuit." (or just "Biscuit.") once that says Pepper; "Who is
    Orla's vet?" does not. Questions that name no one are the same fact when both
    are in the first person and share two words of what they ask: "Which city does
    my mother live in?" goes with "Where does my mother live?", "Where does my
    mother work?" does not; or when both ask who the same one of theirs is ("What
    is the name of my manager?" with "Who is my manager at work?")."""
    if to_chat(other) is None:  # a note may state other facts too: it is kept
        return False
    dropped = {v for v in _values(answer_of(old)) if not _holds(answer_of(new), v)}
    q_old, q_other = question_of(old), question_of(other)
    asked = _asks(q_old) & _asks(q_other)
    if _same_one(_subjects(q_old), _subjects(q_other)):
        about = bool(asked)
    else:  # no name: both about the asker's own thing, and two of their words alike ("my mother", "live";
        # asking a name counts as one: "What is my dog's name?", "What did I call my dog?"), or both
        # asking who the same one of theirs is ("Who is my manager at work?", "What is my manager's name?")
        naming = _naming(q_old) and _naming(q_other)
        owned = _owned(q_old)
        who = owned is not None and owned == _owned(q_other) and _who(q_old) and _who(q_other)
        about = _mine(q_old) and _mine(q_other) and (len(asked) + naming >= 2 or who)
    return bool(dropped) and about and any(_holds(answer_of(other), v) for v in dropped)


def _naming(question: str) -> bool:
    """Does the question ask for a name?"""
    return any(w.lower() in ("name", "named", "called", "call") for w in re.findall(r"[A-Za-z]+", question))


def _who(question: str) -> bool:
    """Does the question ask who someone is, or their name?"""
    return _naming(question) or any(w.lower() in ("who", "whom") for w in re.findall(r"[A-Za-z]+", question))


def _owned(question: str) -> str | None:
    """What of the asker's a question is about: the word after "my" (or "our"), through
    possessives, a name asked for aside: "my dog's vet" -> "vet", "my dog's name" -> "dog"."""
    words = re.findall(r"[A-Za-z]+(?:['’]s)?", question)
    lower = [w.lower().replace("’", "'") for w in words]
    for i, w in enumerate(lower[:-1]):
        if w in ("my", "our"):
            j = i + 1
            while lower[j].endswith("'s") and j + 1 < len(lower) and lower[j + 1] not in ("name", "names"):
                j += 1
            return stem(lower[j].removesuffix("'s"))
    return None


def _mine(question: str) -> bool:
    """Is the question in the first person (about the asker's own things)?"""
    return any(w.lower().replace("’", "'") in _PERSON.keys() - {"am"}
               for w in re.findall(r"[A-Za-z]+(?:['’][a-z]+)?", question))


# -- statements said again: "Actually, my sister lives in Madrid now." -------------------

# Words that mark a statement as news about something said before; in the frame of a
# question they say nothing about what it asks.
_NEWS = {"now", "actually", "anymore", "instead", "nowadays", "currently", "new", "switched", "changed",
         "moved", "moving", "relocated", "relocating", "update", "updated", "correction", "wrong", "sorry", "longer"}
_MINE = {"your": "my", "yours": "mine", "yourself": "myself", "you're": "I'm", "you've": "I've", "you'll": "I'll",
         "you'd": "I'd"}  # the assistant's words for the asker's, as the asker says them
COPULA = {"is", "are", "was", "were"}  # "My dentist is X": one X at a time
_ARTICLES = {"a", "an", "the"}
_NAMING = {"named", "called", "nicknamed", "titled"}  # "a kitten named Mochi": the name of the kitten
# Someone who moved somewhere lives there now: "My sister moved to Madrid." says again
# where "My sister lives in Lisbon." said she lives ("moved back" as well).
_MOVED = {"move", "moved", "moves", "moving", "relocate", "relocated", "relocates", "relocating"}
# After the value, words that say when (with the dates): "I moved to Madrid last month."
_TIME = {"since", "until", "ago", "last", "next", "this", "today", "yesterday", "recently", "lately", "week",
         "weeks", "month", "months", "year", "years", "weekend", "summer", "winter", "spring", "autumn"}
# The words that lead into a date or a word of time ("since 2019", "in March", "at the
# weekend"), and the words of time that say when by themselves ("last week", "two years ago").
_DAYTIME = {"morning", "afternoon", "evening", "night", "mornings", "afternoons", "evenings", "nights"}
_INTO_TIME = {"since", "until", "in", "on", "at", "by", "during", "last", "next", "this", "every", "the", "a",
              "few", "two", "three", "several", "some"}
_WHILE = _TIME - _INTO_TIME | {"tomorrow", "tonight", "weekends"}
_LIVED = _MOVED | {"lived", "living"}
_HAVE_BE = COPULA | {"have", "has", "had", "am", "been", "just", "recently", "finally", "also"}
# What moves without living anywhere: "My company moved to Berlin." asks where it moved.
_NOT_LIVING = {"company", "firm", "office", "offices", "business", "shop", "store", "school", "club", "team",
               "restaurant", "cafe", "café", "bakery", "clinic", "practice", "lab", "studio", "gym", "factory",
               "headquarters", "meeting", "class", "lesson", "lessons", "appointment", "party", "wedding"}
_PLANS = {"to", "will", "would", "might", "may", "could", "should", "going", "want", "wants", "planning", "hope",
          "if", "when", "not", "never", "no"}


def _lives(before: list[str]) -> str | None:
    """Where someone lives, asked in the present, for the words before a place that say
    they moved or have lived there ("My sister Ilse moved", "I've lived", "We are moving
    back"): "My sister Ilse lives where?", "I live where?". None for other verbs, plans
    ("I want to move"), negations (they say nothing of where someone lives now), and
    things that move ("The company moved", "My piano lesson moved")."""
    words = before[:-1] if before[-1:] and before[-1].lower() == "back" else before
    if len(words) < 2 or words[-1].lower() not in _LIVED or any(
            w.lower() in _PLANS or w.lower().endswith("n't") for w in words):
        return None
    subject = words[:-1]
    while subject and subject[-1].lower() in _HAVE_BE:
        subject = subject[:-1]
    if not subject or subject[-1].lower() in _NOT_LIVING or (
            subject[0].lower() in _ARTICLES | {"this", "that", "its"} and not any(w[0].isupper() for w in subject[1:])):
        return None  # "The company moved to Berlin.": things move, people live somewhere
    helpers = {w.lower() for w in words[len(subject):-1]}
    subject[-1] = re.sub(r"['’](?:ve|m|re|s|d)$", "", subject[-1])
    last = subject[-1]
    plural = last.lower() in ("i", "we", "you", "they") or "and" in subject or bool(helpers & {"have", "are", "were"}) \
        or (not helpers & {"has", "is", "was"} and last.endswith("s") and not last.endswith("ss")
            and (last.islower() or subject[0].lower() == "the"))  # "my parents", "the Jansens"
    question = _join(subject + ["live" if plural else "lives", "where"])
    return question[0].upper() + question[1:] + "?"


_CONTRACTED = {"i've": ["i", "have"], "i'm": ["i", "am"], "we've": ["we", "have"], "we're": ["we", "are"],
               "i'd": ["i", "had"], "we'd": ["we", "had"]}
# Negations whose verb is not the word before "n't" (the rest drop it: "don't" -> "do");
# the gate reads contractions with the same table.
NEGATIONS = {"can't": "can", "won't": "will", "shan't": "shall", "ain't": "is", "cannot": "can"}
_SELF = re.compile(r"\bI\b|\bI['’]|\b[Mm](?:e|y|ine|yself)\b")  # an answer's speaker: the assistant
_ASKED = ("what", "where", "when", "how")  # the words questions_about puts in place of a value


def _plain(words: list[str], slot: int) -> tuple[list[str], bool]:
    """A question's words in one tense and one verb for living somewhere, and whether it
    says the opposite: "I've lived where since 2019?", "I'm moving where?" and "I live
    where now?" all ask {i, live, where}, and "I don't live where anymore?" asks it
    negated: contractions opened, a negation ("not", "n't", "never", "no longer") and the
    auxiliary before another verb ("have lived", "am moving", "don't live") left out,
    moving somewhere read as living there, and the words after the value that say when
    left out."""
    asked, negated = words[slot], False
    opened = []
    for i, w in enumerate(words[:slot] + ["?"] + words[slot + 1:]):
        if w in ("not", "never") or (w == "no" and words[i + 1:i + 2] == ["longer"]):
            negated = True
        elif w.endswith("n't") or w in NEGATIONS:
            negated = True
            opened.append(NEGATIONS.get(w, w[:-3]))
        else:
            opened += _CONTRACTED.get(w, [w]) if i < slot else [w]
    slot = opened.index("?")
    out = []
    for i, w in enumerate(opened):
        after = opened[i + 1] if i + 1 < len(opened) else "?"
        if i < slot and after != "?" and ((w in ("have", "has", "had") and after not in _DETERMINERS)
                                          or w in ("do", "does", "did")
                                          or (w in ("am", "is", "are", "was", "were") and after.endswith("ing"))):
            continue  # the auxiliary of a verb ("have lived", "don't live"), not the verb ("have a dog")
        if w == "back" and out and out[-1] == "lives":
            continue
        if i > slot and (w in _TIME or (w in _AFTER and (is_when(after) or after in _TIME))):  # "since 2019", "in March"
            continue
        out.append("lives" if w in _MOVED and after in ("?", "to", "back") else asked if w == "?" else w)
    return out, negated


class _Frame(NamedTuple):
    words: frozenset[str]  # what it asks, past its value
    single: bool           # there is one value of it: it asks what something is
    negated: bool          # it says the opposite ("I don't live in Lisbon anymore.")


def _frame(question: str) -> _Frame | None:
    """What a written question asks, past its value (`_Frame`); None where it asks who or
    what the statement is about ("My sister what lives in Oslo?": two more words say what
    it does): two sisters may live in Oslo, one sister lives in one city. Its words are
    lower case and stemmed, in one tense (`_plain`), without dates, the words of news
    (_NEWS), and an article with the words that describe the value (`_undescribed`: "I
    drive an old blue what?", were it written so, and "Now I drive what?" are both {i,
    driv, what})."""
    tokens = [t for t in _TOKEN.findall(question) if t[0].isalnum()]
    words = [t.lower().replace("’", "'") for t in tokens]
    slot = next((i for i, w in enumerate(words) if w in _ASKED), None)
    if slot is None:
        return None
    # past the value, what it is for says nothing of what is asked ("The plumber is coming
    # when morning to fix the boiler?" asks what "... coming when instead?" does), nor does
    # a time of day
    purpose = next((i for i in range(slot + 1, len(tokens) - 1) if words[i] == "to" and tokens[i + 1].islower()
                    and words[i + 1] not in _DETERMINERS and words[i + 1] not in _PLACE_NOUNS), len(words))
    words = words[:slot + 1] + [w for w in words[slot + 1:purpose] if w not in _DAYTIME]
    if sum(w not in _NEWS and w not in _TIME and not is_when(w) for w in words[slot + 1:]) >= 2:
        return None
    words, negated = _plain(words, slot)
    slot = next(i for i, w in enumerate(words) if w in _ASKED)
    words = _undescribed(words[:slot]) + words[slot:]
    return _Frame(frozenset(stem(w) for w in words if w not in _NEWS and not is_when(w)),
                  bool(COPULA & set(words)), negated)


class _Fact(NamedTuple):
    value: str      # lower case, a possessive cut
    single: bool    # there is one value of it (_frame)
    negated: bool   # it says the value is not so (_frame)
    clause: str     # the clause of the statement that says it
    question: str   # as questions_about writes it
    answer: str


@lru_cache(maxsize=4096)  # a lineage's statements are read again for each batch that states something
def _facts(statement: str) -> dict[frozenset[str], _Fact]:
    """frame -> fact for each question written about each clause of a statement that asks
    for a value of what it is about (`_frame`)."""
    out = {}
    for clause in _clauses(statement):
        for q, a, value in questions_about(clause):
            framed = _frame(q)
            if framed:
                out[framed.words] = _Fact(re.sub(r"['’]s$", "", value).lower(), framed.single, framed.negated,
                                          clause, q, a)
    return out


# "Miso's vaccinations got moved to Wednesday at 5.": a new time for what was said before
_RESCHEDULED = re.compile(r"^(.+?) (?:(?:has |have |had )?(?:got|been|was|were|is|are) )?(?:moved|pushed|put off"
                          r"|postponed|rescheduled|changed|brought forward|pushed back) (?:to|until|till) ", re.I)


def _moved_to(was: str, fact: _Fact, news: list) -> tuple[str, _Fact] | None:
    """A later statement that moves what `was` said was when, to another time: its words
    for the thing ("The dentist appointment") are all `was`'s ("My dentist appointment is
    on Monday at 9."), and it says when. Not where the clause of `was` says more than when
    ("Our cat Miso has her vaccinations on Tuesday." also says her name), which would
    leave with it."""
    def timed(f: _Fact) -> bool:
        return bool(re.search(r"\bwhen\b", f.question))

    def words(text: str) -> set[str]:
        return {stem(re.sub(r"['’]s?$", "", w.lower())) for w in _TOKEN.findall(text) if w[0].isalnum()} \
            - _DETERMINERS

    if not timed(fact) or not all(timed(f) for f in _facts(was).values() if f.clause == fact.clause):
        return None  # the clause leaves: only where it says nothing but when ("Our cat Miso ..." names her)
    said_before = words(was)
    for said, _, facts in news:
        moved = _RESCHEDULED.match(said)
        thing = words(moved.group(1)) if moved else set()
        if thing and thing <= said_before:
            when = next((f for f in facts.values() if timed(f) and f.value != fact.value), None)
            if when:
                return said, when
    return None


class Restated(NamedTuple):
    """A statement said again with another value (`restated`)."""
    statement: str  # the earlier statement...
    clause: str     # ...the clause of it said again (the statement itself when it is one clause)
    now: str        # the later statement
    question: str   # the question written about the earlier one...
    answer: str     # ...answered as the later one answers it
    taken_back: bool = False  # the later one says it is not so ("I don't live in Lisbon anymore.")


def first_person(text: str) -> str:
    """'Your dentist is Dr. Okonkwo.' -> 'My dentist is Dr. Okonkwo.': an answer as the asker
    would have said it ("you" is "I" where it opens a sentence or a clause, else "me")."""
    text = re.sub(r"\b[Yy]ou (are|were)\b", lambda m: "I am" if m.group(1) == "are" else "I was", text)

    def swap(m: re.Match) -> str:
        word = m.group(0)
        lower = word.lower().replace("’", "'")
        if lower == "you":
            before = m.string[:m.start()].rstrip()
            opens = not before or before[-1] in ".,;:!?" or before.split()[-1].lower() in ("and", "but", "so", "that")
            return "I" if opens else "me"
        new = _MINE.get(lower)
        return word if new is None else new[0].upper() + new[1:] if word[0].isupper() else new
    return re.sub(r"\b[A-Za-z]+(?:['’][a-z]+)?\b", swap, text)


def _answered(data: dict) -> bool:
    """Is the example a question and its answer (it states nothing of its own)?"""
    chat = to_chat(data)
    return bool(chat) and chat[-1]["role"] == "assistant" and not statements(data)


@lru_cache(maxsize=16384)  # the store reads each example of the lineage against each of a batch
def _told(blob: str) -> tuple[bool, tuple[tuple[str, bool], ...]]:
    """Whether an example (as JSON) is a question and its answer (`_answered`), and what it
    says, each statement with whether it says it is news: its statements, or a
    question-and-answer's answer in the asker's words."""
    data = json.loads(blob)
    answered = _answered(data)
    # an answer's sentences in the asker's words, all but those where the assistant speaks
    # of itself ("I live in your computer.")
    told = [(piece, _statement(piece)) for piece in (first_person(piece) for piece, tells in sentences(answer_of(data))
                                                     if tells and not _SELF.search(piece))] if answered else _stated(data)
    out = []
    for piece, said in told:
        if said:
            out.append((said, bool(_NEWS & {w.lower() for w in _TOKEN.findall(piece)}
                                   or _PREAMBLE.match(_OPENING.sub("", _BULLET.sub("", piece.strip()))))))
    return answered, tuple(out)


def _contradicts(was: _Fact, now: _Fact, news: bool) -> bool:
    """Does `now` (of the same frame, said later, `news` when it says so) take back `was`?
    The same value said the other way ("I don't live in Lisbon anymore." after "I live in
    Lisbon."), or another value of what there is one of, or said as news; what is not
    so adds to what is not ("I don't eat pork." and "I don't eat beef.")."""
    if was.negated != now.negated:
        return now.value == was.value
    return not was.negated and now.value != was.value and (news or was.single)


def restated(old: dict, new: dict) -> list[Restated]:
    """What of `old` `new` says again with another value. Both must ask the same thing of
    it (the same `_frame`): "My sister Ilse lives in Lisbon." is said again by "Actually,
    my sister Ilse lives in Madrid now." And the new one must say that it is news ("now",
    "actually", "switched", an "Update:") or say what something is ("My dentist is Dr.
    Haverkamp."): "I speak Spanish." adds to "I speak French."; "I speak Spanish now."
    replaces it. The same value said the other way takes it back too ("I don't live in
    Lisbon anymore."), and a time "moved to" another moves it, where the earlier clause
    says nothing else (`_moved_to`: "The dentist appointment was moved to Friday."). A
    question and answer says what its answer says in the asker's words ("Who is my
    dentist?" -> "Your dentist is Dr. Okonkwo." says "My dentist is Dr. Okonkwo."), and
    is said again as a whole: its own question is asked anew. Two questions and answers
    are left to `question_key` and `same_fact`."""
    (qa_old, told_old), (qa_new, told_new) = (_told(json.dumps(d, sort_keys=True)) for d in (old, new))
    if qa_old and qa_new:
        return []
    news = [(said, marked, _facts(said)) for said, marked in told_new]
    if not news:
        return []
    asked = question_of(old) if qa_old else None
    out = []
    for was, _ in told_old:
        for frame, fact in _facts(was).items():
            now = next(((said, facts[frame]) for said, marked, facts in news
                        if frame in facts and _contradicts(fact, facts[frame], marked)), None) \
                or _moved_to(was, fact, news)
            if now and (was, fact.clause) not in [(r.statement, r.clause) for r in out]:
                out.append(Restated(was, fact.clause, now[0], asked or fact.question, now[1].answer,
                                    now[1].negated and not fact.negated))
    return out


def without_statements(data: dict, gone: set[tuple[str, str]]) -> dict | None:
    """The example without what it states that is `gone`, (statement, clause) pairs as
    `restated` gives them: a sentence leaves, or the clause of it ("I'm learning
    Portuguese, and my teacher is Marta." keeps "I'm learning Portuguese."). A user turn
    left empty leaves with the assistant's reply to it; None when nothing is left."""
    if _answered(data):  # its answer is what was said again
        return None

    stated = iter(_stated(data))  # the telling sentences in the order keep meets them

    def keep(text: str) -> str:
        out = ""
        for piece, tells in sentences(text):
            said = next(stated)[1] if tells else None
            lost = {c for w, c in gone if w == said}
            if lost:
                rest = [c for c in _clauses(said) if c not in lost]
                piece = (piece[:len(piece) - len(piece.lstrip())] + ". ".join(c.rstrip(".!;") for c in rest) + "."
                         if rest else "")
            out += piece
        return out.strip()

    if "text" in data:
        text = keep(data["text"])
        return {**data, "text": text} if text else None
    if "messages" not in data:
        return data
    messages, dropped = [], False
    for m in data["messages"]:
        if m["role"] == "user":
            content = keep(m["content"])
            dropped = not content
            if content:
                messages.append({**m, "content": content})
        elif not (m["role"] == "assistant" and dropped):
            messages.append(m)
    return {**data, "messages": messages} if any(m["role"] == "user" for m in messages) else None


def derived(data: dict) -> list[dict]:
    """The question-and-answer examples written about an example's statements (its tags kept)."""
    tags = {"tags": data["tags"]} if "tags" in data else {}
    out = []
    for statement in statements(data):
        out += [{"input": q, "output": a, **tags} for q, a, _ in questions_about(statement)]
        if len(out) >= MAX_WRITTEN:
            return out[:MAX_WRITTEN]
    return out


def expand(batch: list[dict]) -> list[dict]:
    """The batch as trained: its examples, then the questions written about their
    statements, each once and none that repeats a taught example."""
    return [d for d, _ in expand_with_sources(batch)]


def expand_with_sources(batch: list[dict]) -> list[tuple[dict, str]]:
    """`expand`, each example with the content hash of the example of the batch it
    comes from (its own, or its statement's for a written question): what a routing
    key remembers, so that forgetting the example finds its keys under any later
    rules for writing questions."""
    seen = {json.dumps(d, sort_keys=True) for d in batch}
    out = [(d, content_hash(d)) for d in batch]
    for data, source in list(out):
        for d in derived(data):
            blob = json.dumps(d, sort_keys=True)
            if blob not in seen:
                seen.add(blob)
                out.append((d, source))
    return out


# -- taught questions about other things (training.null_space_names) -----------------

# Well-known names the base model has read about, put in place of a taught question's
# own (`about_others`). None of them is named by the benchmark's general questions
# (bench/data/locality.jsonl), which stay unseen.
WELL_KNOWN = ("Peru", "Kenya", "Norway", "Portugal", "Charles Darwin", "Marie Curie", "Isaac Newton", "Mozart",
              "Vietnam", "Chile", "Napoleon", "Picasso")
MAX_OTHERS = 64  # questions about well-known names measured per batch at most
_TITLE = r"(?:Dr|Mrs?|Ms|Prof|St)\.\s"  # "Dr. Okonkwo" is one name, not the run "Dr"
_NAME = re.compile(r"(?<=\s)(?:" + _TITLE + r")?(?:[A-Z][\w\-]*(?:['\u2019]s)?\s?)+")


def about_others(questions: list[str], k: int) -> list[str]:
    """Each question that names something (a run of capitalised words after its first
    word) asked about k well-known names instead: "Which city is the capital of
    Varkesh?" -> "Which city is the capital of Peru?", "... of Kenya?". Measured with
    general text, these keep a batch's change out of what the question's template
    uses on things the base model knows, so that "Varkesh's capital is Glassfen" does
    not teach "a capital is Glassfen" with it (the leak of the adapter alone)."""
    out: list[str] = []
    for question in questions:
        match = next((m for m in _NAME.finditer(question) if m.group(0).strip() not in ("I", "I'm", "I\u2019m")), None)
        if match is None:
            continue
        run, start = match.group(0), len(out)
        possessive = "'s" if re.search(r"['\u2019]s\s?$", run) else ""
        for i in range(k):
            name = WELL_KNOWN[(start + i) % len(WELL_KNOWN)]
            out.append(question[:match.start()] + name + possessive + (" " if run.endswith(" ") else "")
                       + question[match.end():])
        if len(out) >= MAX_OTHERS:
            break
    return out[:MAX_OTHERS]
