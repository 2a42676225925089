"""Training one batch: LoRA steps on encoded examples, and nothing else.

`train()` does no I/O. The daemon passes a callback whose hooks (no-ops by
default) record each step's loss, answer queries between steps, sample the
forgetting curve, and ask the loop to stop for a signal.

Speed (bench/speed.py measures each choice against the plain way, one at a
time): a step's examples are packed end to end into rows of about
ROW_TOKENS tokens (memzd.tokens.pack: no example sees another, and there is
little padding), the LM head runs only on answer tokens and its loss is
taken in cache-sized chunks (memzd.tokens.AnswerCE), no KV cache is built,
each LoRA projection is one autograd node (memzd.lora.FusedLoRA), and the
math runs under bf16 autocast where the hardware has fast bf16 (CUDA, and
CPUs with AVX512-BF16 or AMX). After the first epoch the frozen layers below
LoRA are not run again (memzd.prefix). On the CPU the frozen weights are
used from a bf16 copy, each layer's input is cast to bf16 once rather than by
every projection (memzd.bf16), and attention runs eagerly; see Levers. A
step's gradient does not depend on how it is split into micro-batches:
losses are summed over answer tokens and divided once by their count.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .config import TrainingConfig
from .bf16 import Bf16Activations, Bf16Weights
from .lora import FusedLoRA
from .prefix import FrozenPrefix
from .tokens import Encoded, RowLoss, answer_loss, causal_lm, collate, pack

MICRO_BATCH_TOKENS = 1024  # padded tokens per forward/backward: bounds memory and a query's wait
ROW_TOKENS = 128  # packed rows: long enough to hold a few examples, short enough to keep attention cheap


class Constraint(Protocol):
    """Where the trainable weights may go (memzd.nullspace.Projection)."""

    def gradients(self) -> None:
        """Before each optimizer step: the gradients reduced to where the weights may move."""

    def __call__(self) -> None:
        """After each optimizer step: the weights put back where they may be."""


class TrainCallback:
    """Hooks the loop calls; override what you need."""

    def on_step(self, step: int, loss: float, tokens: int) -> None:
        """After each optimizer step: `loss` is the mean over its answer tokens."""

    def between_steps(self, step: int) -> None:
        """A safe point to use the model for something else (answering a query)."""

    def between_micro_batches(self, step: int) -> None:
        """Also a safe point, inside a step (gradients so far are kept); keeps waits short."""

    def should_stop(self) -> bool:
        """True to abandon the run (SIGTERM); train() then raises Interrupted."""
        return False


class Interrupted(Exception):
    """Training was stopped from outside between two steps."""


@dataclass
class TrainResult:
    """What a run did: per-step losses, trained tokens, time."""

    losses: list[float] = field(default_factory=list)
    tokens: int = 0  # prompt and answer tokens fed, padding excluded
    seconds: float = 0.0
    stopped_early: bool = False

    def then(self, more: "TrainResult") -> "TrainResult":
        """This run followed by `more` (another round on the same weights)."""
        return TrainResult(self.losses + more.losses, self.tokens + more.tokens, self.seconds + more.seconds,
                           more.stopped_early)


def fast_bf16(device: torch.device) -> bool:
    """Does this device run bf16 matmuls faster than fp32? (CPU: AVX512-BF16 or AMX.)"""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False  # MPS: not measured yet, so fp32
    cpu = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str) -> str:
    """"auto" becomes bf16 where the device has fast bf16, else fp32."""
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast where asked for (or "auto" on fast-bf16 hardware); fp32 otherwise."""
    if resolve_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def micro_batches(examples: list[Encoded], size: int,
                  budget: int = MICRO_BATCH_TOKENS) -> list[list[Encoded]]:
    """Length-sorted micro-batches of at most `budget` tokens once padded to their
    longest (or of `size` examples, when those hold more)."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    batches: list[list[Encoded]] = []
    for e in ordered:
        width = len(e.input_ids)  # the longest so far: the list is sorted
        if not batches or ((len(batches[-1]) + 1) * width > budget and len(batches[-1]) >= size):
            batches.append([])
        batches[-1].append(e)
    return batches


def _epoch(n_new: int, n_replay: int, per_epoch: int, rng: random.Random) -> list[int]:
    """One epoch's example indices: every new example, plus a fresh sample of the replay pool."""
    picked = list(range(n_new)) + [n_new + i for i in rng.sample(range(n_replay), min(per_epoch, n_replay))]
    rng.shuffle(picked)
    return picked


