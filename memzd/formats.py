"""Exact reply formats, learned from examples of them.

Some of what people teach is a format of the words they give: "Ticket for:
printer jam" -> "[TICKET] PRINTER JAM", "Slug: About Us" -> "about-us". The
adapter learns the shape, but a small base model cannot always copy new words
into it (the bundled 135M model writes "[TICKET] NOISY FAN" as "[TICKET]
NUHARN"). Where every example of a format is the same string program of its
input's words, memz keeps that program and answers new inputs with it, exactly:

    input  = PREFIX + words + SUFFIX                ("Ticket for: " + "printer jam")
    output = BEFORE + SEP.join(CASE(words)) + AFTER  ("[TICKET] " + "PRINTER JAM")

CASE is one of CASES, SEP what stands between the words. A format is found as
spreadsheets find one from examples (FlashFill, much reduced): the inputs'
common words are the prefix and suffix, and the first case and separator that
give every example's output back, with the same text around it, is the
program. One example that does not fit means there is no format: the adapter
answers as before. What is not a format of the words (a date reordered,
initials) is left to the adapter.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

# How the words are written: the first of these that gives every example back is taken,
# so inputs already in the output's case keep "as written".
CASES = {
    "as written": lambda ws: ws,
    "lower case": lambda ws: [w.lower() for w in ws],
    "upper case": lambda ws: [w.upper() for w in ws],
    "capitalised": lambda ws: [w[:1].upper() + w[1:] for w in ws],
    "sentence case": lambda ws: [ws[0][:1].upper() + ws[0][1:], *ws[1:]] if ws else ws,
}
MAX_INPUT = 200  # characters of a new input's words: a format is for short things
_HEAD = re.compile(r"^[^:\n]{1,40}:")  # "Ticket for:" heads a group; else its first word does
_SEPARATOR = re.compile(r"^[^\w]{0,3}$|^_$")  # between the words: nothing, a space, "-", "_", ", " ...


@dataclass(frozen=True)
class Format:
    """An input's words between `prefix` and `suffix`, written in `case`, joined by
    `sep` (None: every example was one word, so only one word fits), between
    `before` and `after`; `examples` is how many examples showed it."""

    prefix: str
    suffix: str
    case: str
    sep: str | None
    before: str
    after: str
    examples: int = field(compare=False)  # the same program shown by more examples is the same format

    def words(self, text: str) -> list[str] | None:
        """The words of `text` this format writes, or None where `text` is not its input."""
        text = text.strip()
        if not text.lower().startswith(self.prefix.lower()) or not text.endswith(self.suffix):
            return None
        if text.endswith("?") and not self.suffix.endswith("?"):  # a question is not an input of a
            return None  # format shown on statements ("My car is blue." -> "Noted: your car is blue.")
        middle = text[len(self.prefix):len(text) - len(self.suffix)].strip()
        words = middle.split()
        if not words or len(middle) > MAX_INPUT or "\n" in middle or (self.sep is None and len(words) > 1):
            return None
        return words

    def apply(self, text: str) -> str | None:
        """The reply to `text`, or None where `text` is not this format's input."""
        words = self.words(text)
        if words is None:
            return None
        return self.before + (self.sep or "").join(CASES[self.case](words)) + self.after

    def describe(self) -> str:
        joined = "" if self.sep is None else f", joined by {self.sep!r}"
        return (f"{self.prefix + '<words>' + self.suffix!r} -> {self.before!r} + the words in {self.case}"
                f"{joined} + {self.after!r} ({self.examples} examples)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Format":
        """A format read back from a checkpoint's meta.json; ValueError if it is not one."""
        try:
            f = cls(**d)
        except TypeError as exc:
            raise ValueError(f"not a format: {exc}") from None
        if f.case not in CASES or not all(isinstance(v, str) for v in (f.prefix, f.suffix, f.before, f.after)) \
                or not (f.sep is None or isinstance(f.sep, str)) or not f.prefix.strip():
            raise ValueError(f"not a format: {d!r}")
        return f


def _prefix(inputs: list[str]) -> str:
    """The inputs' common beginning, up to the end of its last whole word."""
    common = os.path.commonprefix(inputs)
    if all(len(s) > len(common) for s in inputs) and not all(s[len(common)].isspace() for s in inputs):
        common = common[:max(common.rfind(" "), common.rfind(":")) + 1]  # not into a word
    return common


def _suffix(middles: list[str]) -> str:
    """The common end of what follows the prefix, from the start of a whole word or punctuation."""
    common = os.path.commonprefix([m[::-1] for m in middles])[::-1]
    if common and any(len(m) == len(common) for m in middles):
        return ""  # an input with nothing but the common end: no words between
    if common and common[0].isalnum() and any(m[-len(common) - 1].isalnum() for m in middles):
        space = common.find(" ")
        common = common[space:] if space >= 0 else ""
    return common


def infer(pairs: list[tuple[str, str]], at_least: int) -> Format | None:
    """The format that gives every (input, output) pair back, or None where there is none
    (fewer than `at_least` pairs, no common prefix, or one pair that does not fit)."""
    pairs = list(dict.fromkeys((i.strip(), o.strip()) for i, o in pairs))
    if len(pairs) < max(2, at_least):
        return None
    inputs = [i for i, _ in pairs]
    prefix = _prefix(inputs)
    if not re.search(r"\w", prefix):  # something must say "this is the format's input"
        return None
    middles = [i[len(prefix):] for i in inputs]
    suffix = _suffix(middles)
    words = [m[:len(m) - len(suffix)].split() for m in middles]
    if not all(words) or len({tuple(w) for w in words}) < len(words):
        return None
    for case, write in CASES.items():
        found = _fit(pairs, words, write)
        if found is not None:
            sep, before, after = found
            return Format(prefix, suffix, case, sep, before, after, len(pairs))
    return None


def _fit(pairs, words, write) -> tuple[str | None, str, str] | None:
    """(sep, before, after) with which `write`'s words give every output back, or None."""
    sep = None
    for ws, (_, out) in zip(words, pairs):  # the separator, from the first example of two words or more
        if len(ws) > 1:
            w0, w1 = write(ws)[:2]
            at = out.find(w0)
            end = out.find(w1, at + len(w0)) if at >= 0 else -1
            if end < 0 or not _SEPARATOR.match(out[at + len(w0):end]):
                return None
            sep = out[at + len(w0):end]
            break
    first = (sep or "").join(write(words[0]))
    at = pairs[0][1].find(first)
    if at < 0:
        return None
    before, after = pairs[0][1][:at], pairs[0][1][at + len(first):]
    for ws, (_, out) in zip(words, pairs):
        if out != before + (sep or "").join(write(ws)) + after:
            return None
    return sep, before, after


def single_turn(chat: list[dict]) -> tuple[str, str] | None:
    """(the user's words, the answer) of a one-question example's chat, else None."""
    turns = [m for m in chat if m.get("role") != "system"]
    if len(turns) == 2 and turns[0].get("role") == "user" and turns[1].get("role") == "assistant":
        return str(turns[0].get("content", "")), str(turns[1].get("content", ""))
    return None


def _head(text: str) -> str:
    m = _HEAD.match(text.strip())
    return (m.group(0) if m else (text.split() or [""])[0]).lower()


def learn(pairs: list[tuple[str, str]], at_least: int) -> list[Format]:
    """The formats among one-question examples: grouped by how their inputs begin
    ("Ticket for:", else the first word), each group one format or none. Longest
    prefix first, so that the most specific format answers."""
    if at_least <= 0:
        return []
    groups: dict[str, list[tuple[str, str]]] = {}
    for i, o in pairs:
        if i.strip() and o.strip():
            groups.setdefault(_head(i), []).append((i, o))
    found = [f for g in groups.values() if len(g) >= at_least for f in [infer(g, at_least)] if f is not None]
    return sorted(found, key=lambda f: -len(f.prefix))


def answer(formats: list[Format], text: str) -> tuple[Format, str] | None:
    """(format, reply) of the first format whose input `text` is, or None."""
    for f in formats:
        reply = f.apply(text)
        if reply is not None:
            return f, reply
    return None
