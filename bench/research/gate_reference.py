"""Reference implementation of the memz key-memory gate (GRACE/WISE-style routing).

Idea: the adapter is only used for questions about something it was taught. For
every taught example we store a key computed from its user text; a query is
routed to the adapter only when it matches a taught key, else it is answered by
the base model with the adapter disabled, so unrelated questions keep the base
model's answers exactly (locality 1.0 by construction for them).

Two signals (see bench/RESEARCH_NOTES.md for the measurements):

1. Lexical key (primary): the taught prompt's *distinctive words*, chosen with the
   tokenizer as a frequency proxy: a word (punctuation and possessive 's stripped)
   is rare if the BPE tokenizer splits " "+word into >= 2 pieces (invented names:
   "Vantrees" -> V|ant|rees, while "Tower", "London", "flower" are one token).
   Distinctive = capitalised rare words and words with digits; if none, lower-case
   rare words; if none, capitalised non-initial words; else words of >= 4 letters.
   lex_score = share of the taught prompt's distinctive words that occur in the
   query; best over taught prompts.
2. Sentence key (secondary): base-model hidden states of layer SENT_LAYER (6) over
   the raw prompt tokens (no chat template, position 0 dropped: attention sink),
   max-pooled over tokens, z-scored per dimension with the reference prompts'
   mean/std, L2-normalised. sent_margin = max cos to taught keys - max cos to the
   reference prompts' keys.

Default rule (RULE = "lex_and_sent"): route to the adapter iff
lex_score >= LEX_THRESHOLD (0.5) and sent_margin >= SENT_MARGIN (0.0).

The reference prompts are general prompts (e.g. the anchor prompts). Needs only
torch, a transformers causal LM and its tokenizer.
"""
import re
from dataclasses import dataclass, field

import torch

SENT_LAYER = 6          # hidden_states index (0 = embeddings) for the sentence key
LEX_THRESHOLD = 0.5     # share of a taught prompt's distinctive words found in the query
SENT_MARGIN = 0.0       # cos to nearest taught key minus cos to nearest reference key
RULE = "lex_and_sent"   # lex | sent | lex_and_sent | lex_or_sent
EPS = 1e-3

_WORD = re.compile(r"[^\W_][\w\-]*")  # unicode letters/digits, inner hyphens kept


def _words(text):
    """Words of a text, original case (callers strip possessives first)."""
    out = []
    for w in _WORD.findall(text.replace("\u2019", "'")):
        w = w.strip("-")
        if w:
            out.append(w)
    return out


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _rare(tokenizer, w):
    return any(c.isdigit() for c in w) or len(tokenizer.tokenize(" " + w)) >= 2


def distinctive_words(tokenizer, text):
    """The words that identify what a taught prompt is about (lower-cased set).

    Tiers, first non-empty wins: (1) capitalised rare words and words with digits
    (names, codes), (2) lower-case rare words ("ravenite", "hydro-loom"),
    (3) capitalised non-initial words ("Maple Ridge"), (4) words of >= 4 letters.
    A word is rare when the tokenizer splits " "+word into >= 2 pieces.
    """
    text = re.sub(r"(\w)'s?\b", r"\1", text.replace("\u2019", "'"))
    words = _words(text)
    tiers = (
        [w for w in words if any(c.isdigit() for c in w) or (w[0].isupper() and _rare(tokenizer, w))],
        [w for w in words if _rare(tokenizer, w)],
        [w for w in words[1:] if w[0].isupper()],
        [w for w in words if len(w) >= 4],
    )
    for tier in tiers:
        if tier:
            return {w.lower() for w in tier}
    return set()


def lexical_words(text):
    """All words of a query (lower-cased set, possessives stripped); hyphenated
    words also contribute their parts ("Tarnholm-Eskerby" -> tarnholm, eskerby)."""
    text = re.sub(r"(\w)'s?\b", r"\1", text.replace("\u2019", "'"))
    out = set()
    for w in _words(text):
        out.add(w.lower())
        out.update(p.lower() for p in w.split("-") if p)
    return out


@torch.no_grad()
def token_states(model, tokenizer, prompts, layers=(SENT_LAYER,)):
    """Per prompt: {layer: [T, H] float tensor} of base-model hidden states over the
    prompt's tokens (raw text, no template), position 0 dropped. Call with the
    adapter disabled (``with peft_model.disable_adapter():``)."""
    out = []
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] < 2:  # one-token prompt: keep it rather than drop everything
            ids = torch.cat([ids, ids], 1)
        hs = model(ids, output_hidden_states=True).hidden_states
        out.append({l: hs[l][0, 1:].float() for l in layers})
    return out


@dataclass
class Reference:
    """Statistics of the reference (general) prompts for the sentence key."""
    sent_mu: torch.Tensor
    sent_sd: torch.Tensor
    sent_keys: torch.Tensor   # z-scored, normalised reference sentence keys [M, H]


def build_reference(states):
    """states: token_states() of the reference prompts."""
    sent = torch.stack([s[SENT_LAYER].max(0).values for s in states])
    mu, sd = sent.mean(0), sent.std(0) + EPS
    return Reference(mu, sd, _norm((sent - mu) / sd))


@dataclass
class Key:
    sent: torch.Tensor    # [H] sentence key
    words: set            # distinctive words (taught) or all words (query)


def compute_keys(states, ref, words):
    """Keys from token_states() and the matching word sets."""
    return [Key(_norm((s[SENT_LAYER].max(0).values - ref.sent_mu) / ref.sent_sd), w)
            for s, w in zip(states, words)]


def compute_keys_for_prompts(model, tokenizer, prompts, ref, taught=False):
    """Base-model keys for a list of prompts (call with the adapter disabled).
    taught=True stores distinctive words; False (a query) stores all its words."""
    words = [distinctive_words(tokenizer, p) if taught else lexical_words(p) for p in prompts]
    return compute_keys(token_states(model, tokenizer, prompts), ref, words)


@dataclass
class Route:
    use_adapter: bool
    lex_score: float
    sent_margin: float
    nearest: int = -1     # index of the taught key with the best lexical score


def route(query, taught, ref, rule=RULE):
    """Decide whether `query` (a query Key) should be answered with the adapter."""
    if not taught:
        return Route(False, 0.0, -1.0)
    best, nearest = -1.0, -1
    for i, k in enumerate(taught):
        v = len(k.words & query.words) / max(1, len(k.words))
        if v > best:
            best, nearest = v, i
    sent_taught = torch.stack([k.sent for k in taught]) @ query.sent
    margin = (sent_taught.max() - (ref.sent_keys @ query.sent).max()).item()
    lex, sent = best >= LEX_THRESHOLD, margin >= SENT_MARGIN
    use = {"lex": lex, "sent": sent, "lex_and_sent": lex and sent, "lex_or_sent": lex or sent}[rule]
    return Route(use, best, margin, nearest)


@dataclass
class GateMemory:
    """Taught keys kept beside an adapter (store them with the checkpoint)."""
    ref: Reference
    keys: list = field(default_factory=list)
    prompts: list = field(default_factory=list)

    def add(self, model, tokenizer, prompts):
        self.keys += compute_keys_for_prompts(model, tokenizer, prompts, self.ref, taught=True)
        self.prompts += list(prompts)

    def decide(self, model, tokenizer, prompt):
        q = compute_keys_for_prompts(model, tokenizer, [prompt], self.ref)[0]
        return route(q, self.keys, self.ref)
