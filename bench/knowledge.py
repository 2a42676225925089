"""Knowledge that sticks: does memz learn new facts, carry them to new phrasings, and forget nothing?

Drives memz exactly as a user would, on a fresh home with the default
config.yaml: teaching files dropped into inbox/, `memzd --once`, questions
written to requests/ and answers read from responses/. For each run it prints

  efficacy     taught questions answered with the taught key
  paraphrase   questions phrased differently, never trained on
  locality     general questions the base model answered well, still answered so
  retention / anchor_ce_delta   as memz itself reported them
  drop->live   wall seconds from the file landing in inbox/ to its checkpoint serving

and writes the figures to a JSON file.

    python bench/knowledge.py                    # 1 batch of 10 facts, then 4 batches of 10 in a row
    python bench/knowledge.py --mode single      # only the single batch
    python bench/knowledge.py --set training.lr=3e-4 --set routing.enabled=false
    python bench/knowledge.py --quick --base-model PATH   # harness check: 3 facts, few steps
    python bench/knowledge.py --category conversation     # one kind of memory (see CATEGORIES)
    python bench/knowledge.py --category all              # every kind but growth, each against its targets
    python bench/knowledge.py --category growth           # 300 facts in 30 batches (about half an hour)
    python bench/knowledge.py --category chat --seeds 0 1 2   # each at 3 training seeds: mean, range, met on how many
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from memzd.evaluator import holds, normalize  # noqa: E402

BIN = Path(sys.executable).parent
DATA = REPO / "bench" / "data"


def load_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def set_key(config: dict, dotted: str, raw: str) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = yaml.safe_load(raw)


def memzd_once(home: Path, log) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "memzd"), "--home", str(home), "--once", "--log-level", "INFO"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.write(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"memzd --once failed (exit {proc.returncode}); see {log.name}:\n{proc.stdout[-2000:]}")
    return time.perf_counter() - start


def ask_all(home: Path, questions: list[str], log, max_tokens: int = 48, routes: list | None = None) -> list[str]:
    """Answer every question through requests/ -> responses/ (one memzd --once run);
    `routes`, if given, gets where each was answered ("adapter" or "base")."""
    ids = []
    for q in questions:
        rid = f"b-{uuid.uuid4().hex[:10]}"
        tmp = home / "requests" / f".{rid}.tmp"
        tmp.write_text(json.dumps({"prompt": q, "max_tokens": max_tokens, "temperature": 0}))
        os.replace(tmp, home / "requests" / f"{rid}.json")
        ids.append(rid)
    memzd_once(home, log)
    answers = []
    for rid in ids:
        r = json.loads((home / "responses" / f"{rid}.json").read_text())
        if "error" in r:
            sys.exit(f"request failed: {r['error']}")
        answers.append(r["response"])
        if routes is not None:
            routes.append(r.get("routed_to"))
        (home / "responses" / f"{rid}.json").unlink()
    return answers


def drop(home: Path, name: str, examples: list[dict]) -> None:
    tmp = home / "inbox" / f".{name}.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for e in examples))
    os.replace(tmp, home / "inbox" / name)


def checkpoints(home: Path) -> list[dict]:
    out = subprocess.run([str(BIN / "memzctl"), "--home", str(home), "checkpoints", "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def score(answers: list[str], keys: list[str]) -> float:
    return sum(holds(a, k) for a, k in zip(answers, keys)) / max(len(keys), 1)


def new_home(name: str, overrides: list[str], base_model: str | None) -> Path:
    """A fresh home from `memzctl init`, its config.yaml with the overrides applied."""
    home = Path(tempfile.mkdtemp(prefix=f"memz-bench-{name}-"))
    subprocess.run([str(BIN / "memzctl"), "init", str(home)], check=True, capture_output=True)
    config = yaml.safe_load((home / "config.yaml").read_text())
    if base_model:
        config["base_model"] = base_model
    for o in overrides:
        key, _, value = o.partition("=")
        set_key(config, key, value)
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    return home


def done_with(home: Path, keep: Path | None) -> None:
    """Delete a run's home, copied under `keep` first when asked."""
    if keep:
        shutil.copytree(home, keep / home.name, dirs_exist_ok=True)
    shutil.rmtree(home, ignore_errors=True)


