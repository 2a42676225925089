"""Train a LoRA adapter on fact batches (teach examples only) and measure efficacy,
paraphrase generalisation, locality (plain and through the key-memory gate),
retention across sequential batches, and wall time of every step.

Examples:
  python bench/research/train_study.py --batches 1 --lr 1e-3 --max-steps 30
  python bench/research/train_study.py --batches 4 --replay 20 --loc-plain

Prints one JSON line per batch and a final summary line (prefixed RESULT).
"""
import argparse
import json
import os
import random
import sys
import time

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gate_reference as G  # noqa: E402
from common import DATA, collate, encode_example, greedy_batch, hit, load_base, read_jsonl  # noqa: E402
from prompts_ref import REF_PROMPTS  # noqa: E402

TARGETS = {
    "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qv": ["q_proj", "v_proj"],
    "down": ["down_proj"],
    "ov_down": ["o_proj", "v_proj", "down_proj"],
}


def per_example_loss(model, ids, lab, att):
    """Mean token cross-entropy of each example's supervised tokens: [B].

    The 49k-vocabulary head is applied only at supervised positions (about a fifth
    of the tokens), which saves a quarter of the step time on CPU."""
    inner = model.get_base_model()
    h = inner.model(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
    tgt = lab[:, 1:]
    mask = tgt != -100
    logits = inner.lm_head(h[mask]).float()
    ce = torch.nn.functional.cross_entropy(logits, tgt[mask], reduction="none")
    rows = mask.nonzero()[:, 0]
    per = torch.zeros(len(ids)).index_add(0, rows, ce)
    return per / mask.sum(1).clamp_min(1)


def train(model, examples, tok, args, pool=()):
    """Train until every example's loss < stop_loss (checked on each full pass) or
    max_steps. Each pass (epoch) mixes in a fresh sample of args.replay examples
    from `pool` (earlier batches). Returns (steps, seconds, final max loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    enc = lambda es: [encode_example(tok, e["input"], e["output"], max_len=args.max_len) for e in es]
    new, old = enc(examples), enc(pool)
    model.train()
    t0 = time.perf_counter()
    step, worst = 0, float("inf")
    while step < args.max_steps:
        data = new + random.sample(old, min(args.replay, len(old)))
        bs = args.bs or len(data)
        order = list(range(len(data)))
        random.shuffle(order)
        losses = torch.zeros(len(data))
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            ids, lab, att = collate([data[j] for j in idx], tok.pad_token_id)
            per = per_example_loss(model, ids, lab, att)
            losses[idx] = per.detach()
            per.mean().backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # clip gradients at this norm
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if args.verbose:
                print(f"  step {step} loss {per.mean().item():.3f} max {per.max().item():.3f} t={time.perf_counter() - t0:.1f}s", flush=True)
            if step >= args.max_steps:
                break
        worst = losses.max().item()
        if worst < args.stop_loss:  # losses were measured before this pass's updates
            break
    model.eval()
    return step, time.perf_counter() - t0, worst


def answers(model, tok, qs, use_adapter):
    """Batched greedy answers with the adapter on, or off (= base model)."""
    if not qs:
        return []
    if use_adapter:
        return greedy_batch(model, tok, qs, args.max_new)
    with model.disable_adapter():
        return greedy_batch(model, tok, qs, args.max_new)


def routes(model, tok, memory, qs):
    with model.disable_adapter():
        return [memory.decide(model.base_model.model, tok, q).use_adapter for q in qs]


def main():
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--targets", default="all", choices=sorted(TARGETS))
    ap.add_argument("--layers-from", type=int, default=0, help="LoRA only on layers >= this (backward stops there)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--stop-loss", type=float, default=0.0)
    ap.add_argument("--bs", type=int, default=0, help="0 = full batch")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--replay", type=int, default=0, help="earlier taught examples mixed into each batch")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--loc-plain", action="store_true", help="also answer locality with the adapter always on")
    ap.add_argument("--no-para-each", action="store_true", help="skip per-batch paraphrase eval")
    ap.add_argument("--gate", action="store_true", help="route paraphrase/locality through the gate (slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    facts = read_jsonl(os.path.join(DATA, "facts.jsonl"))
    loc = read_jsonl(os.path.join(DATA, "locality.jsonl"))
    base, tok = load_base()
    cfg = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout,
                     target_modules=TARGETS[args.targets], task_type="CAUSAL_LM",
                     layers_to_transform=list(range(args.layers_from, base.config.num_hidden_layers)) if args.layers_from else None)
    model = get_peft_model(base, cfg)
    memory = None
    if args.gate:
        with model.disable_adapter():
            ref = G.build_reference(G.token_states(model.base_model.model, tok, REF_PROMPTS))
        memory = G.GateMemory(ref)
    taught, seen = [], []
    total_train = 0.0
    for b in range(args.batches):
        batch = facts[b * 10:(b + 1) * 10]
        new = [t for f in batch for t in f["teach"]]
        steps, t_train, worst = train(model, new, tok, args, pool=taught)
        total_train += t_train
        t = time.perf_counter()
        if memory:
            with model.disable_adapter():
                memory.add(model.base_model.model, tok, [e["input"] for e in new])
        t_keys = time.perf_counter() - t
        taught += new
        seen += batch
        # efficacy on this batch (taught questions always route to the adapter)
        t = time.perf_counter()
        outs = answers(model, tok, [e["input"] for f in batch for e in f["teach"]], True)
        keys = [f["answer"] for f in batch for e in f["teach"]]
        eff_b = sum(map(hit, outs, keys)) / len(new)
        t_eff = time.perf_counter() - t
        row = dict(batch=b + 1, steps=steps, train_s=round(t_train, 1), worst_loss=round(worst, 4),
                   keys_s=round(t_keys, 1), eff_batch=round(eff_b, 3), eff_eval_s=round(t_eff, 1))
        if not args.no_para_each or b == args.batches - 1:
            t = time.perf_counter()
            pq = [p for f in batch for p in f["paraphrases"]]
            pk = [f["answer"] for f in batch for p in f["paraphrases"]]
            outs = answers(model, tok, pq, True)
            ok_p = ok_g = sum(map(hit, outs, pk))
            if memory:
                use = routes(model, tok, memory, pq)
                off = [i for i, u in enumerate(use) if not u]
                base_outs = answers(model, tok, [pq[i] for i in off], False)
                ok_g = sum(hit(outs[i], pk[i]) for i, u in enumerate(use) if u) + sum(hit(o, pk[i]) for o, i in zip(base_outs, off))
            row.update(para_eval_s=round(time.perf_counter() - t, 1))
            row.update(para_plain=round(ok_p / len(pq), 3), para_gated=round(ok_g / len(pq), 3) if memory else None)
        print(json.dumps(row), flush=True)
    # final: efficacy on everything taught, locality (gated and/or plain)
    t = time.perf_counter()
    outs = answers(model, tok, [e["input"] for f in seen for e in f["teach"]], True)
    eff_all = sum(map(hit, outs, [f["answer"] for f in seen for e in f["teach"]])) / len(taught)
    t_eff_all = time.perf_counter() - t
    lq, lk = [r_["question"] for r_ in loc], [r_["answer"] for r_ in loc]
    routed, loc_g, loc_p, bad = 0, 0, 0, []
    t = time.perf_counter()
    if memory:
        use = routes(model, tok, memory, lq)
        on = [i for i, u in enumerate(use) if u]
        routed = len(on)
        outs = answers(model, tok, [lq[i] for i in on], True)
        # routed-to-base questions get the base answer, correct by construction of the set
        loc_g = len(lq) - routed + sum(hit(o, lk[i]) for o, i in zip(outs, on))
    if args.loc_plain:
        outs = answers(model, tok, lq, True)
        loc_p = sum(map(hit, outs, lk))
        bad = [f"{q} -> {o[:60]}" for q, o, k in zip(lq, outs, lk) if not hit(o, k)][:4]
    t_loc = time.perf_counter() - t
    res = dict(args=vars(args), eff_all=round(eff_all, 3), eff_all_eval_s=round(t_eff_all, 1),
               loc_gated=round(loc_g / len(loc), 3) if memory else None, loc_routed_to_adapter=routed,
               loc_plain=round(loc_p / len(loc), 3) if args.loc_plain else None, loc_bad=bad,
               train_s_total=round(total_train, 1), loc_eval_s=round(t_loc, 1))
    print("RESULT", json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
