"""Token-level gate study: does the query contain the *distinctive* tokens of a taught
question? Hidden states of an early layer (base model, raw question text, first
position dropped), z-scored per dimension with statistics of all reference-prompt
tokens. A taught token is distinctive when its max cosine to any reference token is
below `nov`. score(query) = max over taught questions of the mean, over that
question's distinctive tokens, of the best cosine to any query token
(top-k mean with k=min(2, #distinctive)).

Usage: python bench/research/gate_tokens.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, load_base, read_jsonl  # noqa: E402
from gate_study import hidden_states, stats  # noqa: E402
from prompts_ref import REF_PROMPTS  # noqa: E402


def norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def score(query_toks, taught_sets):
    best = -1.0
    for d in taught_sets:
        s = (d @ query_toks.T).max(1).values  # each distinctive token's best match
        k = min(2, len(s))
        best = max(best, s.topk(k).values.mean().item())
    return best


def main():
    facts = read_jsonl(os.path.join(DATA, "facts.jsonl"))[:40]
    loc = [r["question"] for r in read_jsonl(os.path.join(DATA, "locality.jsonl"))]
    teach = [t["input"] for f in facts for t in f["teach"]]
    para = [p for f in facts for p in f["paraphrases"]]
    model, tok = load_base()
    H = {k: hidden_states(model, tok, v, "raw") for k, v in dict(t=teach, p=para, l=loc, r=REF_PROMPTS).items()}
    print(f"{'L':>3} {'nov':>5} | para_min loc_max   gap   acc  p10   l90  min#dist")
    for layer in (0, 1, 2, 3, 4, 6, 9):
        rt = torch.cat([h[layer] for h in H["r"]])
        mu, sd = rt.mean(0), rt.std(0) + 1e-3
        z = lambda x: norm((x - mu) / sd)
        R = z(rt)
        for nov in (0.5, 0.6, 0.7, 0.8):
            sets = []
            for h in H["t"]:
                t = z(h[layer])
                novelty = (t @ R.T).max(1).values
                d = t[novelty < nov]
                sets.append(d if len(d) else t[novelty.argmin()].unsqueeze(0))
            sp = torch.tensor([score(z(h[layer]), sets) for h in H["p"]])
            sl = torch.tensor([score(z(h[layer]), sets) for h in H["l"]])
            s = stats(sp, sl)
            print(f"{layer:>3} {nov:5.2f} | {s['para_min']:8.3f} {s['loc_max']:7.3f} {s['gap']:6.3f} {s['acc']:5.3f}"
                  f" {s['para_p10']:5.2f} {s['loc_p90']:5.2f} {min(len(x) for x in sets)}")


if __name__ == "__main__":
    main()