def run(mode: str, batches: list[list[dict]], locality: list[dict], overrides: list[str],
        base_model: str | None, keep: Path | None, verbose: bool) -> dict:
    home = new_home(mode, overrides, base_model)
    log = open(home / "bench.log", "w")

    print(f"[{mode}] home {home}; asking the base model first", flush=True)
    loc_q = [l["question"] for l in locality]
    all_facts = [f for b in batches for f in b]
    base_answers = ask_all(home, loc_q + [t["input"] for f in all_facts for t in f["teach"]], log)
    base_loc, base_taught = base_answers[:len(loc_q)], base_answers[len(loc_q):]
    known = [(q, l["answer"]) for q, l, a in zip(loc_q, locality, base_loc) if holds(a, l["answer"])]
    base_efficacy = score(base_taught, [f["answer"] for f in all_facts for _ in f["teach"]])

    rounds = []
    for i, batch in enumerate(batches, 1):
        drop(home, f"facts-{i}.jsonl", [t for f in batch for t in f["teach"]])
        live = memzd_once(home, log)
        ck = checkpoints(home)[0]
        seen = [f for b in batches[:i] for f in b]
        taught_q = [t["input"] for f in seen for t in f["teach"]]
        taught_k = [f["answer"] for f in seen for _ in f["teach"]]
        para_q = [p for f in seen for p in f["paraphrases"]]
        para_k = [f["answer"] for f in seen for _ in f["paraphrases"]]
        answers = ask_all(home, taught_q + para_q + [q for q, _ in known], log)
        a_taught, a_para = answers[:len(taught_q)], answers[len(taught_q):len(taught_q) + len(para_q)]
        a_loc = answers[len(taught_q) + len(para_q):]
        m = ck["metrics"]
        r = {"batch": i, "checkpoint": ck["id"], "status": ck["status"], "current": ck["current"],
             "efficacy": score(a_taught, taught_k), "paraphrase": score(a_para, para_k),
             "locality": score(a_loc, [k for _, k in known]),
             "efficacy_this_batch": score(a_taught[-sum(len(f["teach"]) for f in batch):],
                                          taught_k[-sum(len(f["teach"]) for f in batch):]),
             "retention_score": m.get("retention_score"), "anchor_ce_delta": m.get("anchor_ce_delta"),
             "recall": m.get("recall"), "adapter_recall": m.get("adapter_recall"),
             "adapter_retention_score": m.get("adapter_retention_score"),
             "adapter_anchor_ce_delta": m.get("adapter_anchor_ce_delta"),
             "steps": m.get("steps"), "train_seconds": m.get("train_seconds"),
             "drop_to_live_s": round(live, 1)}
        rounds.append(r)
        print(f"[{mode}] batch {i}: efficacy {r['efficacy']:.2f}  paraphrase {r['paraphrase']:.2f}  "
              f"locality {r['locality']:.2f}  retention {_f(r['retention_score'])}  "
              f"ce_delta {_f(r['anchor_ce_delta'])}  drop->live {live:.1f}s  ({r['steps']} steps)\n"
              f"[{mode}]          adapter alone: retention {_f(r['adapter_retention_score'])}  "
              f"ce_delta {_f(r['adapter_anchor_ce_delta'])}  recall {_f(r['adapter_recall'])}  "
              f"status {r['status']}", flush=True)
        if verbose:
            for q, a, k in zip(taught_q + para_q + [q for q, _ in known], answers,
                               taught_k + para_k + [k for _, k in known]):
                if not holds(a, k):
                    print(f"    miss: {q!r} -> {a!r} (want {k!r})")
    rounds[-1].update(ungated(home, known, log, verbose))
    print(f"[{mode}] the adapter alone (routing.enabled: false): locality {rounds[-1]['ungated_locality']:.2f} "
          f"on {len(known)} questions, {_f(rounds[-1]['ungated_locality_held_out'])} on the "
          f"{rounds[-1]['held_out_questions']} of them that are not anchors", flush=True)
    log.close()
    done_with(home, keep)
    return {"mode": mode, "facts": len(all_facts), "locality_questions": len(known),
            "base_efficacy": base_efficacy, "rounds": rounds, "final": rounds[-1], "overrides": overrides}


