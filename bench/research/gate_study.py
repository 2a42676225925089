"""Measure how well base-model hidden-state keys separate paraphrases of taught
questions from unrelated (locality) questions.

For every layer x pooling x centring x text format, computes for each probe the max
cosine similarity to the taught keys (teach questions of f01-f40), and reports:
  para_min  - lowest score among paraphrases (must route to the adapter)
  loc_max   - highest score among locality questions (must route to base)
  gap       - para_min - loc_max (>0: a threshold separates them perfectly)
  acc       - best-threshold routing accuracy over paraphrases + locality
Also the margin rule: score = max_cos(taught) - max_cos(reference prompts).

Usage: python bench/research/gate_study.py [--facts N]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA, load_base, read_jsonl  # noqa: E402
from prompts_ref import REF_PROMPTS  # noqa: E402


@torch.no_grad()
def hidden_states(model, tok, prompts, fmt):
    """Per prompt: tuple of (layers+1) tensors [T, H] over the question tokens only."""
    out = []
    for p in prompts:
        if fmt == "raw":
            ids = tok(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
            lo, hi = 1, ids.shape[1]  # position 0 is an attention sink with huge norm
        else:  # chat: full template, pool over the user content span
            msgs = [{"role": "user", "content": p}]
            full = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            pre = full[: full.index(p)]
            ids = tok(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
            lo = len(tok(pre, add_special_tokens=False)["input_ids"])
            hi = lo + len(tok(p, add_special_tokens=False)["input_ids"])
        hs = model(ids, output_hidden_states=True).hidden_states
        out.append([h[0, lo:hi] for h in hs])
    return out


def pool(h, how):
    if how == "mean":
        return h.mean(0)
    if how == "last":
        return h[-1]
    if how == "max":
        return h.max(0).values
    raise ValueError(how)


def keys(hs, layer, how):
    return torch.stack([pool(h[layer], how) for h in hs])


def norm(x):
    return x / x.norm(dim=-1, keepdim=True)


def evaluate(taught, para, loc, ref, centre):
    mu = ref.mean(0) if centre else torch.zeros(ref.shape[1])
    sd = ref.std(0) + 1e-3 if centre == "z" else torch.ones(ref.shape[1])
    T, P, L, R = (norm((x - mu) / sd) for x in (taught, para, loc, ref))
    sp, sl = (P @ T.T).max(1).values, (L @ T.T).max(1).values
    mp = sp - (P @ R.T).max(1).values
    ml = sl - (L @ R.T).max(1).values
    return stats(sp, sl), stats(mp, ml), (sp, sl, mp, ml)


def stats(pos, neg):
    allv = torch.cat([pos, neg]).sort().values
    best = 0.0
    for t in allv:
        acc = ((pos >= t).sum() + (neg < t).sum()).item() / (len(pos) + len(neg))
        best = max(best, acc)
    return dict(para_min=pos.min().item(), loc_max=neg.max().item(),
                gap=(pos.min() - neg.max()).item(), acc=best,
                para_p10=pos.quantile(0.1).item(), loc_p90=neg.quantile(0.9).item())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=int, default=40)
    args = ap.parse_args()
    facts = read_jsonl(os.path.join(DATA, "facts.jsonl"))[: args.facts]
    loc = [r["question"] for r in read_jsonl(os.path.join(DATA, "locality.jsonl"))]
    teach = [t["input"] for f in facts for t in f["teach"]]
    para = [p for f in facts for p in f["paraphrases"]]
    model, tok = load_base()
    n_layers = model.config.num_hidden_layers
    rows = []
    for fmt in ("raw", "chat"):
        H = {k: hidden_states(model, tok, v, fmt) for k, v in
             dict(t=teach, p=para, l=loc, r=REF_PROMPTS).items()}
        for layer in list(range(0, n_layers + 1, 3)) + [n_layers]:
            for how in ("mean", "last", "max"):
                for centre in ("", "mean", "z"):
                    ks = [keys(H[k], layer, how) for k in "tplr"]
                    cos, mar, _ = evaluate(*ks, centre)
                    rows.append((fmt, layer, how, centre, cos, mar))
    rows.sort(key=lambda r: -max(r[4]["gap"], r[5]["gap"]))
    print(f"{'fmt':5}{'L':>3} {'pool':5}{'ctr':>4} | cos: para_min loc_max   gap   acc | margin: para_min loc_max   gap   acc")
    for fmt, layer, how, centre, c, m in rows:
        print(f"{fmt:5}{layer:>3} {how:5}{centre:>4} | {c['para_min']:8.3f} {c['loc_max']:7.3f} {c['gap']:6.3f} {c['acc']:5.3f}"
              f" | {m['para_min']:8.3f} {m['loc_max']:7.3f} {m['gap']:6.3f} {m['acc']:5.3f}")


if __name__ == "__main__":
    main()
