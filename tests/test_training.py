"""Training on the tiny model: answer-only labels, the loss goes down, checkpoints round-trip."""

import contextlib
import dataclasses
import json

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import AutoModelForCausalLM

from memzd import lora, tokens
from memzd.checkpoints import load_checkpoint, write_checkpoint
from memzd.config import Config, Home
from memzd.errors import CheckpointError
from memzd.inference import greedy_answers
from memzd.model import load_base
from memzd.prefix import FrozenPrefix
from memzd.trainer import Levers, Passes, TrainCallback, autocast_for, learned, train

EXAMPLES = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
            {"prompt": "Where is Zorblax?", "completion": "Zorblax lives on Mars."}]


@pytest.fixture
def base(tiny_model_dir):
    return load_base(str(tiny_model_dir))


def test_labels_cover_only_the_answer(base):
    enc = tokens.encode(EXAMPLES[0], base.tokenizer, 512)
    answer = base.tokenizer.decode([t for t in enc.labels if t != tokens.IGNORE])
    assert answer.startswith("Orla keeps a cat named Biscuit.")
    full = base.tokenizer.decode(enc.input_ids)
    assert "Who is Orla?" in full and full.index("Who is Orla?") < full.index("Biscuit")
    text = tokens.encode({"text": "The quick fox."}, base.tokenizer, 512)
    assert text.labels == text.input_ids  # a {"text"} example is learned whole
    multi = tokens.encode({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "A1"},
                                        {"role": "user", "content": "more?"}, {"role": "assistant", "content": "B2"}]},
                          base.tokenizer, 512)
    learned = base.tokenizer.decode([t for t in multi.labels if t != tokens.IGNORE])
    # assistant turns are learned, and what the user states ("hi"); what the user asks ("more?") is context
    assert "A1" in learned and "B2" in learned and "hi" in learned and "more" not in learned


def test_answer_loss_matches_the_plain_hf_loss(base):
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    batch = tokens.collate(enc, base.tokenizer.pad_token_id, base.device)
    with torch.no_grad():
        ours, n = tokens.answer_loss(base.model, batch)
        hf = base.model(input_ids=batch.ids, attention_mask=batch.mask, labels=batch.labels).loss
    assert ours.item() / n == pytest.approx(hf.item(), rel=1e-4)


MIXED = EXAMPLES + [{"text": "Biscuit sleeps on the warm windowsill every afternoon."},
                    {"input": "Name a colour.", "output": "Teal."},
                    {"input": "What does Orla's cat eat for breakfast on Sundays?",
                     "output": "Sardines, always sardines, with a little cream."}]


def test_packed_rows_give_each_example_its_padded_loss(base):
    enc = [tokens.encode(e, base.tokenizer, 512) for e in MIXED]
    lengths = [len(e.input_ids) for e in enc]
    packed = tokens.pack(enc, base.tokenizer.pad_token_id, base.device, row_tokens=2 * max(lengths))
    assert packed.ids.shape[0] < len(enc)  # several examples share a row
    assert packed.ids.numel() < len(enc) * max(lengths)  # and there is less padding
    with torch.no_grad():
        mine = tokens.answer_loss(base.model, packed, reduction="none")
        ref = tokens.answer_loss(base.model, tokens.collate(enc, base.tokenizer.pad_token_id, base.device),
                                 reduction="none")
    assert torch.allclose(mine.loss, ref.loss, rtol=1e-4, atol=1e-5)
    assert torch.equal(mine.tokens, ref.tokens) and torch.equal(mine.all_top1, ref.all_top1)