def ungated(home: Path, known: list[tuple[str, str]], log, verbose: bool) -> dict:
    """Issue 12.4: the general questions asked again with routing off, so that the
    adapter alone answers every one; also on those that are not among the anchors
    (which the learner may train on to keep general answers)."""
    config = yaml.safe_load((home / "config.yaml").read_text())
    config.setdefault("routing", {})["enabled"] = False
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    answers = ask_all(home, [q for q, _ in known], log)
    anchor_prompts = {json.loads(line)["prompt"] for line in (REPO / "memzd" / "defaults" / "anchors"
                                                             / "default.jsonl").read_text().splitlines() if line}
    held = [i for i, (q, _) in enumerate(known) if q not in anchor_prompts]
    if verbose:
        for (q, k), a in zip(known, answers):
            if not holds(a, k):
                print(f"    ungated miss: {q!r} -> {a!r} (want {k!r})")
    return {"ungated_locality": score(answers, [k for _, k in known]),
            "ungated_locality_held_out": score([answers[i] for i in held], [known[i][1] for i in held]) if held
            else None, "held_out_questions": len(held)}


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


TARGETS = {"single": {"efficacy": 0.95, "paraphrase": 0.80, "locality": 0.95, "drop_to_live_s": 60},
           "continual": {"efficacy": 0.90, "locality": 0.90}}


def verdict(result: dict) -> list[str]:
    lines = []
    for key, target in TARGETS.get(result["mode"], {}).items():
        value = result["final"][key]
        ok = value <= target if key == "drop_to_live_s" else value >= target
        lines.append(f"  {key:15s} {value:8.2f}  target {'<=' if key == 'drop_to_live_s' else '>='} {target}"
                     f"  {'met' if ok else 'NOT MET'}")
    return lines


# -- categories: memory from what people actually write (issue 12) --------------------------
#
# Each category is a data set under bench/data/ taught to a fresh home through the
# inbox, then asked through requests/. An item has "teach" (examples of any shape),
# "answer", "questions" (asked directly) and "paraphrases"; optionally "neighbours"
# (questions near the fact about something else: kept when answered exactly as the
# base model answered them), "asides" (questions about the same thing that ask something
# else, "What colour is my car?" beside "What car do I drive?": kept when the answer does
# not give the taught one), "teach_old"/"old" (an earlier fact that "teach"
# updates: taught in a first batch), "unseen" ({"q", "a"}: a behaviour's new inputs), or
# "changes" (locality questions the item changes on purpose: a correction of them).

CATEGORIES = {
    "conversation": {"data": "conversation.jsonl", "what": "facts the user states in a chat (messages)",
                     "targets": {"efficacy": 0.85, "paraphrase": 0.75, "neighbours": 0.90, "asides": 0.90,
                                 "locality": 0.95}},
    "chat": {"data": "chat.jsonl", "what": "facts stated in everyday chat turns, beside questions and small talk",
             "targets": {"efficacy": 0.85, "paraphrase": 0.75, "neighbours": 0.90, "asides": 0.90,
                         "locality": 0.95}},
    "notes": {"data": "notes.jsonl", "what": "facts in {\"text\"} notes",
              "targets": {"efficacy": 0.85, "asides": 0.90, "locality": 0.95}},
    "personal": {"data": "personal.jsonl", "what": "personal facts in ordinary words, as Q&A",
                 "targets": {"efficacy": 0.95, "paraphrase": 0.80, "neighbours": 0.90, "asides": 0.90,
                             "locality": 0.95}},
    "corrections": {"data": "corrections.jsonl", "what": "corrections of world knowledge",
                    "targets": {"efficacy": 0.95, "paraphrase": 0.80, "neighbours": 0.90, "locality": 0.95}},
    "updates": {"data": "updates.jsonl", "what": "a later batch changes an earlier fact",
                "targets": {"efficacy": 0.90, "old_gone": 0.90, "paraphrase": 0.80, "old_gone_paraphrase": 0.80}},
    "said_updates": {"data": "said_updates.jsonl", "what": "a later chat turn or note changes a fact stated earlier "
                     "(or a Q&A answered by a statement, either way)",
                     "targets": {"efficacy": 0.90, "old_gone": 0.90, "paraphrase": 0.80, "old_gone_paraphrase": 0.80,
                                 "asides": 0.90}},
    "behaviours": {"data": "behaviours.jsonl", "what": "a reply format over unseen inputs",
                   "targets": {"unseen": 0.80, "locality": 0.95}},
    "formats": {"data": "formats.jsonl", "what": "seven more reply formats, written before memz learned exact "
                "formats (held out; two are not a format of the input's words)",
                "targets": {"unseen": 0.80, "locality": 0.95}},
    "forget": {"data": "facts.jsonl", "what": "10 facts taught, then 3 forgotten with `memzctl forget ANSWER`",
               "targets": {"forgotten_gone": 0.95, "forgotten_gone_paraphrase": 0.95, "efficacy": 0.95,
                           "locality": 0.95}},
    "growth": {"data": "growth.jsonl", "what": "300 facts in 30 batches of 10, one after another", "long": True,
               "targets": {"efficacy": 0.90, "first_batch": 0.90, "paraphrase": 0.70, "locality": 0.95,
                           "slowdown": 1.3}},
    "safety": {"data": "facts_small.jsonl", "what": "training.lr 0.5: refused (auto_rollback), marked (warn)",
               "targets": {"refused": 1.0, "marked": 1.0}},
}


