"""One batch, start to finish: parent -> train -> evaluate -> verdict -> commit.

The learner trains a batch on top of the checkpoint that serves (its parent,
from memzd.adapters), measures the result (memzd.evaluator), decides its
status, writes its folder (memzd.checkpoints) and records it (memzd.store).

A 'forget' batch (memzctl forget) trains the forgotten questions toward the
base model's own answers and drops their keys; in a learning batch, a
question asked again with another answer supersedes the earlier example
(it leaves replay and the key memory).

The commit checks, in the same transaction that makes the new checkpoint
current, that its parent still serves. If a rollback (or anything else)
changed what serves while the batch trained, the new checkpoint is not
recorded: its folder is removed and the batch goes back to the queue, so it
trains again on top of what serves now. A rollback is never undone by a
batch that was already training, and its examples are still learned.

Hooks (`Hooks`) let the daemon answer questions between steps and stop the
run for a signal; `Learner.write` is the seam through which a checkpoint
folder is written (tests replace it to fail or pause there).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import anchors as anchor_mod
from . import formats as formats_mod
from . import gate, lora
from .adapters import Adapters
from .checkpoints import check_state, new_id, write_checkpoint
from .config import Config, Home
from .evaluator import (ADAPTER_ANCHORS, AnchorSet, evaluate, forgetting_loss, holds, prepare_anchor_set, verdict,
                        verdict_reasons)
from .examples import about_others, answer_of, content_hash, expand, expand_with_sources, to_chat
from .files import write_atomic
from .inference import Cancelled, all_cores, greedy_answers
from .model import cache_root
from .nullspace import Inputs, NullSpace, sums_bytes
from .store import CheckpointRow, ParentMoved, Store, utcnow
from .tokens import IGNORE, Encoded, encode
from .trainer import Interrupted, TrainCallback, TrainResult, train

log = logging.getLogger("memz.learner")

TRAINING_CURVE_ANCHORS = 8  # anchors sampled for the during-training forgetting curve (a few seconds each)
REPLAY_POOL = 10            # replay draws from at most this many times training.replay earlier examples
GENERAL_ANSWER_TOKENS = 16  # training.general trains the first this many tokens of each general answer
HELD_INPUTS_BYTES = 2 << 30  # training.null_space: the anchors' input sums are held across batches up to this size
NAMES_ANSWER_TOKENS = 16  # training.null_space_names: the base model's answers to the questions about names
NAMES_BATCH = 32  # ...generated this many at a time: 64 in 5.5 s instead of 7.0 s by 16 on 2 CPU cores, the same
                  # answers, and a request waits at most one such pass
INPUTS_FORMAT = 1  # bump when what the cached input sums hold changes
NULL_SPACE_MEMORY_SHARE = 0.5  # training.null_space is skipped where its input sums would take more of the memory


@dataclass
class _NullCache:
    """training.null_space, kept from batch to batch while the anchors and the
    LoRA-wrapped modules stay the same: the anchors' input sums (None until
    gathered, or when too big to hold) and the null space of the anchors alone by
    `keep`."""
    anchors: AnchorSet
    modules: frozenset
    inputs: Inputs | None = None
    too_big: bool = False
    off: bool = False  # the sums would take more than training.null_space_max_gb or the machine can spare
    spaces: dict[float, NullSpace] = field(default_factory=dict)


def _machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass
class Hooks:
    """What the daemon lends a run: a safe point to answer questions, a stop flag, a status line."""

    between: Callable[[], None] = lambda: None
    stop: threading.Event = field(default_factory=threading.Event)
    activity: Callable[[str], None] = lambda text: None

    def pause(self) -> None:
        """A safe point inside long work: raise Interrupted if a stop was asked, else answer questions."""
        if self.stop.is_set():
            raise Interrupted()
        self.between()


class NothingToTrain(Exception):
    """Every example of the batch was forgotten before it trained."""


class Retrain(Exception):
    """The batch's parent no longer serves: it goes back to the queue to train on what serves now."""


