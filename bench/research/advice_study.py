"""Requests for advice against what people told memz, with memz's own gate (no training).

The keys of everything the conversation, chat, personal and said_updates sets teach
(as route_study builds them); then two lists written apart from the gate's rule and
from bench/data: first-person requests for advice on the taught topics, which the
base model should answer ("What toys should I buy for my kitten?"), and requests to
recall what was told, phrased as requests, which the adapter should answer ("Can you
remind me what my kitten is called?").

Usage: python bench/research/advice_study.py
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench", "research"))
from memzd import examples, gate, lora  # noqa: E402
from memzd.config import Config  # noqa: E402
from memzd.model import load_base  # noqa: E402
from route_study import read, said_again  # noqa: E402

ADVICE = [
    "What toys should I buy for my kitten?", "How do I keep my kitten off the kitchen table?",
    "Should I visit my sister in Lisbon this summer?", "How can I make my gym sessions shorter?",
    "What should I pack for my flight to Reykjavik?", "How do I stop my dog from barking at night?",
    "Can you help me plan a birthday party for my daughter Lena?", "How should I prepare for my piano lesson?",
    "What is a good present for my landlord?", "Any tips for learning Japanese faster for me?",
    "How do I get better at my job as an engineer?", "What should I cook for someone allergic to walnuts like me?",
    "How can I wake up earlier without feeling tired?", "Which dentist should I choose if mine retires?",
    "Can you recommend a book for my son?", "How do I clean my car's seats?",
]
RECALL = [
    "Can you remind me what my kitten is called?", "Could you tell me where my sister lives?",
    "Remind me of my locker number at the gym.", "Tell me my dentist's name.",
    "Can you tell me which city I live in?", "Do you know what I'm allergic to?",
    "Could you remind me when I wake up?", "What was the name of my landlord again?",
]


def main():
    base = load_base("bundled")
    model, tok, dev = lora.wrap(base.model, Config().lora), base.tokenizer, base.device
    teach = []
    for cat in ("conversation", "chat", "personal", "said_updates"):
        rows = read(cat)
        teach += said_again([t for r in rows for t in r.get("teach_old", [])], [t for r in rows for t in r["teach"]])
    taught = examples.expand(teach)
    keys = [gate.question_text(c[:-1]) if c else e["text"] for e in taught for c in [examples.to_chat(e)]]
    memory = gate.KeyMemory.create(model, tok, Config().routing.layer, dev).extend(model, tok, keys, dev)
    report(memory, model, tok, dev, "advice kept from the adapter", ADVICE, False)
    report(memory, model, tok, dev, "recall sent to the adapter", RECALL, True)


def report(memory, model, tok, dev, name: str, questions: list[str], wanted: bool):
    """How many of the questions the gate routes as wanted (True: to the adapter), and
    the two scores of each that it does not."""
    routed = memory.admits_many(model, tok, [[{"role": "user", "content": q}] for q in questions], dev)
    print(f"{name}: {sum(r == wanted for r in routed)}/{len(questions)}")
    for q, r in zip(questions, routed):
        if r != wanted:
            lexical, margin = memory.scores(model, tok, q, dev)
            print(f"   wrong: lex {lexical:.2f} margin {margin:+.3f}  {q}")


if __name__ == "__main__":
    main()
