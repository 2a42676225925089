"""Reference implementation of the memz key-memory gate (GRACE/WISE-style routing).

Idea: the adapter is only used for questions that are about something it was taught.
For every taught example we store keys computed by the BASE model (adapter disabled)
from the example's user text; a query is routed to the adapter only when its key is
close to a taught key, else it is answered by the base model (adapter disabled), so
unrelated questions keep the base model's answers exactly.

Two complementary signals, both computed on the raw user text (no chat template,
no special tokens), dropping position 0 (an attention-sink position whose hidden
state has a huge norm and carries no content):

1. Token signal (lexical-semantic, layer 0 = input embeddings, no forward needed):
   tokens of a taught prompt whose z-scored embedding has cosine < NOVELTY (0.6) to
   every token of the reference prompts are its *distinctive* tokens (names, codes,
   invented words). token_score(query, taught) = mean of the top-2 (or 1 if only one)
   best cosines between each distinctive token and any query token.
2. Sentence signal (layer 6, max-pool over tokens, z-scored per dimension with the
   reference prompts' mean/std, L2-normalised):
   sent_margin(query) = max cos to taught keys - max cos to reference keys.

Route to the adapter iff token_score >= TOKEN_THRESHOLD (0.9) or sent_margin >=
SENT_MARGIN (0.16) [see RESEARCH_NOTES.md for the measured distributions].

The reference prompts are general prompts (e.g. the anchor prompts); they define
both the z-scoring statistics and the "general" negatives. Everything is torch only.
"""
from dataclasses import dataclass, field

import torch

SENT_LAYER = 6          # hidden_states index (0 = embeddings) for the sentence key
TOKEN_LAYER = 0         # embeddings for the token key
NOVELTY = 0.6           # taught token is distinctive if max cos to reference tokens < this
TOKEN_THRESHOLD = 0.9   # route if top-2 mean distinctive-token match >= this
SENT_MARGIN = 0.16      # route if sentence margin >= this
EPS = 1e-3


def _norm(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def token_states(model, tokenizer, prompts, layers=(TOKEN_LAYER, SENT_LAYER)):
    """Per prompt: {layer: [T, H] float tensor} of base-model hidden states over the
    prompt's tokens (raw text, no template), position 0 dropped. Call with the
    adapter disabled (``with peft_model.disable_adapter():``)."""
    out = []
    need_forward = any(l > 0 for l in layers)
    for p in prompts:
        ids = tokenizer(p, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] < 2:  # one-token prompt: keep it rather than drop everything
            ids = torch.cat([ids, ids], 1)
        if need_forward:
            hs = model(ids, output_hidden_states=True).hidden_states
        else:
            hs = [model.get_input_embeddings()(ids)]
        out.append({l: hs[l][0, 1:].float() for l in layers})
    return out


@dataclass
class Reference:
    """Statistics of the reference (general) prompts."""
    tok_mu: torch.Tensor
    tok_sd: torch.Tensor
    tok_bank: torch.Tensor    # z-scored, normalised reference tokens [N, H]
    sent_mu: torch.Tensor
    sent_sd: torch.Tensor
    sent_keys: torch.Tensor   # z-scored, normalised reference sentence keys [M, H]


def build_reference(states):
    """states: token_states() of the reference prompts."""
    toks = torch.cat([s[TOKEN_LAYER] for s in states])
    tmu, tsd = toks.mean(0), toks.std(0) + EPS
    sent = torch.stack([s[SENT_LAYER].max(0).values for s in states])
    smu, ssd = sent.mean(0), sent.std(0) + EPS
    return Reference(tmu, tsd, _norm((toks - tmu) / tsd), smu, ssd, _norm((sent - smu) / ssd))


@dataclass
class Key:
    sent: torch.Tensor          # [H] sentence key
    toks: torch.Tensor          # [T, H] all tokens (z-scored, normalised)
    distinctive: torch.Tensor   # [D, H] distinctive tokens (D >= 1)


def compute_keys(states, ref):
    """Keys for taught prompts or queries from their token_states()."""
    keys = []
    for s in states:
        t = _norm((s[TOKEN_LAYER] - ref.tok_mu) / ref.tok_sd)
        novelty = (t @ ref.tok_bank.T).max(1).values
        d = t[novelty < NOVELTY]
        if len(d) == 0:
            d = t[novelty.argmin()].unsqueeze(0)
        sent = _norm((s[SENT_LAYER].max(0).values - ref.sent_mu) / ref.sent_sd)
        keys.append(Key(sent, t, d))
    return keys


def compute_keys_for_prompts(model, tokenizer, prompts, ref):
    """Convenience: base-model keys for a list of prompts (adapter must be disabled)."""
    return compute_keys(token_states(model, tokenizer, prompts), ref)


@dataclass
class Route:
    use_adapter: bool
    token_score: float
    sent_margin: float
    nearest: int = -1           # index of the taught key with the best token score


def route(query, taught, ref):
    """Decide whether `query` (a Key) should be answered with the adapter."""
    if not taught:
        return Route(False, 0.0, -1.0)
    best, nearest = -1.0, -1
    for i, k in enumerate(taught):
        s = (k.distinctive @ query.toks.T).max(1).values
        v = s.topk(min(2, len(s))).values.mean().item()
        if v > best:
            best, nearest = v, i
    sent_taught = torch.stack([k.sent for k in taught]) @ query.sent
    margin = (sent_taught.max() - (ref.sent_keys @ query.sent).max()).item()
    use = best >= TOKEN_THRESHOLD or margin >= SENT_MARGIN
    return Route(use, best, margin, nearest)


@dataclass
class GateMemory:
    """Taught keys kept beside an adapter (store them with the checkpoint)."""
    ref: Reference
    keys: list = field(default_factory=list)
    prompts: list = field(default_factory=list)

    def add(self, model, tokenizer, prompts):
        self.keys += compute_keys_for_prompts(model, tokenizer, prompts, self.ref)
        self.prompts += list(prompts)

    def decide(self, model, tokenizer, prompt):
        return route(compute_keys_for_prompts(model, tokenizer, [prompt], self.ref)[0], self.keys, self.ref)
