"""Words that name one thing in a personal fact ("called" and "name", "home" and
"live", "job" and "work"), against statements and questions written apart from
bench/data and from the gate's table, with memz's own gate (no training).

Keys are built from the statements below as the learner builds them (each said in a
chat turn, expanded with its written questions); then questions that ask for those
facts in other words, which the adapter should answer, and questions that use the
same words about something else (general knowledge, requests for advice, other
people's things), which the base model should keep. Each list is routed twice:
with the gate's table (`gate._SAME_AS`) and without it.

Usage: python bench/research/same_words_study.py
"""
import os
import sys
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench", "research"))
from memzd import examples, gate, lora  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.model import load_base  # noqa: E402
from advice_study import report  # noqa: E402

STATEMENTS = [
    "My piano teacher is called Mr. Okafor.", "My boss is Hilde Sandberg.",
    "I work as a nurse at the Brendan hospital.", "I live in a flat above the bakery on Mill Lane.",
    "I'm allergic to penicillin.", "My cat is named Biscotti.", "I've lived in Porto since 2015.",
    "My husband works at a bakery in Leeds.", "My dentist is called Dr. Varga.",
    "My daughter's best friend is called Maisie.",
]
ASKED = [
    "What is my piano teacher's name?", "Who is my manager?", "What is my job?", "Who employs me?",
    "Where is my home?", "What allergy do I have?", "What do I call my cat?", "Where is my home now?",
    "What is my husband's job?", "What is my dentist's name?", "What is the name of my daughter's best friend?",
    "Where do I have my job?",
]
ELSE = [
    "What is the name of the longest river in Europe?", "What is a job interview?", "How does a heat pump work?",
    "What are common food allergies?", "Who is the boss in a wolf pack?", "What do you call a baby kangaroo?",
    "Where is the home of the Olympic Games?", "What is the name of the largest ocean?",
    "How do I find a new job?", "How should I ask my boss for a raise?", "What should I call my new puppy?",
    "How do I make my home warmer?", "What is my brother's job?", "Where does my mother live?",
    "What is my son's name?", "Where is my home town?", "What is the name of my street?",
    "Who is my doctor?", "What is my sister's job?", "Where does my boss live?",
]


def main():
    base = load_base("bundled")
    model, tok, dev = lora.wrap(base.model, Config().lora), base.tokenizer, base.device
    taught = examples.expand([{"messages": [{"role": "user", "content": s},
                                            {"role": "assistant", "content": "Got it, I'll remember that."}]}
                              for s in STATEMENTS])
    keys = [gate.question_text(c[:-1]) if c else e["text"] for e in taught for c in [examples.to_chat(e)]]
    memory = gate.KeyMemory.create(model, tok, Config().routing.layer, dev).extend(model, tok, keys, dev)
    for table in ("with the table", "without"):
        with mock.patch.dict(gate._SAME_AS, clear=table == "without"):
            report(memory, model, tok, dev, f"{table}: asked in other words, sent to the adapter", ASKED, True)
            report(memory, model, tok, dev, f"{table}: the same words about something else, kept", ELSE, False)


if __name__ == "__main__":
    main()
