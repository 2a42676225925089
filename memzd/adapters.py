"""Which checkpoint serves, which adapters are loaded, and which questions each answers.

One owner for the serving state of the one live model. The learner asks it
for the parent of a batch (its weights and key memory) and hands it each new
checkpoint; the answerer asks it which checkpoint serves and where a
question is routed. Checkpoints are loaded into the live model once, by
name, and switched to in memory; at most LOADED_ADAPTERS stay loaded.

Each user with `user:NAME` examples has a lineage of their own on the same
base (the shared lineage is user None); a user's questions go to their own
adapter when it is about what they taught, else to the shared one.

A current checkpoint that cannot serve (its folder is corrupt, or it does not
fit the base) is marked rolled_back and its parent serves instead, the base
model at worst, so a bad adapter never stops memz.

Routing is written here once: an adapter answers a question when it has no
key memory (routing off) or its key memory admits the question (memzd.gate);
in a lineage held in several adapters (shards), the adapter that holds the
matching key answers, loaded on demand and kept loaded while a loaded
checkpoint routes to it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from . import formats as formats_mod
from . import gate, lora
from .checkpoints import load_checkpoint, sync_status
from .config import Home, RoutingConfig
from .errors import CheckpointError
from .store import Store

log = logging.getLogger("memz.adapters")

LOADED_ADAPTERS = 4  # checkpoints kept in memory at once (each a few MB)

Routes = Callable[[list[list[dict]]], "list[str | None]"]  # chats -> adapter names, None for the base model


class Route(NamedTuple):
    """Where a question goes: `adapter` (None: the base model), and the taught question it
    asks in other words (`gate.KeyMemory.cue`; None: it is asked as taught, or is no such
    question), which the adapter answers (`routing.answer_as`)."""

    adapter: str | None
    cue: str | None = None


@dataclass
class Loaded:
    """A checkpoint's adapter in the live model, with what routes to it."""

    config: object  # peft LoraConfig
    memory: gate.KeyMemory | None
    formats: tuple[formats_mod.Format, ...] = ()  # exact formats of its lineage's examples (memzd.formats)