def test_a_packed_example_does_not_see_its_row_neighbours(base):
    enc = [tokens.encode(e, base.tokenizer, 512) for e in MIXED]
    other = [tokens.encode(e, base.tokenizer, 512) for e in MIXED[:-1]] + \
        [tokens.encode({"input": "Something else entirely?", "output": "Yes, quite different words here."},
                       base.tokenizer, 512)]

    def losses(examples):
        batch = tokens.pack(examples, base.tokenizer.pad_token_id, base.device, row_tokens=10_000)  # one row
        assert batch.ids.shape[0] == 1
        assert any(start > batch.places[-1][1] for _, start in batch.places[:-1])  # someone sits after it
        with torch.no_grad():
            return tokens.answer_loss(base.model, batch, reduction="none").loss

    a, b = losses(enc), losses(other)
    assert torch.allclose(a[:-1], b[:-1], rtol=1e-4, atol=1e-5)  # the others' losses do not move
    assert not torch.allclose(a[-1], b[-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_gives_torch_s_loss_and_gradient(dtype):
    torch.manual_seed(0)
    n = 3 * tokens.CE_ROWS + 5  # several chunks and a short last one
    logits = (torch.randn(n, 1000) * 4).to(dtype)
    target = torch.randint(0, 1000, (n,))
    weight = torch.rand(n)  # a per-row gradient, as the per-example sums give
    mine = logits.clone().requires_grad_()
    loss, top1 = tokens.AnswerCE.apply(mine, target)
    (loss * weight).sum().backward()
    ref = logits.clone().requires_grad_()
    ref_loss = torch.nn.functional.cross_entropy(ref.float(), target, reduction="none")
    (ref_loss * weight).sum().backward()
    assert torch.allclose(loss, ref_loss, atol=1e-4)
    assert mine.grad.dtype == dtype
    assert torch.allclose(mine.grad.float(), ref.grad.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    assert torch.equal(top1, logits.float().argmax(-1) == target)


def test_chunked_cross_entropy_counts_a_tie_for_first_as_a_miss():
    logits = torch.zeros(3, 10)
    logits[0, 4] = 5.0                       # clear winner
    logits[1, 4] = logits[1, 7] = 5.0        # tie between the target and another word
    logits[2, 4], logits[2, 2] = 5.0, 6.0    # another word wins
    _, top1 = tokens.AnswerCE.apply(logits, torch.tensor([4, 4, 4]))
    assert top1.tolist() == [True, False, False]


def test_training_lowers_the_loss_and_touches_only_lora(base):
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    frozen = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora.start_training(model, cfg.lora, None)
    cfg.training.lr, cfg.training.max_steps = 1e-2, 15
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    torch.manual_seed(0)
    result = train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device)
    assert len(result.losses) == 15
    assert result.losses[-1] < result.losses[0] - 0.3
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_a_constraint_sees_each_step_s_gradients_before_the_optimizer_does(base):
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    lora.start_training(model, cfg.lora, None)
    cfg.training.lr, cfg.training.max_steps, cfg.training.stop_loss = 1e-2, 5, 0
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    class NothingMoves:  # lets no gradient through and never touches the weights itself
        def __init__(self):
            self.calls = {"gradients": 0, "after": 0}

        def gradients(self):
            self.calls["gradients"] += 1
            for p in model.parameters():
                if p.requires_grad:
                    assert p.grad is not None  # this step's, not yet used
                    p.grad.zero_()

        def __call__(self):
            self.calls["after"] += 1

    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    constraint = NothingMoves()
    result = train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device,
                   constrain=constraint)
    assert len(result.losses) == 5 and constraint.calls == {"gradients": 5, "after": 5}
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters() if n in start)


def test_row_loss_flags_an_answer_token_the_model_would_not_pick(base):
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    batch = tokens.collate(enc, base.tokenizer.pad_token_id, base.device)
    ids, mask, labels = batch.ids, batch.mask, batch.labels
    with torch.no_grad():
        rows = tokens.answer_loss(base.model, batch, reduction="none")
        logits = base.model(input_ids=ids, attention_mask=mask).logits
    for r in range(len(enc)):
        keep = labels[r, 1:] != tokens.IGNORE
        top1 = logits[r, :-1][keep].argmax(-1) == labels[r, 1:][keep]
        assert bool(rows.all_top1[r]) == bool(top1.all())
        assert int(rows.tokens[r]) == int(keep.sum())
        misses = (~top1).nonzero()
        assert int(rows.first_miss[r]) == (int(misses[0]) if len(misses) else int(keep.sum()))
    assert not rows.all_top1.all()  # an untrained model misses some of the answer


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_lora_gives_peft_s_loss_and_gradients(base, precision):
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    params = lora.start_training(model, cfg.lora, None)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:  # B starts at zero, which would leave A without a gradient
            p.normal_(0, 0.05)
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    batch = tokens.pack(enc, base.tokenizer.pad_token_id, base.device, row_tokens=128)
    fused = lora.FusedLoRA(model)
    assert len(fused.targets) == sum(isinstance(m, LoraLinear) for m in model.modules()) > 0

    def loss_and_grads(use_fused):
        model.zero_grad()
        with fused.active() if use_fused else contextlib.nullcontext(), autocast_for(base.device, precision):
            loss, _ = tokens.answer_loss(model, batch)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in params]

    ref_loss, ref = loss_and_grads(False)
    loss, grads = loss_and_grads(True)
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert loss == pytest.approx(ref_loss, rel=tol)
    assert max(((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref)) < tol
    assert all("forward" not in m.__dict__ for m, _ in fused.targets)  # peft's forward is back


def test_training_stops_once_greedy_decoding_gives_every_answer_back(base):
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    lora.start_training(model, cfg.lora, None)
    cfg.training.lr, cfg.training.max_steps = 1e-2, 300
    # The tiny model's LoRA (one layer) cannot push the loss near 0.1; a loose
    # loss bound leaves the stop to the word-for-word rule.
    cfg.training.stop_loss = 3.0
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    torch.manual_seed(0)
    result = train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device)
    assert result.stopped_early and len(result.losses) < 300
    chats = [[{"role": "user", "content": "Who is Orla?"}], [{"role": "user", "content": "Where is Zorblax?"}]]
    got = greedy_answers(model, base.tokenizer, chats, adapter=lora.TRAIN, device=base.device, max_tokens=40)
    assert got == ["Orla keeps a cat named Biscuit.", "Zorblax lives on Mars."]