class Anchors:
    """The sampled anchors with the base model's answers, prepared once per base model
    (cached for the machine) on first use; questions are answered while they are computed."""

    def __init__(self, config: Config, home: Home, adapters: Adapters, base_name: str):
        self.config, self.home, self.adapters, self.base_name = config, home, adapters, base_name
        self._set: AnchorSet | None = None
        self.ready = False

    def get(self, hooks: Hooks) -> AnchorSet | None:
        if self.ready:
            return self._set
        cfg = self.config.evaluation
        everything = anchor_mod.load_anchors(cfg, self.home)
        if everything:
            sample = anchor_mod.sample(everything, cfg.anchor_sample, self.config.training.seed)
            key = anchor_mod.cache_key(self.base_name, sample, cfg.anchor_max_tokens)
            cached = anchor_mod.cached_reference(cache_root() / "anchors", key)
            if cached is None:
                log.info("computing the base model's answers to %d anchors (once per base model)", len(sample))
                hooks.activity(f"computing the base model's answers to anchors: 0 of {len(sample)} "
                               "(once per base model; files and questions are taken meanwhile)")

            def progress(done: int, total: int) -> None:
                log.info("anchors: %d of %d answered", done, total)
                hooks.activity(f"computing the base model's answers to anchors: {done} of {total} "
                               "(once per base model; files and questions are taken meanwhile)")

            a = self.adapters
            try:
                self._set, fresh = prepare_anchor_set(
                    a.model, a.tokenizer, sample, a.device, cfg.anchor_max_tokens,
                    self.config.training.max_seq_len, cached, between=hooks.between, cancelled=hooks.stop.is_set,
                    progress=progress)
            except Cancelled:
                raise Interrupted() from None
            if cached is None:
                anchor_mod.store_reference(cache_root() / "anchors", key, fresh)
        self.ready = True
        return self._set


class _Steps(TrainCallback):
    """Records each step, samples the forgetting curve, answers questions between steps."""

    def __init__(self, learner: "Learner", batch_id: int, hooks: Hooks, anchor_set: AnchorSet | None):
        self.l, self.batch_id, self.hooks, self.anchor_set = learner, batch_id, hooks, anchor_set
        self.total = learner.config.training.max_steps
        self.started = time.perf_counter()
        self.done = 0  # steps of earlier rounds: a round's steps are counted on from them

    def next_round(self, done: int) -> None:
        self.done, self.total = done, done + self.l.config.training.max_steps

    def on_step(self, step: int, loss: float, tokens: int) -> None:
        l = self.l
        step += self.done
        l.store.add_metric(self.batch_id, step, "finetune_loss", loss)
        every = l.config.training.eval_every
        if self.anchor_set and every and step % every == 0:
            a = l.adapters
            with all_cores():
                fl = forgetting_loss(a.model, a.tokenizer, self.anchor_set, lora.TRAIN, a.device,
                                     l.config.training.max_seq_len, limit=TRAINING_CURVE_ANCHORS)
            l.store.add_metric(self.batch_id, step, "forgetting_loss", fl)
        self.hooks.activity(f"training batch {self.batch_id}: step {step}/{self.total}, loss {loss:.4f}")
        log.info("batch %d step %d/%d loss %.4f (%.1fs)", self.batch_id, step, self.total, loss,
                 time.perf_counter() - self.started)

    def between_steps(self, step: int) -> None:
        self.hooks.between()

    def between_micro_batches(self, step: int) -> None:  # a step is several micro-batches
        self.hooks.pause()

    def should_stop(self) -> bool:
        return self.hooks.stop.is_set()


def _first_answer_tokens(e: Encoded, n: int) -> Encoded:
    """`e` ending after its first `n` answer tokens (a general answer drifts at its start,
    and its tail would only dilute the batch's own loss)."""
    first = next((i for i, t in enumerate(e.labels) if t != IGNORE), len(e.labels))
    return e.part(slice(first + n))