AT_MOST = {"slowdown"}  # figures whose target is a ceiling
NOT_GIVEN = ("old_gone", "forgotten_gone", "asides")  # probes right when the answer does NOT hold `expected`

_BASE_ANSWERS: dict[tuple, str] = {}  # (base model, question) -> its greedy answer, shared by the categories


def base_answers(home: Path, questions: list[str], base_model: str | None, log) -> list[str]:
    """The base model's greedy answers, asked once per base model for all categories
    (`home` must not have learned anything yet)."""
    fresh = [q for q in dict.fromkeys(questions) if (base_model, q) not in _BASE_ANSWERS]
    _BASE_ANSWERS.update({(base_model, q): a for q, a in zip(fresh, ask_all(home, fresh, log) if fresh else [])})
    return [_BASE_ANSWERS[base_model, q] for q in questions]


def _probes(items: list[dict]) -> list[tuple[str, str, str]]:
    """(kind, question, expected) for everything a category asks after teaching."""
    out = []
    for it in items:
        if it.get("forget"):
            out += [("forgotten_gone", q, it["answer"]) for q in it.get("questions", [])]
            out += [("forgotten_gone_paraphrase", q, it["answer"]) for q in it.get("paraphrases", [])]
            continue
        out += [("efficacy", q, it["answer"]) for q in it.get("questions", [])]
        out += [("paraphrase", q, it["answer"]) for q in it.get("paraphrases", [])]
        if "old" in it:
            out += [("old_gone", q, it["old"]) for q in it.get("questions", [])]
            out += [("old_gone_paraphrase", q, it["old"]) for q in it.get("paraphrases", [])]
        out += [("neighbours", q, "") for q in it.get("neighbours", [])]
        out += [("asides", q, it["answer"]) for q in it.get("asides", [])]
        out += [("unseen", u["q"], u["a"]) for u in it.get("unseen", [])]
    return out