def test_general_prompts_are_trained_on_but_never_required_to_be_learned(base):
    """training.general: the base model's own answers to general prompts join every
    epoch (the adapter keeps them closer), but the run still stops once the taught
    examples are learned, even where a general answer is not given back word for word."""
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    cfg.training.lr, cfg.training.max_steps, cfg.training.stop_loss, cfg.training.general = 1e-2, 300, 3.0, 2
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    general = [tokens.encode({"input": q, "output": a}, base.tokenizer, 512) for q, a in
               [("Say hello.", "zq vx kw pj"), ("Name a colour.", "mb rt yl qq"), ("Count to three.", "xx oo yy")]]
    seen = []

    class Watch(TrainCallback):
        def on_step(self, step, loss, tokens):
            seen.append(tokens)

    lora.start_training(model, cfg.lora, None)
    torch.manual_seed(0)
    with_general = train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device,
                         general=general, callback=Watch())
    assert with_general.stopped_early and len(with_general.losses) < 300
    answer_tokens = sum(e.n_answer for e in enc)
    assert sum(seen[:2]) > answer_tokens  # the first epoch (two steps) held general answers too
    with torch.no_grad():
        rows = tokens.answer_loss(model, tokens.collate(general, base.tokenizer.pad_token_id, base.device),
                                  reduction="none")
    assert not rows.all_top1.all()  # not learned word for word, and the run stopped anyway


def test_notes_that_open_alike_are_trained_but_the_questions_about_them_decide_the_stop(base, tiny_model_dir):
    """Two notes that open with the same words cannot both be the first choice after
    them: training on them must not run to max_steps for it. The questions written
    about them are held to the word; a batch of nothing but notes still holds them."""
    notes = [{"text": "The chess club meets in Hobbleton."}, {"text": "The rowing club meets in Saltmere."}]
    qa = [{"input": "Where does the chess club meet?", "output": "The chess club meets in Hobbleton."},
          {"input": "Where does the rowing club meet?", "output": "The rowing club meets in Saltmere."}]
    chat = {"messages": [{"role": "user", "content": "My sister lives in Lisbon."},
                         {"role": "assistant", "content": "Got it."}]}
    enc_notes = [tokens.encode(e, base.tokenizer, 512) for e in notes]
    enc_qa = [tokens.encode(e, base.tokenizer, 512) for e in qa]
    assert [e.n_held for e in enc_notes] == [0, 0] and all(e.n_held == e.n_answer for e in enc_qa)
    said = tokens.encode(chat, base.tokenizer, 512)  # what the user states is not held; the answer is
    assert base.tokenizer.decode([t for t, s in zip(said.labels, said.stated) if t != tokens.IGNORE and not s]) \
        .startswith("Got it.")
    cfg = Config()
    cfg.training.lr, cfg.training.max_steps, cfg.training.stop_loss = 1e-2, 120, 3.0

    def run(enc):
        model = lora.wrap(load_base(str(tiny_model_dir)).model, cfg.lora)
        lora.start_training(model, cfg.lora, None)
        torch.manual_seed(0)
        return train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device)

    mixed = run(enc_notes + enc_qa)
    assert mixed.stopped_early and len(mixed.losses) < 120
    alone = run(enc_notes)  # nothing else to hold: the notes themselves are, and "The" cannot lead to both
    assert not alone.stopped_early and len(alone.losses) == 120
    with_chat = run(enc_notes + [said])  # the chat's answer is held, and learned
    assert with_chat.stopped_early and len(with_chat.losses) < 120