class Adapters:
    """The serving state of the live model: loaded adapters, the current checkpoint, routing."""

    def __init__(self, home: Home, store: Store, model, tokenizer, device: torch.device,
                 base_name: str, routing: RoutingConfig):
        self.home, self.store = home, store
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.base_name, self.routing = base_name, routing
        self.loaded: OrderedDict[str, Loaded] = OrderedDict()

    # -- loading --------------------------------------------------------------

    def ensure(self, checkpoint_id: str) -> Loaded:
        """A checkpoint's adapter, loaded by name once; CheckpointError if it cannot serve."""
        if checkpoint_id in self.loaded:
            self.loaded.move_to_end(checkpoint_id)
            return self.loaded[checkpoint_id]
        config, state, meta, keys = load_checkpoint(self.home.checkpoints / checkpoint_id, self.base_name,
                                                     root=self.home.checkpoints)
        try:
            lora.add_adapter(self.model, checkpoint_id, config, state)
        except (KeyError, RuntimeError, ValueError) as exc:  # ValueError: target modules the base lacks
            lora.drop_adapter(self.model, checkpoint_id)
            raise CheckpointError(f"{checkpoint_id}: adapter does not fit the base model: {exc}") from exc
        try:
            memory = gate.KeyMemory.from_file(*keys) if keys else None
        except (KeyError, ValueError) as exc:
            lora.drop_adapter(self.model, checkpoint_id)
            raise CheckpointError(f"{checkpoint_id}: bad routing keys: {exc}") from exc
        try:
            formats = tuple(formats_mod.Format.from_dict(f) for f in meta.get("formats") or [])
        except (AttributeError, ValueError) as exc:
            lora.drop_adapter(self.model, checkpoint_id)
            raise CheckpointError(f"{checkpoint_id}: bad formats in meta.json: {exc}") from exc
        return self.add(checkpoint_id, config, memory, formats=formats)

    def add(self, checkpoint_id: str, config, memory: gate.KeyMemory | None,
            state: dict[str, torch.Tensor] | None = None, formats: tuple = ()) -> Loaded:
        """Take on an adapter: `state` is loaded under the checkpoint's name when given
        (a checkpoint just trained), else it is already in the model."""
        if state is not None:
            lora.add_adapter(self.model, checkpoint_id, config, state)
        self.loaded[checkpoint_id] = Loaded(config, memory, tuple(formats))
        self.loaded.move_to_end(checkpoint_id)
        # Shards a loaded checkpoint routes to stay; of the rest, the least recently used go.
        shards = {s for ld in self.loaded.values() if ld.memory is not None for s in ld.memory.shards}
        evictable = [c for c in self.loaded if c not in shards and c != checkpoint_id]
        for old in evictable[:max(0, len(self.loaded) - len(shards & self.loaded.keys()) - LOADED_ADAPTERS)]:
            del self.loaded[old]
            lora.drop_adapter(self.model, old)
        return self.loaded[checkpoint_id]

    def state(self, checkpoint_id: str):
        """(peft config, weights, key memory) of a checkpoint, loading it if needed."""
        loaded = self.ensure(checkpoint_id)
        return loaded.config, lora.adapter_state(self.model, checkpoint_id), loaded.memory

    # -- what serves ----------------------------------------------------------

    def serving(self, user: str | None = None) -> str | None:
        """The current checkpoint of `user`'s lineage (None: the shared one), loaded; None
        means the base model. One that cannot serve is marked rolled_back and its parent
        made current instead."""
        ckpt, seen = self.store.current_checkpoint(user), set()
        while ckpt is not None and ckpt not in seen:
            seen.add(ckpt)
            try:
                self.ensure(ckpt)
                return ckpt
            except CheckpointError as exc:
                row = self.store.checkpoint(ckpt)
                parent = row.parent if row else None
                log.error("current checkpoint %s cannot serve (%s); %s serves instead", ckpt, exc,
                          parent or "the base model")
                self.store.roll_back(ckpt, parent, f"{ckpt} could not serve: {exc}", user)
                sync_status(self.home.checkpoints, self.store, ckpt)
                ckpt = parent
        return None

    # -- routing --------------------------------------------------------------

    def route_with(self, adapter: str, memory: gate.KeyMemory | None, chat: list[dict]) -> Route:
        """The rule: `adapter` answers `chat` if routing is off, the adapter has no key
        memory, or its memory admits the question; else the base model (None) does. A
        question matching a frozen shard's key goes to that shard's adapter."""
        return self.routed(adapter, memory, [chat])[0]

    def route(self, checkpoint_id: str | None, chat: list[dict]) -> Route:
        """Where a question to `checkpoint_id` goes: its adapter, or the base model."""
        if checkpoint_id is None:
            return Route(None)
        return self.route_with(checkpoint_id, self.ensure(checkpoint_id).memory, chat)

    def answering(self, chat: list[dict], user: str | None = None) -> tuple[str | None, Route]:
        """(checkpoint, route) that answer `chat` for `user`: the user's own lineage
        when its key memory admits the question, else the shared one's route. A user's
        facts never reach another user's answers: only `user`'s lineage is consulted."""
        if user is not None:
            own = self.serving(user)
            route = self.route(own, chat)
            if route.adapter is not None:
                return own, route
        shared = self.serving()
        return shared, self.route(shared, chat)

    def formatted(self, chat: list[dict], checkpoints: list[str | None]) -> tuple[str, formats_mod.Format, str] | None:
        """(checkpoint, format, reply) where the question `chat` ends with is an input of
        an exact format of one of `checkpoints` (the first that has one), else None."""
        if not self.routing.formats or not chat or chat[-1].get("role") != "user":
            return None
        for ckpt in checkpoints:
            if ckpt is not None:
                found = formats_mod.answer(self.ensure(ckpt).formats, str(chat[-1].get("content", "")))
                if found is not None:
                    return ckpt, *found
        return None

    def router(self, adapter: str, memory: gate.KeyMemory | None) -> Routes:
        """The adapters that answer many chats to `adapter` (a checkpoint, or the candidate
        being evaluated), the hidden keys computed in batches (`routed`)."""
        def routes(chats: list[list[dict]]) -> list[str | None]:
            return [r.adapter for r in self.routed(adapter, memory, chats)]
        return routes

    def routed(self, adapter: str, memory: gate.KeyMemory | None, chats: list[list[dict]]) -> list[Route]:
        """The route of each chat to `adapter`: the adapter (or the frozen shard) holding the
        key the chat matches, with that key's question where the chat asks it in other words
        (unless `routing.answer_as` is "asked"); the base model where no key admits it, or
        where it asks about a taught thing what nothing taught about it answers
        (`gate.KeyMemory.resolve`)."""
        if not self.routing.enabled or memory is None:
            return [Route(adapter)] * len(chats)
        out = []
        for chat, key in zip(chats, memory.matches(self.model, self.tokenizer, chats, self.device)):
            cue = None
            if key is not None and self.routing.answer_as != "asked":
                key, cue = memory.resolve(key, gate.question_text(chat)) or (None, None)
            owner = None if key is None else memory.owners[key]
            to = None if key is None else adapter if owner is None else self._shard(owner)
            out.append(Route(to, cue if to is not None else None))
        return out

    def _shard(self, checkpoint_id: str) -> str | None:
        """A frozen shard's adapter, loaded; None (the base model answers) if it cannot serve."""
        try:
            self.ensure(checkpoint_id)
            return checkpoint_id
        except CheckpointError as exc:
            log.error("shard %s cannot serve (%s); the base model answers its questions", checkpoint_id, exc)
            return None
