"""Issue 12.4 study: what keeps the adapter alone (ungated) from forgetting?

Trains one batch of bench/data/facts.jsonl (f01-f10) into a fresh adapter with
memzd's own trainer and config, in-process (no daemon, no gate), then asks
with the adapter always on: the taught questions (efficacy), their
paraphrases, and the 64 general questions of bench/data/locality.jsonl
(ungated locality; those also among the shipped anchors are reported apart).

Variants (each alone or together):
  --null F     keep each LoRA A matrix out of the input subspace that holds
               fraction F of the energy of general text (the shipped anchors
               with the base model's answers), projected after every step:
               the AlphaEdit / null-space idea for LoRA.
  --general N  memzd's training.general (N anchors with the base's answers per epoch).

    python bench/research/adapter_alone_study.py --null 0.99 -v
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from memzd import lora
from memzd.anchors import _read_jsonl
from memzd.config import Config
from memzd.examples import expand
from memzd.inference import greedy_answers
from memzd.learner import GENERAL_ANSWER_TOKENS, _first_answer_tokens
from memzd.model import load_base
from memzd.tokens import Encoded, encode
from memzd.gate import REFERENCE_PROMPTS
from memzd.nullspace import NullSpace
from memzd.trainer import train

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
ANCHORS = Path(__import__("memzd").__file__).parent / "defaults" / "anchors" / "default.jsonl"
CACHE = Path("/tmp/memz-study-anchor-answers.json")


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hit(answer: str, key: str) -> bool:
    return key.lower() in answer.lower()


def anchor_answers(model, tok, device, chats) -> list[str]:
    """The base model's greedy answers, cached by chat across runs."""
    cached = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    missing = [c for c in chats if json.dumps(c) not in cached]
    if missing:
        got = greedy_answers(model, tok, missing, adapter=None, device=device, max_tokens=48)
        cached.update({json.dumps(c): a for c, a in zip(missing, got)})
        CACHE.write_text(json.dumps(cached))
    return [cached[json.dumps(c)] for c in chats]


def self_written(model, tok, device, n: int) -> list[str]:
    """n user questions the base model writes itself: sampled after its chat template's
    opening of a user turn (the Magpie trick), cached across runs."""
    path = Path(f"/tmp/memz-study-magpie-{n}.json")
    if path.exists():
        return json.loads(path.read_text())
    from memzd.inference import _generate
    mark = "\x00"
    text = tok.apply_chat_template([{"role": "user", "content": mark}], tokenize=False)
    ids = tok(text[:text.index(mark)], add_special_tokens=False)["input_ids"]
    got = []
    for seed in range(0, n, 32):
        got += [a.text for a in _generate(model, tok, [ids] * min(32, n - seed), 40, 1.0, device, seed=seed)]
    got = [q for q in got if q]
    path.write_text(json.dumps(got))
    return got


# Real names the base model knows, none of them named by bench/data/locality.jsonl.
SWAP_NAMES = ["Peru", "Kenya", "Norway", "Portugal", "Charles Darwin", "Marie Curie", "Isaac Newton", "Mozart",
              "Vietnam", "Chile", "Napoleon", "Picasso"]
_CAPS = __import__("re").compile(r"(?<=\s)(?:[A-Z][\w\-]*(?:'s)?\s?)+")


def swapped(teach: list[dict], k: int) -> list[str]:
    """Each taught question with its run of capitalised words (after the first word) replaced
    by k real names in turn: the question's template about things the base model knows."""
    out = []
    for t in teach:
        q = t["input"]
        if not _CAPS.search(q):
            continue
        for i in range(k):
            name = SWAP_NAMES[(len(out) + i) % len(SWAP_NAMES)]
            out.append(_CAPS.sub(lambda m: name + ("'s" if m.group(0).rstrip().endswith("'s") else "")
                                 + (" " if m.group(0).endswith(" ") else ""), q, count=1))
    return out


