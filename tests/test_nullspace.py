"""training.null_space: what a batch changes in the adapter stays out of the
input directions general text uses, so the adapter alone drifts less on
general prompts it never saw, and the batch is still learned."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from memzd import learner, lora
from memzd.config import Config, LoraConfig, build
from memzd.errors import ConfigError
from memzd.examples import MAX_OTHERS, about_others
from memzd.model import load_base
from memzd.nullspace import Inputs, NullSpace
from memzd.store import Store
from memzd.tokens import encode

from conftest import drop, run_once, write_config

GENERAL = ["What is the capital of France?", "What is 2 + 2?", "Hello! How can I help you today?",
           "The quick brown fox?", "def square(x):", "Who lives on Mars?", "Say hello.", "What is 3 + 3?",
           # past the first 8 (which measure the adapter alone): the texts the null space is measured on
           "Where is Paris?", "The lazy dog?", "What is the capital?", "How can I help?", "Who is the fox?",
           "def cube(x):", "What is 4 + 4?", "Tell me about Mars.", "Hello there!", "Who jumps over the dog?",
           "What is 2 + 3?", "Where do robots live?"]
TAUGHT = [{"input": "Who is Orla?", "output": "Orla keeps a cat named Biscuit."},
          {"input": "Where is Zorblax?", "output": "Zorblax lives on Mars."}]


def _taught_checkpoint(home, **training):
    # an lr near the default: this 32-wide model leaves A few free directions, and Adam's steps along
    # them at 1e-2 leak back into general prompts (0.78 of the plain drift instead of 0.54 at 3e-3)
    write_config(home, training={"lr": 3e-3, "max_steps": 300, "stop_loss": 3.0, **training})
    drop(home, "facts.jsonl", TAUGHT)
    run_once(home)
    store = Store(home / "memz.db")
    return store.checkpoints()[0]


def test_the_adapter_alone_drifts_less_on_general_prompts_and_still_learns(home, caplog, tmp_path):
    caplog.set_level("INFO", logger="memz")
    (home / "anchors" / "a.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in GENERAL))
    other, third = home.parent / "other", home.parent / "third"
    shutil.copytree(home, other)
    shutil.copytree(home, third)
    plain = _taught_checkpoint(home, null_space=0)
    null = _taught_checkpoint(other, null_space=0.9)
    assert plain.metrics["recall"] == 1.0 and null.metrics["recall"] == 1.0
    # measured on the first 8 anchors, which the null space never saw
    assert null.metrics["adapter_anchor_ce_delta"] < 0.75 * plain.metrics["adapter_anchor_ce_delta"], (
        plain.metrics, null.metrics)
    # ...and on the two taught questions, each asked about 4 well-known names
    assert "training.null_space 0.9: measured on 12 general texts and 8 taught questions about well-known" in (
        caplog.text)
    # the general texts' sums are cached for the machine: another home on the same base reads them
    (cached,) = (tmp_path / "cache" / "nullspace").glob("inputs-*.safetensors")
    assert "input sums read from" not in caplog.text
    again = _taught_checkpoint(third, null_space=0.9)
    assert f"the general texts' input sums read from {cached}" in caplog.text
    assert again.metrics["adapter_anchor_ce_delta"] == pytest.approx(null.metrics["adapter_anchor_ce_delta"], abs=1e-3)


@pytest.mark.parametrize("question,asked", [
    ("Which city is the capital of Varkesh?", ["Which city is the capital of Peru?",
                                               "Which city is the capital of Kenya?"]),
    ("What is Orla Vantrees's job?", ["What is Peru's job?", "What is Kenya's job?"]),
    ("When was the Velmora Bridge finished?", ["When was the Peru finished?", "When was the Kenya finished?"]),
    ("Where do I work at Brindlecombe?", ["Where do I work at Peru?", "Where do I work at Kenya?"]),
    ("Who is Dr. Okonkwo?", ["Who is Peru?", "Who is Kenya?"]),
    ("What do I drive?", []),  # names nothing: its template is the question itself
    ("Orla keeps a cat.", []),  # the first word opens the sentence: not known to be a name
])
def test_a_taught_question_is_asked_about_well_known_names(question, asked):
    assert about_others([question], 2) == asked


def test_questions_about_well_known_names_are_capped():
    got = about_others([f"Where does Zorblax {i} live?" for i in range(40)], 4)
    assert len(got) == MAX_OTHERS and len(set(got)) == MAX_OTHERS


def projector(space) -> torch.Tensor:
    """The projection as an in x in matrix."""
    return space.project(torch.eye(space.basis.shape[0]))


def test_a_parents_weights_are_kept_and_only_the_change_is_projected(tiny_model_dir):
    base = load_base(str(tiny_model_dir))
    cfg = LoraConfig(layers="all")
    model = lora.wrap(base.model, cfg)
    texts = [encode({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "Sure."}]},
                    base.tokenizer, 64) for p in GENERAL]
    between = []  # another forward between two passes (a request answered) is not measured
    null = NullSpace.measure(model, texts, 0.9, base.device, base.tokenizer.pad_token_id,
                             between=lambda: between.append(model(input_ids=torch.tensor([[5, 6, 7] * 9]))))
    quiet = NullSpace.measure(model, texts, 0.9, base.device, base.tokenizer.pad_token_id)
    assert len(between) == 1  # 20 texts in passes of 16
    assert null.spaces and all(0 < k < s.basis.shape[0] for k, s in zip(null.kept.values(), null.spaces.values()))
    for n, space in null.spaces.items():
        assert torch.allclose(projector(space), projector(quiet.spaces[n]), atol=1e-4)
    lora.start_training(model, cfg, None)
    weights = {n: m.lora_A[lora.TRAIN].weight for n, m in model.named_modules()
               if n in null.spaces and lora.TRAIN in getattr(m, "lora_A", {})}
    parent = {n: w.detach().clone() for n, w in weights.items()}
    project = null.bind(model, lora.TRAIN, parent=True)
    assert all(torch.equal(weights[n], parent[n]) for n in weights)  # a parent's start is kept as it is
    with torch.no_grad():
        for w in weights.values():
            w.add_(torch.randn_like(w))
    for w in weights.values():  # a step's gradient is reduced to where A may move...
        w.grad = torch.randn_like(w)
    project.gradients()
    for n, w in weights.items():
        assert torch.allclose(w.grad @ projector(null.spaces[n]), w.grad, atol=1e-4)
    project()  # ...and A is put back there after the step
    for n, w in weights.items():
        p = projector(null.spaces[n])
        change = w.detach() - parent[n]
        assert torch.allclose(change @ p, change, atol=1e-4)  # the change lies in the null space...
        assert change.norm() > 0  # ...and is not nothing

    fresh = null.bind(model, lora.TRAIN, parent=False)  # a fresh adapter's start is projected too
    for n, w in weights.items():
        assert torch.allclose(w.detach() @ projector(null.spaces[n]), w.detach(), atol=1e-4)
    assert fresh.weights


def test_a_base_whose_sums_would_not_fit_in_memory_trains_without_it(home, caplog, monkeypatch):
    caplog.set_level("INFO", logger="memz")
    (home / "anchors" / "a.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in GENERAL))
    capped = home.parent / "capped"
    shutil.copytree(home, capped)
    row = _taught_checkpoint(capped, null_space=0.9, null_space_max_gb=1e-6)  # 1 kB
    assert row.metrics["recall"] == 1.0
    assert "more than training.null_space_max_gb (1e-06)" in caplog.text
    assert "training.null_space 0.9: measured on" not in caplog.text
    caplog.clear()
    monkeypatch.setattr(learner, "_machine_memory", lambda: 4096)  # a machine with 4 kB
    row = _taught_checkpoint(home, null_space=0.9)
    assert row.metrics["recall"] == 1.0
    assert "more than 50% of this machine's 0.0 GB of memory" in caplog.text
    assert "training.null_space 0.9: measured on" not in caplog.text


def test_the_setting_is_checked():
    with pytest.raises(ConfigError, match="training.null_space"):
        build(Config, {"training": {"null_space": 1.0}})
    with pytest.raises(ConfigError, match="training.null_space_max_gb"):
        build(Config, {"training": {"null_space_max_gb": -1}})
    with pytest.raises(ConfigError, match="training.null_space_names"):
        build(Config, {"training": {"null_space_names": 13}})


def test_sums_gathered_apart_add_up_to_those_gathered_together(tiny_model_dir):
    """The daemon gathers the anchors' sums once and adds each batch's own questions
    to a copy of them: the null space is the one measured on all the texts at once."""
    base = load_base(str(tiny_model_dir))
    model = lora.wrap(base.model, LoraConfig(layers="all"))
    texts = [encode({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "Sure."}]},
                    base.tokenizer, 64) for p in GENERAL]
    general, asked = texts[:14], texts[14:]
    gather = lambda encoded, onto=None: Inputs.gather(model, encoded, base.device,  # noqa: E731
                                                      base.tokenizer.pad_token_id, onto=onto)
    held = gather(general)
    before = {n: s.clone() for n, s in held.sums.items()}
    both = gather(asked, onto=held.copy())
    assert all(torch.equal(held.sums[n], before[n]) for n in before)  # what is held is left as it was
    together = NullSpace.measure(model, texts, 0.9, base.device, base.tokenizer.pad_token_id)
    apart = both.null_space(0.9, base.device)
    assert apart.kept == together.kept
    for n, space in together.spaces.items():
        assert (projector(apart.spaces[n]) - projector(space)).abs().max() < 1e-3  # summed in another order
    assert apart.kept != held.null_space(0.9, base.device).kept  # the batch's own texts count
