"""Can the bundled base model write words in capitals at all? The ticket format of
bench/data/behaviours.jsonl ("Ticket for: noisy fan" -> "[TICKET] NOISY FAN") needs
it for words it was not taught. This asks the bare base model outright, three
ways, for the behaviour's unseen inputs and two taught ones, and counts the
answers that hold the words in capitals.

    python bench/research/capitals_probe.py
"""
import json
import os

from common import DATA, greedy, load_base

ASKS = ["Write '{w}' in capital letters.", "Convert to uppercase: {w}", "Repeat in all caps: {w}"]


def main() -> None:
    model, tok = load_base()
    ticket = next(json.loads(l) for l in open(os.path.join(DATA, "behaviours.jsonl")) if '"ticket"' in l)
    words = [u["q"].split(": ", 1)[1] for u in ticket["unseen"]] + [t["input"].split(": ", 1)[1]
                                                                    for t in ticket["teach"][:2]]
    for ask in ASKS:
        right = 0
        for w in words:
            said = greedy(model, tok, ask.format(w=w), max_new_tokens=12).strip()
            right += w.upper() in said
            print(f"  {ask.format(w=w)!r} -> {said!r}")
        print(f"{ask}: {right} of {len(words)} in capitals")


if __name__ == "__main__":
    main()
