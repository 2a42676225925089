"""Training on the tiny model: answer-only labels, the loss goes down, checkpoints round-trip."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from memzd import lora, tokens
from memzd.checkpoints import load_checkpoint, write_checkpoint
from memzd.config import Config, Home
from memzd.errors import CheckpointError
from memzd.inference import greedy_answers
from memzd.model import load_base
from memzd.prefix import FrozenPrefix
from memzd.trainer import Passes, train

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
                                        {"role": "user", "content": "more"}, {"role": "assistant", "content": "B2"}]},
                          base.tokenizer, 512)
    learned = base.tokenizer.decode([t for t in multi.labels if t != tokens.IGNORE])
    assert "A1" in learned and "B2" in learned and "more" not in learned


def test_answer_loss_matches_the_plain_hf_loss(base):
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    ids, mask, labels = tokens.collate(enc, base.tokenizer.pad_token_id, base.device)
    with torch.no_grad():
        ours, n = tokens.answer_loss(base.model, ids, mask, labels)
        hf = base.model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert ours.item() / n == pytest.approx(hf.item(), rel=1e-4)


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


def test_row_loss_flags_an_answer_token_the_model_would_not_pick(base):
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    ids, mask, labels = tokens.collate(enc, base.tokenizer.pad_token_id, base.device)
    with torch.no_grad():
        rows = tokens.answer_loss(base.model, ids, mask, labels, reduction="none")
        logits = base.model(input_ids=ids, attention_mask=mask).logits
    for r in range(len(enc)):
        keep = labels[r, 1:] != tokens.IGNORE
        top1 = logits[r, :-1][keep].argmax(-1) == labels[r, 1:][keep]
        assert bool(rows.all_top1[r]) == bool(top1.all())
        assert int(rows.tokens[r]) == int(keep.sum())
    assert not rows.all_top1.all()  # an untrained model misses some of the answer


def test_training_stops_once_greedy_decoding_gives_every_answer_back(base):
    cfg = Config()
    model = lora.wrap(base.model, cfg.lora)
    lora.start_training(model, cfg.lora, None)
    cfg.training.lr, cfg.training.max_steps = 1e-2, 300
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES]
    torch.manual_seed(0)
    # The tiny model's LoRA (one layer) cannot push the loss near 0.1; a loose
    # loss bound leaves the stop to the word-for-word rule.
    result = train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device,
                   stop_loss=3.0)
    assert result.stopped_early and len(result.losses) < 300
    chats = [[{"role": "user", "content": "Who is Orla?"}], [{"role": "user", "content": "Where is Zorblax?"}]]
    got = greedy_answers(model, base.tokenizer, chats, adapter=lora.TRAIN, device=base.device, max_tokens=40)
    assert got == ["Orla keeps a cat named Biscuit.", "Zorblax lives on Mars."]


def _train_losses(base, model, cfg, **speedups) -> list[float]:
    torch.manual_seed(0)
    lora.start_training(model, cfg.lora, None)
    enc = [tokens.encode(e, base.tokenizer, 512) for e in EXAMPLES * 3]
    return train(model, enc, cfg.training, pad_id=base.tokenizer.pad_token_id, device=base.device,
                 **speedups).losses


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
