"""Can the bundled base model write words in capitals at all? The ticket format of
bench/data/behaviours.jsonl ("Ticket for: noisy fan" -> "[TICKET] NOISY FAN") needs
it for words it was not taught. This asks the bare base model outright, three
ways, for the behaviour's unseen inputs and two taught ones, and counts the
answers that hold the words in capitals.

    python bench/research/capitals_probe.py
"""
import json
import os

import torch

from common import DATA, load_base, prompt_ids

ASKS = ["Write '{w}' in capital letters.", "Convert to uppercase: {w}", "Repeat in all caps: {w}"]


def main() -> None:
    model, tok = load_base()
    ticket = next(json.loads(l) for l in open(os.path.join(DATA, "behaviours.jsonl")) if '"ticket"' in l)
    words = [u["q"].split(": ", 1)[1] for u in ticket["unseen"]] + [t["input"].split(": ", 1)[1]
                                                                    for t in ticket["teach"][:2]]
    for ask in ASKS:
        right = 0
        for w in words:
            ids = prompt_ids(tok, ask.format(w=w)).unsqueeze(0)
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=12, do_sample=False)
            said = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            right += w.upper() in said
            print(f"  {ask.format(w=w)!r} -> {said!r}")
        print(f"{ask}: {right} of {len(words)} in capitals")


if __name__ == "__main__":
    main()