class Learner:
    """Trains batches into checkpoints for one home and one live model."""

    write = staticmethod(write_checkpoint)  # the seam through which checkpoint folders are written

    def __init__(self, home: Home, store: Store, config: Config, adapters: Adapters, base_name: str,
                 base_info: dict | None = None):
        self.home, self.store, self.config, self.adapters = home, store, config, adapters
        self.base_name, self.base_info = base_name, base_info or {}
        # The base model's anchor answers depend on its precision too: a bf16 or quantised
        # base has its own cache entry (an fp32 one keeps the name alone, as before).
        precision = [v for v in (self.base_info.get("dtype"), self.base_info.get("quantization"))
                     if v not in (None, "fp32", "none")]
        self.anchors = Anchors(config, home, adapters, "@".join([base_name, *precision]))
        self._general_cache = None
        self._null_cache = None

    def learn(self, batch_id: int, hooks: Hooks) -> str:
        """Train, evaluate and commit one batch; returns the new checkpoint's id.

        Raises Interrupted (stop requested: the batch stays queued), Retrain (what
        serves changed meanwhile), StorageError (the disk failed), or whatever the
        batch itself caused."""
        cfg, a = self.config, self.adapters
        t0 = time.perf_counter()
        batch = self.store.batch(batch_id)
        user = batch.get("user")  # whose lineage (None: the shared one)
        forgetting = batch.get("kind") == "forget"
        examples = self.store.batch_examples(batch_id)
        if not examples:
            raise NothingToTrain(f"batch {batch_id}: every example in it was forgotten before it trained")
        anchor_set = self.anchors.get(hooks)  # prepared before training, so its cost is not in the curve
        parent = a.serving(user)  # a parent that cannot serve is rolled back first, never trained on
        parent_state, parent_memory, changed = None, None, False
        if parent:
            parent_config, parent_state, parent_memory = a.state(parent)
            wanted = lora.peft_config(cfg.lora, lora.n_layers(a.model))
            changed = (parent_config.r != wanted.r or set(parent_config.target_modules) != set(wanted.target_modules)
                       or parent_config.layers_to_transform != wanted.layers_to_transform)
            if changed:
                log.warning("lora settings changed since %s: this batch starts a fresh adapter", parent)
                parent_state = None
        shard = cfg.lora.shard_size
        full = bool(shard) and parent_memory is not None and parent_memory.held() >= shard
        if (full or changed) and not forgetting and parent_memory is not None and cfg.routing.enabled:
            # The parent's adapter is full (or of other settings): it stays as it is, a frozen
            # shard that keeps answering what it holds, and this batch trains a fresh adapter beside it.
            log.info("batch %d: %s holds %d taught questions%s: it is kept as a shard and this batch starts "
                     "a fresh adapter", batch_id, parent, parent_memory.held(),
                     f" (lora.shard_size {shard})" if full else " under other lora settings")
            parent_state, parent_memory = None, parent_memory.frozen(parent)
        forgotten: list[dict] = []
        gone: set[str] = set()  # (forgetting) the content hashes of the examples whose keys leave
        sources: list[str] = []  # (learning) the example each trained example comes from
        if forgetting:  # teach the lineage the base model's own answers to the forgotten questions,
            # the questions written about forgotten statements included (they were trained and keyed)
            gone = {content_hash(e) for e in examples}
            forgotten = expand(examples)
            examples = self._base_answers(forgotten, hooks)
        else:  # an earlier answer to a question asked again leaves replay and the key memory
            superseded = self.store.supersede(batch_id, parent)
            # without the earlier answers the batch itself corrects, with the other phrasings that joined it
            examples = self.store.batch_examples(batch_id)
            if superseded and parent_memory is not None:
                parent_memory = parent_memory.without(a.model, a.tokenizer, [
                    gate.question_text(q) for q in self._questions(expand(superseded))], a.device,
                    {content_hash(e) for e in superseded})
            # with the questions written about their statements (memzd.examples), each keyed by its example
            taught = expand_with_sources(examples)
            examples, sources = [e for e, _ in taught], [source for _, source in taught]
        # Replay: earlier examples of this lineage, a seeded sample of at most REPLAY_POOL
        # times the per-epoch count, from which each epoch draws afresh.
        # Only what the adapter in training holds is replayed: frozen shards keep their own.
        replay = self.store.replay_sample(parent, REPLAY_POOL * cfg.training.replay, cfg.training.seed + batch_id,
                                          exclude_batch=batch_id,
                                          stop_at=set(parent_memory.shards) if parent_memory is not None else set())
        encoded = [encode(e, a.tokenizer, cfg.training.max_seq_len) for e in examples]
        replayed = [encode(e, a.tokenizer, cfg.training.max_seq_len) for e in expand(replay)]
        cut = [e for e in encoded if e.cut]
        if cut:  # said once per batch, where the user looks: the log, the events, the metrics
            why = (f"batch {batch_id}: {len(cut)} example(s) longer than training.max_seq_len "
                   f"({cfg.training.max_seq_len} tokens) were cut from the front, up to {max(e.cut for e in cut)} "
                   "tokens: their questions may be lost; raise training.max_seq_len or split them")
            log.warning(why)
            self.store.log_event("cut", why, batch=batch_id)
        torch.manual_seed(cfg.training.seed)  # a fresh adapter's init, then the steps: reproducible
        lora.start_training(a.model, cfg.lora, parent_state)
        log.info("batch %d%s: training on %d examples (+%d per epoch replayed from %d earlier) from %s",
                 batch_id, f" (user {user})" if user else "", len(examples), min(cfg.training.replay, len(replay)),
                 len(replay), parent or "the base model")
        with all_cores():
            memory = (self._forget_keys(parent_memory, forgotten, gone) if forgetting
                      else self._memory(parent_memory, examples, sources))
        steps = _Steps(self, batch_id, hooks, anchor_set)
        general = self._general(anchor_set)
        constrain = self._constraint(anchor_set, parent_state is not None, hooks, examples) if encoded else None
        result, rounds = TrainResult(), 0
        while True:  # a round of up to max_steps; another while a taught answer is still wrong
            rounds += 1
            if encoded:  # (forgetting notes only: the parent's weights, without their keys)
                more = train(a.model, encoded, cfg.training, pad_id=a.tokenizer.pad_token_id, device=a.device,
                             callback=steps, replay=replayed, general=general, constrain=constrain)
                result = result.then(more)
            metrics = self._evaluate(batch_id, examples, anchor_set, memory, forgotten, hooks)
            recall = metrics.get("recall")
            if (not encoded or more.stopped_early or forgetting or rounds >= cfg.training.rounds
                    or recall is None or recall >= 1.0):
                break
            log.info("batch %d: recall %.2f after %d steps: another round of up to %d", batch_id, recall,
                     len(result.losses), cfg.training.max_steps)
            steps.next_round(len(result.losses))
        if memory is not None and memory.shards:
            metrics.update(adapters=len(memory.shards) + 1, questions_held=memory.held())
        metrics.update(n_examples=len(examples), n_cut=len(cut), rounds=rounds,
                       finetune_loss=result.losses[-1] if result.losses else None, steps=len(result.losses),
                       train_seconds=round(result.seconds, 2), trained_tokens=result.tokens,
                       eval_seconds=round(time.perf_counter() - t0 - result.seconds, 2))
        status = verdict(metrics, cfg.evaluation)
        if status != "stable":  # say why, where the user looks
            self.store.log_event("verdict", f"batch {batch_id}: {status}: "
                                 + "; ".join(verdict_reasons(metrics, cfg.evaluation)), batch=batch_id)
        ckpt = self._commit(batch_id, parent, examples, metrics, status, memory, user)
        log.info("batch %d done in %.1fs: %s", batch_id, time.perf_counter() - t0,
                 ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        return ckpt

    def _evaluate(self, batch_id: int, examples: list[dict], anchor_set: AnchorSet | None, memory,
                  forgotten: list[dict], hooks: Hooks) -> dict:
        """The trained adapter's figures (memzd.evaluator), served through `memory`."""
        a, cfg = self.adapters, self.config
        hooks.activity(f"evaluating batch {batch_id}")
        with all_cores():  # the checks are batched work that nothing else waits on but answers
            try:
                metrics = evaluate(a.model, a.tokenizer, a.device, examples, anchor_set,
                                   a.router(lora.TRAIN, memory), cfg.training.max_seq_len,
                                   cfg.evaluation.anchor_max_tokens, cancelled=hooks.stop.is_set)
            except Cancelled:
                raise Interrupted() from None
            if forgotten:
                metrics["forgotten_gone"] = self._gone(forgotten, a.router(lora.TRAIN, memory), hooks)
        return metrics

    def _general_texts(self, anchor_set: AnchorSet) -> list[Encoded]:
        """The anchors with the base model's own answers, encoded: all but the first
        ADAPTER_ANCHORS, which measure the adapter alone and stay unseen."""
        if self._general_cache is None or self._general_cache[0] is not anchor_set:
            chats = [a.chat + [{"role": "assistant", "content": ans}]
                     for a, ans in zip(anchor_set.anchors[ADAPTER_ANCHORS:], anchor_set.base_greedy[ADAPTER_ANCHORS:])
                     if ans]
            self._general_cache = (anchor_set, [encode({"messages": c}, self.adapters.tokenizer,
                                                       self.config.training.max_seq_len) for c in chats])
        return self._general_cache[1]

    def _general(self, anchor_set: AnchorSet | None) -> list[Encoded]:
        """What training.general mixes into every epoch: the general texts, each cut
        after its first GENERAL_ANSWER_TOKENS answer tokens."""
        if not self.config.training.general or anchor_set is None:
            return []
        return [_first_answer_tokens(e, GENERAL_ANSWER_TOKENS) for e in self._general_texts(anchor_set)]

    def _constraint(self, anchor_set: AnchorSet | None, parent: bool, hooks: Hooks, examples: list[dict]):
        """training.null_space: the projection that keeps this batch's change to the
        adapter out of what general text uses (memzd.nullspace): the anchors, gathered
        once, and with training.null_space_names the batch's questions asked about
        well-known names (examples.about_others), gathered for each batch and added
        to them."""
        keep, a = self.config.training.null_space, self.adapters
        if not keep or anchor_set is None:
            return None
        texts = self._general_texts(anchor_set)
        if not texts:
            log.warning("training.null_space is set but there are no general texts to measure it on (the "
                        "anchors past the first %d, with answers): this batch trains without it", ADAPTER_ANCHORS)
            return None
        modules = frozenset(n for n, m in a.model.named_modules() if lora.TRAIN in getattr(m, "lora_A", {}))
        held = self._null_cache
        if held is None or held.anchors is not anchor_set or held.modules != modules:
            held = self._null_cache = _NullCache(anchor_set, modules)
            need, memory, cap = sums_bytes(a.model), _machine_memory(), self.config.training.null_space_max_gb
            if cap and need > cap * 1e9:
                held.off = True
                log.warning("training.null_space is off for this base model: its input sums would take up to %.1f "
                            "GB, more than training.null_space_max_gb (%g); raise it to keep the adapter alone's "
                            "general answers on this base too", need / 1e9, cap)
            elif memory and need > NULL_SPACE_MEMORY_SHARE * memory:
                held.off = True
                log.warning("training.null_space is off for this base model: its input sums would take up to %.1f "
                            "GB, more than %d%% of this machine's %.1f GB of memory", need / 1e9,
                            NULL_SPACE_MEMORY_SHARE * 100, memory / 1e9)
        if held.off:
            return None
        asking = [gate.question_text(q) for q in self._questions(examples) if q and q[-1]["role"] == "user"]
        others = about_others(asking, self.config.training.null_space_names)
        if not others and keep in held.spaces:
            return held.spaces[keep].bind(a.model, lora.TRAIN, parent)
        hooks.activity("measuring the null space of general text (training.null_space)"
                       + (f" and of {len(others)} of this batch's questions asked about well-known names" if others
                          else ""))
        t0 = time.perf_counter()
        asked = self._about_others(others, hooks) if others else []
        with all_cores():  # requests are answered while it measures, and a stop is not kept waiting
            def gather(encoded: list[Encoded], onto: Inputs | None = None) -> Inputs:
                return Inputs.gather(a.model, encoded, a.device, a.tokenizer.pad_token_id, hooks.pause, onto)

            if held.inputs is None and not held.too_big:
                inputs = self._general_inputs(texts, modules, gather)
                if inputs.nbytes <= HELD_INPUTS_BYTES:
                    held.inputs = inputs.copy() if asked else inputs
                else:  # a large base's (~11 GB for a 7B): gathered again for every batch instead
                    held.too_big = True
            elif held.too_big:
                inputs = gather(texts)
            else:
                inputs = held.inputs.copy() if asked else held.inputs
            if asked:
                gather(asked, onto=inputs)
            null = inputs.null_space(keep, a.device)
        log.info("training.null_space %.3g: measured on %d general texts%s in %.1fs; LoRA A may use %d-%d "
                 "input dimensions", keep, len(texts), f" and {len(asked)} taught questions about well-known "
                 "names" if asked else "", time.perf_counter() - t0, min(null.kept.values()), max(null.kept.values()))
        if not asked:  # the anchors' alone is the same for every batch
            held.spaces[keep] = null
        return null.bind(a.model, lora.TRAIN, parent)

    def _general_inputs(self, texts: list[Encoded], modules: frozenset, gather) -> Inputs:
        """The general texts' input sums (memzd.nullspace.Inputs): cached for the machine
        (model.cache_root) while they are small enough to hold (HELD_INPUTS_BYTES;
        ~200 MB for the bundled model), as the anchors' answers are; else gathered."""
        a = self.adapters
        key = hashlib.sha256(json.dumps([INPUTS_FORMAT, self.anchors.base_name, a.device.type, sorted(modules),
                                         [e.input_ids for e in texts]]).encode()).hexdigest()[:16]
        path = cache_root() / "nullspace" / f"inputs-{key}.safetensors"
        cached = Inputs.read(path)
        if cached is not None:
            log.info("training.null_space: the general texts' input sums read from %s", path)
            return cached
        inputs = gather(texts)
        if inputs.nbytes <= HELD_INPUTS_BYTES:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, inputs.to_bytes())
            except OSError as e:  # a cache: the next daemon gathers them again
                log.warning("training.null_space: could not cache the general texts' input sums in %s: %s", path, e)
        return inputs

    def _about_others(self, questions: list[str], hooks: Hooks) -> list[Encoded]:
        """The questions with the base model's own answers, encoded as general text."""
        chats = [[{"role": "user", "content": q}] for q in questions]
        with all_cores():
            answers = self._base_greedy(chats, hooks, NAMES_ANSWER_TOKENS, NAMES_BATCH)
        return [encode({"messages": c + [{"role": "assistant", "content": ans}]}, self.adapters.tokenizer,
                       self.config.training.max_seq_len) for c, ans in zip(chats, answers) if ans]

    def _base_greedy(self, chats: list[list[dict]], hooks: Hooks, max_tokens: int | None = None,
                     batch_size: int = 16) -> list[str]:
        """The base model's own greedy answers (`max_tokens` each, else
        evaluation.anchor_max_tokens), `batch_size` a pass, answering requests between
        passes; a stop raises Interrupted."""
        a = self.adapters
        try:
            return greedy_answers(a.model, a.tokenizer, chats, adapter=None, device=a.device,
                                  max_tokens=max_tokens or self.config.evaluation.anchor_max_tokens,
                                  batch_size=batch_size, between=hooks.between, cancelled=hooks.stop.is_set)
        except Cancelled:
            raise Interrupted() from None

    def _memory(self, parent_memory, examples: list[dict], sources: list[str]) -> gate.KeyMemory | None:
        """The parent's key memory extended with this batch's questions, each remembering the
        example it was taught by (None: routing off)."""
        r, a = self.config.routing, self.adapters
        if not r.enabled:
            return None
        questions = [gate.question_text(c[:-1]) if c else e["text"] for e in examples for c in [to_chat(e)]]
        if parent_memory is None or parent_memory.layer != r.layer:
            parent_memory = gate.KeyMemory.create(a.model, a.tokenizer, r.layer, a.device)
        memory = parent_memory.extend(a.model, a.tokenizer, questions, a.device, sources)
        return memory.with_rule(r.rule, r.lexical_threshold, r.margin)

    def _questions(self, examples: list[dict]) -> list[list[dict]]:
        return [c[:-1] if c else [{"role": "user", "content": e["text"]}] for e in examples for c in [to_chat(e)]]

    def _base_answers(self, forgotten: list[dict], hooks: Hooks) -> list[dict]:
        """The forgotten questions with the base model's own answers: what the lineage should
        say instead. A note ({"text"}) asks nothing: it only loses its keys and its replay."""
        chats = [c[:-1] for e in forgotten for c in [to_chat(e)] if c]
        if not chats:
            return []
        answers = self._base_greedy(chats, hooks)
        return [{"messages": chat + [{"role": "assistant", "content": ans or "I don't know."}]}
                for chat, ans in zip(chats, answers)]

    def _forget_keys(self, parent_memory, forgotten: list[dict], sources: set[str]) -> gate.KeyMemory | None:
        """The parent's key memory without the keys of the forgotten examples: by the example
        each key remembers, and (keys from before memz kept it) by the questions written today."""
        r, a = self.config.routing, self.adapters
        if not r.enabled or parent_memory is None:
            return parent_memory if r.enabled else None
        questions = [gate.question_text(q) for q in self._questions(forgotten)]
        return parent_memory.without(a.model, a.tokenizer, questions, a.device, sources).with_rule(
            r.rule, r.lexical_threshold, r.margin)

    def _gone(self, forgotten: list[dict], routes, hooks: Hooks) -> float | None:
        """Share of the forgotten examples whose answer the new checkpoint no longer gives."""
        a = self.adapters
        probes = [(q, answer_of(e)) for e, q in zip(forgotten, self._questions(forgotten)) if to_chat(e)]
        if not probes:
            return None
        gone = 0
        try:
            for (q, old), adapter in zip(probes, routes([q for q, _ in probes])):
                said = greedy_answers(a.model, a.tokenizer, [q], adapter=adapter, device=a.device,
                                      max_tokens=64, cancelled=hooks.stop.is_set)[0]
                gone += not holds(said, old)
        except Cancelled:
            raise Interrupted() from None
        return gone / len(probes)

    def _formats(self, parent: str | None, batch_id: int) -> tuple[formats_mod.Format, ...]:
        """The exact formats among what the lineage holds after this batch (memzd.formats):
        learned afresh each batch, so that a forgotten or superseded example leaves them."""
        at_least = self.config.routing.formats
        if not at_least:
            return ()
        pairs = [p for e in self.store.held(parent, batch_id) for c in [to_chat(e)] if c
                 for p in [formats_mod.single_turn(c)] if p is not None]
        return tuple(formats_mod.learn(pairs, at_least))

    def _commit(self, batch_id, parent, examples, metrics, status, memory, user) -> str:
        a = self.adapters
        state = lora.adapter_state(a.model, lora.TRAIN)
        config = a.model.peft_config[lora.TRAIN]
        check_state(state, config.r, f"batch {batch_id}'s adapter")  # a NaN from the last step never serves
        seq = self.store.next_checkpoint_seq()
        ckpt_id = new_id(seq)
        while (self.home.checkpoints / ckpt_id).exists() or (self.home.checkpoints / ".orphaned" / ckpt_id).exists():
            seq += 1
            ckpt_id = new_id(seq)
        formats = self._formats(parent, batch_id)
        meta = {"id": ckpt_id, "parent": parent, "batch_id": batch_id, "user": user, "base_model": self.base_name,
                "base": self.base_info, "shards": memory.shards if memory is not None else [],
                "formats": [f.to_dict() for f in formats],
                "created_at": utcnow(), "n_examples": len(examples), "status": status,
                "config": {"lora": vars(self.config.lora), "training": vars(self.config.training),
                           "routing": vars(self.config.routing)},
                "metrics": metrics,
                "curves": {"finetune_loss": self.store.curve(batch_id, "finetune_loss"),
                           "forgetting_loss": self.store.curve(batch_id, "forgetting_loss")}}
        path = self.write(self.home, ckpt_id, state, config, meta, memory.to_file() if memory is not None else None)
        row = CheckpointRow(id=ckpt_id, seq=seq, parent=parent, batch_id=batch_id, status=status,
                            created_at=meta["created_at"], path=str(path), base_model=self.base_name,
                            metrics=metrics, user=user)
        try:
            self.store.add_checkpoint(row, make_current=status != "rolled_back")
        except ParentMoved as moved:
            shutil.rmtree(path, ignore_errors=True)
            self.store.log_event("retrain", f"batch {batch_id} trained on {moved.parent or 'the base model'}, "
                                 f"but {moved.current or 'the base model'} serves now: it trains again on that",
                                 batch=batch_id)
            raise Retrain(str(moved)) from None
        known = set(a.loaded[parent].formats) if parent in a.loaded else set()
        a.add(ckpt_id, config, memory, state, formats)
        for f in formats:
            if f not in known:
                self.store.log_event("format", f"{ckpt_id}: new inputs of {f.describe()} are answered by it, exactly",
                                     checkpoint=ckpt_id, batch=batch_id)
        verb = {"stable": "now serves", "risky": "serves, marked risky",
                "rolled_back": "was rolled back; its parent keeps serving"}[status]
        self.store.log_event("checkpoint", f"{ckpt_id} {verb}", checkpoint=ckpt_id, batch=batch_id)
        if metrics.get("forgotten_gone") is not None:
            self.store.log_event("forget", f"{ckpt_id}: {metrics['forgotten_gone']:.0%} of the forgotten answers "
                                 "are no longer given", checkpoint=ckpt_id, batch=batch_id)
        log.info("checkpoint %s %s", ckpt_id, verb)
        return ckpt_id
