"""Could the base model tell a question about another side of a taught thing (an
aside: "What medicine do I take for my allergy?") from the same question in other
words (a paraphrase: "Which food gives me an allergy?"), by how well the taught
answer fits it? For each item of bench/data/personal.jsonl: the base model's
log-likelihood of the taught answer after the query, less that after the taught
question (d_cue), and less that after a neutral prompt (pmi). A usable check
would put every paraphrase above every aside of the same item.

    python bench/research/answer_fit_study.py
"""
import json
import os

import torch

from common import DATA, encode_example, load_base

NEUTRAL = "Tell me something."


def answer_logprob(model, tok, question: str, answer: str) -> float:
    """The base model's log-likelihood of `answer`'s tokens after `question` (its end token left out)."""
    ids, labels = encode_example(tok, question, answer)
    with torch.no_grad():
        logits = model(ids.unsqueeze(0)).logits[0]
    per_token = torch.log_softmax(logits[:-1].float(), -1).gather(1, ids[1:].unsqueeze(1))[:, 0]
    answered = (labels[1:] != -100).nonzero()[:-1, 0]
    return per_token[answered].sum().item()


def main() -> None:
    model, tok = load_base()
    told, items = 0, 0
    for line in open(os.path.join(DATA, "personal.jsonl")):
        item = json.loads(line)
        cue, answer = item["teach"][0]["input"], item["teach"][0]["output"]
        at_cue, neutral = answer_logprob(model, tok, cue, answer), answer_logprob(model, tok, NEUTRAL, answer)
        fit = {}
        for kind in ("paraphrases", "asides"):
            for q in item[kind]:
                s = answer_logprob(model, tok, q, answer)
                fit.setdefault(kind, []).append(s - at_cue)
                print(f"{kind:11s} d_cue {s - at_cue:7.2f}  pmi {s - neutral:7.2f}  {q!r} <- {answer!r}")
        items += 1
        told += min(fit["paraphrases"]) > max(fit["asides"])
    print(f"paraphrase above aside in {told} of {items} items")


if __name__ == "__main__":
    main()