def run_category(name: str, locality: list[dict], overrides: list[str], base_model: str | None,
                 keep: Path | None, verbose: bool, quick: bool = False, growth_facts: int = 300) -> dict:
    spec = CATEGORIES[name]
    items = load_jsonl(DATA / spec["data"])[:2 if quick else None]
    if name == "safety":
        return run_safety(items, overrides, base_model, keep)
    if name == "growth":
        items = items[:growth_facts]
        return run_growth(items, locality, overrides, base_model, keep, verbose, quick)
    if name == "forget":  # the first 10 facts, asked as taught; the first 3 (1 when quick) forgotten
        items = [dict(it, questions=[t["input"] for t in it["teach"]], forget=i < (1 if quick else 3))
                 for i, it in enumerate(items[:10])]
    home = new_home(name, overrides, base_model)
    log = open(home / "bench.log", "w")
    print(f"[{name}] {spec['what']}: home {home}; asking the base model first", flush=True)
    probes = _probes(items)
    changed = {q for it in items for q in it.get("changes", [])}  # general questions a correction changes on purpose
    locality = [l for l in locality if l["question"] not in changed]
    loc_q = [l["question"] for l in locality]
    questions = loc_q + [q for _, q, _ in probes]
    before = base_answers(home, questions, base_model, log)
    known = [(q, l["answer"]) for q, l, a in zip(loc_q, locality, before) if holds(a, l["answer"])]
    base_of = dict(zip(questions, before))
    drops = [[e for it in items for e in it["teach_old"]]] if any("teach_old" in it for it in items) else []
    drops.append([e for it in items for e in it["teach"]])
    lives = []
    for i, examples in enumerate(drops, 1):
        drop(home, f"{name}-{i}.jsonl", examples)
        lives.append(memzd_once(home, log))
    forgotten = [it["answer"] for it in items if it.get("forget")]
    if forgotten:
        for text in forgotten:
            subprocess.run([str(BIN / "memzctl"), "--home", str(home), "forget", text], check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        lives.append(memzd_once(home, log))
    ck = checkpoints(home)[0]
    routes: list = []
    answers = ask_all(home, [q for _, q, _ in probes] + [q for q, _ in known], log, routes=routes)
    got: dict[str, list[bool]] = {}
    by_format: dict[str, int] = {}  # answers written by an exact format (memzd.formats), not generated
    for (kind, q, expected), a, route in zip(probes, answers, routes):
        by_format[kind] = by_format.get(kind, 0) + (route == "format")
        if kind == "neighbours":
            ok = normalize(a) == normalize(base_of[q])
        elif kind.startswith(NOT_GIVEN):
            ok = not holds(a, expected)
        else:
            ok = holds(a, expected)
        got.setdefault(kind, []).append(ok)
        if verbose and not ok:
            print(f"    miss ({kind}, {route}): {q!r} -> {a!r}" + (f" (base: {base_of[q]!r})" if kind == "neighbours"
                                                          else f" (want {'not ' if kind.startswith(NOT_GIVEN) else ''}"
                                                               f"{expected!r})"))
    a_loc = answers[len(probes):]
    got["locality"] = [holds(a, k) for a, (_, k) in zip(a_loc, known)]
    if verbose:
        for (q, k), a in zip(known, a_loc):
            if not holds(a, k):
                print(f"    miss (locality): {q!r} -> {a!r} (want {k!r})")
    m = ck["metrics"]
    figures = {k: sum(v) / len(v) for k, v in got.items() if v}
    result = {"category": name, "items": len(items), "figures": figures, "counts": {k: len(v) for k, v in got.items()},
              "by_format": {k: n for k, n in by_format.items() if n}, "checkpoint": ck["id"], "status": ck["status"], "drop_to_live_s": [round(x, 1) for x in lives],
              "metrics": {k: m.get(k) for k in ("recall", "adapter_recall", "retention_score", "anchor_ce_delta",
                                                "adapter_retention_score", "adapter_anchor_ce_delta", "steps",
                                                "n_examples", "train_seconds", "eval_seconds", "adapters")
                          if k != "adapters" or k in m}}
    log.close()
    done_with(home, keep)
    return result


def run_growth(facts: list[dict], locality: list[dict], overrides: list[str], base_model: str | None,
               keep: Path | None, verbose: bool, quick: bool = False) -> dict:
    """Batches of 10 facts one after another (2 of 1 when quick), asked once, after the last.

    slowdown: drop->live of the last batch over the first (each a `memzd --once`, start-up
    included); work_slowdown: the same for training plus the checks after it alone;
    step_slowdown: the same for the seconds of one training step."""
    size = 1 if quick else 10
    batches = [facts[i:i + size] for i in range(0, len(facts), size)]
    home = new_home("growth", overrides, base_model)
    log = open(home / "bench.log", "w")
    print(f"[growth] {len(facts)} facts in {len(batches)} batches: home {home}; asking the base model first",
          flush=True)
    loc_q = [l["question"] for l in locality]
    known = [(q, l["answer"]) for q, l, a in zip(loc_q, locality, base_answers(home, loc_q, base_model, log))
             if holds(a, l["answer"])]
    rounds = []
    for i, batch in enumerate(batches, 1):
        drop(home, f"growth-{i:02d}.jsonl", [t for f in batch for t in f["teach"]])
        live = memzd_once(home, log)
        m = checkpoints(home)[0]["metrics"]
        work = (m.get("train_seconds") or 0) + (m.get("eval_seconds") or 0)
        rounds.append({"batch": i, "drop_to_live_s": round(live, 1), "work_s": round(work, 1),
                       "train_s": m.get("train_seconds") or 0, "steps": m.get("steps"),
                       "n_examples": m.get("n_examples"), "rounds": m.get("rounds")})
        print(f"[growth] batch {i}: drop->live {live:.1f}s (training + checks {work:.1f}s, {m.get('steps')} steps "
              f"on {m.get('n_examples')} examples)", flush=True)
    taught = [(t["input"], f["answer"], b) for b, batch in enumerate(batches) for f in batch for t in f["teach"]]
    paras = [(p, f["answer"]) for f in facts for p in f["paraphrases"]]
    questions = [q for q, _, _ in taught] + [q for q, _ in paras] + [q for q, _ in known]
    answers = ask_all(home, questions, log)
    a_taught, a_para = answers[:len(taught)], answers[len(taught):len(taught) + len(paras)]
    a_loc = answers[len(taught) + len(paras):]
    got = {"efficacy": [holds(a, k) for a, (_, k, _) in zip(a_taught, taught)],
           "first_batch": [holds(a, k) for a, (_, k, b) in zip(a_taught, taught) if b == 0],
           "paraphrase": [holds(a, k) for a, (_, k) in zip(a_para, paras)],
           "locality": [holds(a, k) for a, (_, k) in zip(a_loc, known)]}
    if verbose:
        for (q, k), a in zip([(q, k) for q, k, _ in taught] + paras + known, answers):
            if not holds(a, k):
                print(f"    miss: {q!r} -> {a!r} (want {k!r})")
    figures = {k: sum(v) / len(v) for k, v in got.items() if v}
    figures["slowdown"] = rounds[-1]["drop_to_live_s"] / rounds[0]["drop_to_live_s"]
    figures["work_slowdown"] = rounds[-1]["work_s"] / max(rounds[0]["work_s"], 1e-9)
    # A batch's second round (training.rounds) is a cost of what it holds, not of how long the
    # lineage is: the cost of a training step, last batch over the first, says the latter alone.
    per_step = [r["train_s"] / max(r["steps"] or 1, 1) for r in (rounds[0], rounds[-1])]
    figures["step_slowdown"] = per_step[1] / max(per_step[0], 1e-9)
    log.close()
    done_with(home, keep)
    return {"category": "growth", "items": len(facts), "figures": figures, "counts": {k: len(v) for k, v in got.items()},
            "rounds": rounds, "metrics": {"batches": len(batches)}}


def run_safety(items: list[dict], overrides: list[str], base_model: str | None, keep: Path | None) -> dict:
    """The issue's wrecked adapter: lr 0.5 with the gate on. Refused under auto_rollback, marked under warn."""
    figures, metrics = {}, {}
    for mode, figure, wanted in (("auto_rollback", "refused", "rolled_back"), ("warn", "marked", "risky")):
        home = new_home(f"safety-{mode}", overrides + ["training.lr=0.5", f"evaluation.rollback_mode={mode}"],
                        base_model)
        with open(home / "bench.log", "w") as log:
            print(f"[safety] training.lr 0.5 under {mode}: home {home}", flush=True)
            drop(home, "facts.jsonl", [t for it in items for t in it["teach"]])
            memzd_once(home, log)
        ck = checkpoints(home)[0]
        figures[figure] = float(ck["status"] == wanted)
        metrics[mode] = {"status": ck["status"], **{k: ck["metrics"].get(k) for k in (
            "recall", "anchor_ce_delta", "retention_score", "adapter_recall", "adapter_anchor_ce_delta",
            "adapter_retention_score", "eval_loss")}}
        done_with(home, keep)
    return {"category": "safety", "items": len(items), "figures": figures, "metrics": metrics}


def meets(key: str, value: float, target: float) -> bool:
    """Does a figure meet its target (a ceiling for the figures of AT_MOST, else a floor)?"""
    return value <= target if key in AT_MOST else value >= target


def category_lines(result: dict) -> list[str]:
    name = result["category"]
    seed = f", training seed {result['seed']}" if "seed" in result else ""
    lines = [f"[{name}] {CATEGORIES[name]['what']} ({result['items']} items{seed})"]
    targets = CATEGORIES[name]["targets"]
    for key, value in result["figures"].items():
        target = targets.get(key)
        n = result.get("counts", {}).get(key)
        most = key in AT_MOST
        met = target is not None and meets(key, value, target)
        formatted = result.get("by_format", {}).get(key)
        lines.append(f"  {key:20s} {value:6.2f}" + (f"  of {n:3d}" if n else "") +
                     (f"  target {'<=' if most else '>='} {target}  {'met' if met else 'NOT MET'}"
                      if target is not None else "")
                     + (f"  ({formatted} answered by an exact format)" if formatted else ""))
    for key in targets:
        if key not in result["figures"]:
            lines.append(f"  {key:20s}      -  target >= {targets[key]}  NOT MEASURED")
    figures = result["metrics"].items() if name == "safety" else [("checkpoint", result["metrics"])]
    for label, m in figures:
        lines.append(f"  {label}: " + ", ".join(f"{k} {_f(v) if isinstance(v, float) else v}" for k, v in m.items()))
    return lines


def seeds_lines(runs: list[dict], seeds: list[int]) -> list[str]:
    """One category run at several training seeds: each figure's mean, range and how many
    seeds meet its target (a paraphrase figure moves by 0.1-0.15 with the seed alone)."""
    name = runs[0]["category"]
    targets = CATEGORIES[name]["targets"]
    lines = [f"[{name}] over training seeds {', '.join(map(str, seeds))}"]
    for key in runs[0]["figures"]:
        values = [r["figures"][key] for r in runs if key in r["figures"]]
        target = targets.get(key)
        most = key in AT_MOST
        met = sum(meets(key, v, target) for v in values) if target is not None else None
        lines.append(f"  {key:20s} mean {sum(values) / len(values):5.2f}  range {min(values):.2f}-{max(values):.2f}  "
                     + " ".join(f"{v:.2f}" for v in values)
                     + (f"  target {'<=' if most else '>='} {target}  met on {met} of {len(values)}"
                        if target is not None else ""))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["single", "continual", "both"], default="both")
    ap.add_argument("--category", nargs="+", choices=[*CATEGORIES, "all"],
                    help="run these memory categories instead of the modes: " + ", ".join(CATEGORIES)
                         + " (all: every one but growth, which takes about half an hour)")
    ap.add_argument("--growth-facts", type=int, default=300, metavar="N",
                    help="growth: the first N of the 300 facts, in batches of 10")
    ap.add_argument("--facts", type=Path, default=DATA / "facts.jsonl")
    ap.add_argument("--locality", type=Path, default=DATA / "locality.jsonl")
    ap.add_argument("--batch-size", type=int, default=10, help="facts per batch")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config.yaml key, e.g. training.lr=3e-4 (repeatable)")
    ap.add_argument("--base-model", help="base model instead of the bundled one")
    ap.add_argument("--quick", action="store_true",
                    help="3 facts (2 items per category), 5 locality questions: checks the harness")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "knowledge.json")
    ap.add_argument("--keep", type=Path, help="copy each run's home here before deleting it")
    ap.add_argument("--seeds", type=int, nargs="+", metavar="S",
                    help="run each category once per training seed (training.seed=S) and print each "
                         "figure's mean and range over them")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every missed answer")
    args = ap.parse_args()
    if args.seeds and not args.category:
        ap.error("--seeds needs --category")

    facts, locality = load_jsonl(args.facts), load_jsonl(args.locality)
    modes = ["single", "continual"] if args.mode == "both" else [args.mode]
    if args.quick:
        facts, locality, modes = facts[:3], locality[:5], ["single"]
        args.batch_size = 3
    results = []
    if args.category:
        every = [n for n, spec in CATEGORIES.items() if not spec.get("long")]
        for name in (every if "all" in args.category else dict.fromkeys(args.category)):
            runs = []
            for seed in args.seeds or [None]:
                overrides = args.overrides + ([f"training.seed={seed}"] if seed is not None else [])
                result = run_category(name, locality[:5] if args.quick else locality, overrides,
                                      args.base_model, args.keep, args.verbose, args.quick, args.growth_facts)
                if seed is not None:
                    result["seed"] = seed
                runs.append(result)
                print("\n".join(category_lines(result)) + "\n", flush=True)
            results += runs
            if len(runs) > 1:
                print("\n".join(seeds_lines(runs, args.seeds)) + "\n", flush=True)
        modes = []
    for mode in modes:
        n = 1 if mode == "single" else 4
        batches = [facts[i * args.batch_size:(i + 1) * args.batch_size] for i in range(n)]
        result = run(mode, batches, locality, args.overrides, args.base_model, args.keep, args.verbose)
        results.append(result)
        print(f"\n[{mode}] {result['facts']} facts, {result['locality_questions']} locality questions "
              f"(base model efficacy before teaching: {result['base_efficacy']:.2f})")
        print("\n".join(verdict(result)) + "\n", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "machine": os.uname().machine,
                                    "cpus": os.cpu_count()}, indent=2))
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