def _split(epoch: list[int], per_step: int) -> list[list[int]]:
    """An epoch in steps of at most `per_step` examples, as even as they come
    (26 by 5 is 5,5,4,4,4,4, not 5,5,5,5,5,1: a one-example step would pull hard)."""
    n_steps = -(-len(epoch) // per_step)
    bounds = [round(k * len(epoch) / n_steps) for k in range(n_steps + 1)]
    return [epoch[a:b] for a, b in zip(bounds, bounds[1:])]


def learned(rows: RowLoss, stop_loss: float, which: list[bool] | None = None) -> bool:
    """Has every row (of those `which` marks) been learned: each answer token held
    to the word the model's top choice, and the mean loss on them below `stop_loss`?
    (A row with none, a note, has.)"""
    if which is not None:
        keep = torch.tensor(which, device=rows.loss.device)
        if not keep.any():
            return True
        rows = RowLoss(*(None if field is None else field[keep] for field in rows))
    loss, tokens = (rows.loss, rows.tokens) if rows.held_loss is None else (rows.held_loss, rows.held_tokens)
    return bool(rows.all_top1.all()) and (loss.detach() / tokens.clamp(min=1)).max().item() < stop_loss


@dataclass(frozen=True)
class Levers:
    """The speed choices of a run, all on by default; bench/speed.py turns each
    off in turn to measure it. They change how a loss is computed, not what."""

    packing: bool = True  # examples end to end in rows (memzd.tokens.pack), else one per padded row
    prefix_cache: bool = True  # the frozen layers below LoRA run once per example (memzd.prefix)
    fused_lora: bool = True  # one autograd node per LoRA projection (memzd.lora.FusedLoRA)
    bf16_weights: bool = True  # CPU bf16: bf16 copies of the frozen weights (memzd.bf16)
    bf16_activations: bool = True  # CPU bf16: layer inputs cast to bf16 once (memzd.bf16)
    eager_attention: bool = True  # CPU: its backward is several times faster than SDPA's at these lengths


class Passes:
    """How this run computes a micro-batch's loss: under bf16 autocast where
    asked for, with the Levers that are on."""

    def __init__(self, model, examples: list[Encoded], pad_id: int, device: torch.device,
                 precision: str, levers: Levers = Levers()):
        self.model, self.pad_id, self.device, self.precision = model, pad_id, device, precision
        self.packing = levers.packing
        bf16_cpu = resolve_precision(device, precision) == "bf16" and device.type == "cpu"
        self.weights = Bf16Weights(model) if bf16_cpu and levers.bf16_weights else None
        self.activations = Bf16Activations(model) if bf16_cpu and levers.bf16_activations else None
        self.fused = FusedLoRA(model) if levers.fused_lora else None
        self.prefix = FrozenPrefix.for_model(model) if levers.prefix_cache and examples else None
        if self.prefix and not self.prefix.agrees(min(examples, key=lambda e: len(e.input_ids)), device):
            self.prefix = None
        self.lm = causal_lm(model)
        self.serving_attention = self.lm.config._attn_implementation
        self.attention = "eager" if levers.eager_attention and device.type == "cpu" else self.serving_attention

    @contextmanager
    def micro_batch(self):
        """Hold this around a micro-batch's forward *and* backward pass; what it
        switches (weights, attention) is switched back before anything else runs."""
        if self.attention != self.serving_attention:
            self.lm.set_attn_implementation(self.attention)
        try:
            with (self.weights.active() if self.weights else nullcontext(),
                  self.activations.active() if self.activations else nullcontext(),
                  self.fused.active() if self.fused else nullcontext()):
                yield
        finally:
            if self.attention != self.serving_attention:
                self.lm.set_attn_implementation(self.serving_attention)

    def loss(self, examples: list[Encoded]) -> RowLoss:
        if self.packing:
            batch = pack(examples, self.pad_id, self.device, ROW_TOKENS)
        else:
            batch = collate(examples, self.pad_id, self.device)
        with autocast_for(self.device, self.precision):
            hidden = self.prefix.hidden(examples, batch) if self.prefix else None
            return answer_loss(self.model, batch, reduction="none", hidden=hidden)

    @torch.no_grad()
    def recalled(self, examples: list[Encoded], stop_loss: float) -> bool:
        """Does the model, as it is now, give every example back: each answer token
        its top choice and each example's loss below `stop_loss`?"""
        was_training = self.model.training
        self.model.eval()
        try:
            for mb in micro_batches(examples, 1):
                with self.micro_batch():
                    rows = self.loss(mb)
                if not learned(rows, stop_loss):
                    return False
            return True
        finally:
            self.model.train(was_training)


def train(model, examples: list[Encoded], cfg: TrainingConfig, *, pad_id: int,
          device: torch.device, callback: TrainCallback | None = None,
          replay: list[Encoded] = (), general: list[Encoded] = (), levers: Levers = Levers(),
          constrain: Constraint | None = None) -> TrainResult:
    """Run up to cfg.max_steps AdamW steps on the trainable parameters of `model`.

    Every setting comes from `cfg` (precision, stop_loss, replay per epoch);
    the keyword arguments are data and plumbing, not settings. An epoch is
    every example plus `cfg.replay` examples drawn afresh from `replay`
    (earlier batches, so that they are not erased) and `cfg.general` drawn
    afresh from `general` (general prompts with the base model's own answers,
    so that the adapter keeps them; they are never required to be learned,
    only kept near where they are). `constrain`, if given, reduces the
    gradients before every optimizer step and pulls the weights back where they
    may be after it (memzd.nullspace: training.null_space). A step covers
    batch_size * grad_accum of them, and its loss is averaged over answer
    tokens. The run stops after the first epoch in which every example's loss
    was below `stop_loss` and every answer token was the model's top choice
    given the ones before it (what a note or a user states is trained on but
    not held to this, Encoded.stated, unless the batch holds nothing else),
    confirmed once more on the final weights, so that greedy decoding gives
    the taught answers back word for word
    (stop_loss 0: run all the steps). A low mean loss alone
    is not enough: one missed token ("Fenwick is credited..." for "Fenwick
    Strauder is credited...") hides in an average below 0.1.
    """
    callback = callback or TrainCallback()
    precision, stop_loss, replay_per_epoch = cfg.precision, cfg.stop_loss, cfg.replay
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    # Cosine decay to a tenth of lr by max_steps: early steps move fast, late
    # ones settle instead of overshooting an answer that was already learned.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, cfg.max_steps) / cfg.max_steps)))
    rng = random.Random(cfg.seed)
    if not any(e.n_held for e in examples):  # nothing but notes, about which no question could be written:
        examples = [e.all_held() for e in examples]  # they are held to the word themselves
    pool = list(examples) + list(replay) + list(general)
    first_general = len(examples) + len(replay)
    passes = Passes(model, pool, pad_id, device, precision, levers)
    per_step = max(1, min(cfg.batch_size * cfg.grad_accum, len(examples)))
    steps: list[list[int]] = []  # the rest of this epoch, step by step
    epoch: list[int] = []
    epoch_learned = True  # every example of the epoch so far was learned (see `learned`)
    result = TrainResult()
    start = time.perf_counter()
    model.train()
    for step in range(1, cfg.max_steps + 1):
        if callback.should_stop():
            raise Interrupted()
        if not steps:
            epoch = _epoch(len(examples), len(replay), replay_per_epoch, rng)
            if general and cfg.general:
                epoch += [first_general + i for i in rng.sample(range(len(general)), min(cfg.general, len(general)))]
                rng.shuffle(epoch)
            steps = _split(epoch, per_step)
            epoch_learned = True
        picked = steps.pop(0)
        chosen = [pool[i] for i in picked]
        to_learn = {id(pool[i]) for i in picked if i < first_general}
        n_answer = sum(e.n_answer for e in chosen)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for i, mb in enumerate(micro_batches(chosen, cfg.batch_size)):
            if i:
                callback.between_micro_batches(step)
            with passes.micro_batch():
                rows = passes.loss(mb)
                loss = rows.loss.sum()
                (loss / max(n_answer, 1)).backward()
            total += loss.item()
            if stop_loss and epoch_learned:
                epoch_learned = learned(rows, stop_loss, [id(e) in to_learn for e in mb])
            result.tokens += sum(len(e.input_ids) for e in mb)
        if constrain is not None:
            constrain.gradients()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # clip the global grad norm at 1.0
        optimizer.step()
        if constrain is not None:
            constrain()
        schedule.step()
        step_loss = total / max(n_answer, 1)
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"training loss became {step_loss} at step {step}")
        result.losses.append(step_loss)
        callback.on_step(step, step_loss, n_answer)
        callback.between_steps(step)
        model.train()
        # The epoch's figures were taken before each step's update, and a later
        # update can undo an earlier example: confirm on the weights as they are now.
        if (stop_loss and not steps and epoch_learned
                and passes.recalled([pool[i] for i in epoch if i < first_general], stop_loss)):
            result.stopped_early = True  # every example of this epoch is learned
            break
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