def test_learned_looks_only_at_the_rows_it_is_told_to():
    rows = tokens.RowLoss(torch.tensor([0.1, 9.0]), torch.tensor([2, 2]), torch.tensor([True, False]),
                          torch.tensor([2, 0]))
    assert learned(rows, 0.1, [True, False]) and learned(rows, 0.1, [False, False])
    assert not learned(rows, 0.1) and not learned(rows, 0.1, [True, True])


def _train_losses(base, model, cfg, precision: str = "fp32", **levers) -> list[float]:
    torch.manual_seed(0)
    lora.start_training(model, cfg.lora, None)
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES * 3]
    run = dataclasses.replace(cfg.training, precision=precision, stop_loss=0.0)  # every step, no stop rule
    return train(model, enc, run, pad_id=base.tokenizer.pad_token_id, device=base.device,
                 levers=Levers(**levers)).losses


def test_the_frozen_prefix_cache_gives_the_same_losses_as_whole_passes(base, tiny_model_dir):
    cfg = Config()
    cfg.training.lr, cfg.training.max_steps, cfg.training.batch_size = 1e-2, 12, 2
    model = lora.wrap(base.model, cfg.lora)
    lora.start_training(model, cfg.lora, None)
    assert FrozenPrefix.for_model(model).first == 1  # the tiny model has 2 layers; LoRA on the top one
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    assert Passes(model, enc, base.tokenizer.pad_token_id, base.device, "fp32").prefix is not None  # agrees
    whole = _train_losses(base, model, cfg, prefix_cache=False)
    cached = _train_losses(base, model, cfg, prefix_cache=True)
    assert cached == pytest.approx(whole, rel=1e-4)
    # with LoRA on every layer nothing below is frozen: no cache, still trains
    cfg.lora.layers = "all"
    model = lora.wrap(load_base(str(tiny_model_dir)).model, cfg.lora)
    lora.start_training(model, cfg.lora, None)
    assert FrozenPrefix.for_model(model) is None
    assert len(_train_losses(base, model, cfg)) == 12


def test_training_leaves_the_serving_model_as_it_found_it(base):
    cfg = Config()
    cfg.training.max_steps = 4
    model = lora.wrap(base.model, cfg.lora)
    attention = tokens.causal_lm(model).config._attn_implementation
    _train_losses(base, model, cfg, precision="bf16")  # bf16 weight copies and eager attention
    assert tokens.causal_lm(model).config._attn_implementation == attention
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_checkpoint_round_trip_tensor_by_tensor(base, tmp_path, tiny_model_dir):
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    lora.start_training(model, cfg.lora, None)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)  # a non-trivial adapter
    state = lora.adapter_state(model, lora.TRAIN)
    home = Home(tmp_path / "h")
    home.ensure()
    path = write_checkpoint(home, "A_t_0001", state, model.peft_config[lora.TRAIN],
                            {"parent": None, "base_model": base.name})
    assert not any(home.staging.iterdir())
    assert json.loads((path / "meta.json").read_text())["base_model"] == base.name
    config, loaded, meta, _ = load_checkpoint(path, base.name)
    assert config.r == cfg.lora.r and set(loaded) == set(state)
    for k in state:
        assert torch.equal(loaded[k], state[k]), k
    # A user can load it with plain PEFT and gets the same outputs as memz's live adapter.
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(path))
    ids = torch.tensor([tokens.prompt_ids(base.tokenizer, [{"role": "user", "content": "Who is Orla?"}])])
    with lora.using(model, lora.TRAIN):
        ours = model(input_ids=ids).logits
    assert torch.allclose(plain(input_ids=ids).logits, ours, atol=1e-5)
    with pytest.raises(CheckpointError, match="base model"):
        load_checkpoint(path, "some/other-model")