def swapped_rows(teach: list[dict], k: int, data: str) -> list[str]:
    """The facts as this study always asked them (swapped); other data as memzd's learner
    asks them (examples.about_others on the questions of the expanded batch)."""
    if data == "facts":
        return swapped(teach, k)
    from memzd.examples import about_others
    return about_others([e["input"] for e in expand(teach) if "input" in e], k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--null", type=float, default=0.0, help="energy share of general text to keep LoRA A out of")
    ap.add_argument("--general", type=int, default=0)
    ap.add_argument("--reference", action="store_true",
                    help="also measure the null space on the gate's reference prompts (memzd.gate.REFERENCE_PROMPTS)")
    ap.add_argument("--magpie", type=int, default=0,
                    help="also measure the null space on N user questions the base model writes itself "
                         "(sampled from its chat template's empty user turn), with its answers")
    ap.add_argument("--neighbours", type=int, default=0,
                    help="train every epoch on the K general prompts (anchors past the first 8 and the gate's "
                         "reference prompts) nearest each taught question, with the base model's answers")
    ap.add_argument("--swapped", type=int, default=0,
                    help="also measure the null space on each taught question with its names replaced by K "
                         "real ones (SWAP_NAMES: none that the locality questions name), with the base's answers")
    ap.add_argument("--swapped-bare", action="store_true", help="the swapped questions without answers")
    ap.add_argument("--only", choices=["mlp", "attn"], help="constrain only these LoRA modules")
    ap.add_argument("--weights-only", dest="grad_project", action="store_false",
                    help="project only A after each step, not its gradients before it (as before 2026-12-03)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--facts", default="f01-f10")
    ap.add_argument("--data", default="facts", help="bench/data file to teach (facts, notes, conversation, chat, personal)")
    ap.add_argument("--statements", choices=["train", "drop"], default="train",
                    help="drop: leave out the notes and chats themselves, keeping the questions written about them")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    cfg = Config()
    if args.max_steps:
        cfg.training.max_steps = args.max_steps
    if args.lr:
        cfg.training.lr = args.lr
    if args.seed is not None:
        cfg.training.seed = args.seed
    cfg.training.general = args.general
    torch.set_num_threads(2)
    base = load_base("bundled", "cpu", "fp32")
    model, tok, device = lora.wrap(base.model, cfg.lora), base.tokenizer, base.device

    lo, hi = (int(x[1:]) for x in args.facts.split("-"))
    facts = [f for f in jsonl(DATA / f"{args.data}.jsonl") if lo <= int(f["id"][1:]) <= hi]
    teach = [t for f in facts for t in f["teach"]]
    questions = [(q, f["answer"]) for f in facts for q in f.get("questions") or [t["input"] for t in f["teach"]]]
    paraphrases = [(p, f["answer"]) for f in facts for p in f["paraphrases"]]
    locality = [(q["question"], q["answer"]) for q in jsonl(DATA / "locality.jsonl")]

    anchors = _read_jsonl(ANCHORS)
    chats = [a.chat for a in anchors]
    in_anchors = {c[-1]["content"] for c in chats}
    chats = chats[8:]  # the first 8 anchors measure the adapter alone in memzd: never trained on or measured
    if args.reference:
        chats += [[{"role": "user", "content": p}] for p in REFERENCE_PROMPTS]
    if args.magpie:
        chats += [[{"role": "user", "content": q}] for q in self_written(model, tok, device, args.magpie)]
    if args.swapped and not args.swapped_bare:
        chats += [[{"role": "user", "content": q}] for q in swapped_rows(teach, args.swapped, args.data)]
    answers = anchor_answers(model, tok, device, chats)
    general_chats = [c + [{"role": "assistant", "content": a}] for c, a in zip(chats, answers) if a]
    encoded_general = [encode({"messages": c}, tok, cfg.training.max_seq_len) for c in general_chats]
    if args.swapped_bare:  # the questions alone, as the chat template asks them: no answers to generate
        from memzd.tokens import prompt_ids
        encoded_general += [Encoded(ids, ids) for q in swapped_rows(teach, args.swapped, args.data)
                            for ids in [prompt_ids(tok, [{"role": "user", "content": q}])]]

    torch.manual_seed(cfg.training.seed)
    lora.start_training(model, cfg.lora, None)
    constrain = None
    t0 = time.perf_counter()
    if args.null:
        null = NullSpace.measure(model, encoded_general, args.null, device, tok.pad_token_id)
        if args.only:
            null.spaces = {n: v for n, v in null.spaces.items() if (".mlp." in n) == (args.only == "mlp")}
        constrain = null.bind(model, lora.TRAIN, parent=False)
        if not args.grad_project:  # as before: only the weights projected after each step
            constrain.gradients = lambda: None
        print(f"null space on {len(encoded_general)} texts: A may use {min(null.kept.values())}-"
              f"{max(null.kept.values())} input dimensions ({time.perf_counter() - t0:.1f}s)")
    rows = expand(teach)
    if args.statements == "drop":
        rows = [e for e in rows if "input" in e or "prompt" in e]
    encoded = [encode(e, tok, cfg.training.max_seq_len) for e in rows]
    general = [_first_answer_tokens(e, GENERAL_ANSWER_TOKENS) for e in encoded_general] if args.general else []
    if args.neighbours:
        from memzd import gate
        pool = chats[:len(anchors) - 8] + [[{"role": "user", "content": p}] for p in REFERENCE_PROMPTS
                                           if [{"role": "user", "content": p}] not in chats]
        pool_answers = anchor_answers(model, tok, device, pool)
        with lora.using(model, None):
            keys = gate.pooled_states(model, tok, [c[-1]["content"] for c in pool], cfg.routing.layer, device)
            asked = gate.pooled_states(model, tok, [q for q, _ in questions], cfg.routing.layer, device)
        keys, asked = (torch.nn.functional.normalize(k.float(), dim=-1) for k in (keys, asked))
        near = sorted({int(i) for row in (asked @ keys.T).topk(args.neighbours, dim=-1).indices for i in row})
        if args.verbose:
            print("neighbours:", [pool[i][-1]["content"] for i in near])
        general = [_first_answer_tokens(encode({"messages": pool[i] + [{"role": "assistant", "content": pool_answers[i]}]},
                                               tok, cfg.training.max_seq_len), GENERAL_ANSWER_TOKENS)
                   for i in near if pool_answers[i]]
        cfg.training.general = len(general)
    result = train(model, encoded, cfg.training, pad_id=tok.pad_token_id, device=device, general=general,
                   constrain=constrain)
    print(f"trained {len(result.losses)} steps in {result.seconds:.1f}s, last loss {result.losses[-1]:.4f}")

    def ask(pairs, label):
        got = greedy_answers(model, tok, [[{"role": "user", "content": q}] for q, _ in pairs],
                             adapter=lora.TRAIN, device=device, max_tokens=48)
        hits = [hit(a, k) for a, (_, k) in zip(got, pairs)]
        if args.verbose:
            for (q, k), a, h in zip(pairs, got, hits):
                if not h:
                    print(f"  {label} miss: {q!r} -> {a[:90]!r} (want {k!r})")
        return hits

    eff = ask(questions, "taught")
    para = ask(paraphrases, "paraphrase")
    loc = ask(locality, "locality")
    held = [h for (q, _), h in zip(locality, loc) if q not in in_anchors]
    row = {"null": args.null, "magpie": args.magpie, "only": args.only, "reference": args.reference, "general": args.general, "neighbours": args.neighbours, "swapped": args.swapped, "data": args.data, "statements": args.statements, "bare": args.swapped_bare, "grad_project": args.grad_project, "lr": cfg.training.lr, "seed": cfg.training.seed, "steps": len(result.losses),
           "train_seconds": round(result.seconds, 1), "efficacy": sum(eff) / len(eff),
           "paraphrase": sum(para) / len(para), "ungated_locality": sum(loc) / len(loc),
           "ungated_held_out": sum(held) / len(held)}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
