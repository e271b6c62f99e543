"""The feature cache on a causal LM (`DecoderSplit`, `TokenStore`): the frozen embeddings and lower blocks computed
once, the same losses and weights as without the cache (chat rows of different lengths, plain and packed), a move
one boundary lower at an unfreeze (or a drop when nothing lower was stored), and no cache while the tied LM head
(the embeddings' own weight) trains. On the 2-block Llama of `causal_fixtures`."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from tests.engine.causal_fixtures import causal_profile, make_llm, write_jsonl
from tests.engine.conftest import of_type
from tests.engine.hf_fixtures import WORDS
from tuitune.engine.commands import Control, UnfreezeNext
from tuitune.engine.data.chat import ChatCollate, ChatExamples, PackedChat
from tuitune.engine.events import EpochEnded, FeatureCacheChanged, MetricsUpdated, PhaseChanged
from tuitune.engine.model.causal_lm import build_causal_lm
from tuitune.engine.train.feature_store import TokenRows, per_sample
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.segments import DecoderSplit, split_model, verify

pytestmark = pytest.mark.timeout(60)
LORA = {"kind": "progressive", "adapters": "lora", "trigger": "epochs", "every_epochs": 1, "coarse": False}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return make_llm(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prompts of 4 to 12 words and responses of 1 to 4 tokens: every batch is padded to another length."""
    rng = random.Random(0)
    rows = []
    for _ in range(40):
        good = rng.random() < 0.5
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 8)))
        answer = "yes" if good else " ".join(["no", "."] * rng.randint(1, 2))
        rows.append({"prompt": f"is the {filler} {'good' if good else 'bad'} ?", "response": answer})
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", rows)


def _run(tmp_path, llm, data, control=None, emit=None, hook=None, packing=False, **sections):
    profile = causal_profile(llm, data, **sections)
    if packing:
        profile = dataclasses.replace(profile, data=dataclasses.replace(profile.data, packing=True))
    events: list = []

    def sink(event) -> None:
        events.append(event)
        if emit:
            emit(event)

    trainer = Trainer(profile, tmp_path, sink, control or Control(), interactive=True)
    if hook:
        hook(trainer)
    final = trainer.run()
    return events, final, trainer.parts.model


def _losses(events) -> list[float]:
    return [m.train_loss for m in of_type(events, MetricsUpdated)]


def _same_training(a, b, model_a, model_b) -> None:
    assert len(_losses(a)) == len(_losses(b)) > 0
    assert _losses(a) == pytest.approx(_losses(b), abs=1e-5)
    assert [e.val_loss for e in of_type(a, EpochEnded)] == pytest.approx(
        [e.val_loss for e in of_type(b, EpochEnded)], abs=1e-5
    )
    wa, wb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    assert max((wa[n] - wb[n]).abs().max().item() for n in wa) < 1e-5


@pytest.mark.parametrize("packing", [False, True])
def test_progressive_lora_caches_below_the_trained_blocks_with_the_same_training(tmp_path, llm, data, packing) -> None:
    """Phase 1 trains layer.1's adapters on layer.0's cached output, phase 2 layer.0's on the embeddings' (stored in
    the same pass); no training step of phase 1 runs the frozen layer.0, and the run is the uncached one."""
    stepped = {"a": [0], "b": [0]}  # layer.0's calls with autograd on (training steps; not build, eval, generation)
    at_epoch_end: dict[str, list[int]] = {"a": [], "b": []}

    def count(run: str):
        def hook(trainer: Trainer) -> None:
            def seen(*_) -> None:
                stepped[run][0] += torch.is_grad_enabled()

            trainer.parts.model.hf.model.layers[0].register_forward_hook(seen)

        return hook

    def snap(run: str):
        return lambda event: isinstance(event, EpochEnded) and at_epoch_end[run].append(stepped[run][0])

    train = {"epochs": 2, "log_every": 1}
    cached, _, m1 = _run(tmp_path / "a", llm, data, None, snap("a"), count("a"), packing, strategy=LORA, train=train)
    plain, _, m2 = _run(
        tmp_path / "b",
        llm,
        data,
        None,
        snap("b"),
        count("b"),
        packing,
        strategy=LORA,
        train={**train, "feature_cache": False},
    )
    _same_training(cached, plain, m1, m2)
    changes = [(c.active, c.detail) for c in of_type(cached, FeatureCacheChanged)]
    assert changes[0][0] and changes[0][1].startswith("output of layer.0 cached (")
    assert "also stored for later phases: embeddings" in changes[0][1]
    assert changes[1] == (True, "output of embeddings cached (stored in the first pass): only the layers above it run")
    assert at_epoch_end["a"][0] == 0 < at_epoch_end["b"][0]  # phase 1: layer.0 ran in no cached step
    assert at_epoch_end["a"][1] > 0  # phase 2 trains layer.0's adapters: it runs, on the embeddings' output
    assert [(c.active, c.detail) for c in of_type(plain, FeatureCacheChanged)] == [
        (False, "not used: train.feature_cache is off")
    ]


def test_a_trainable_tied_head_keeps_the_cache_off(tmp_path, llm, data) -> None:
    """Progressive without LoRA trains the head first: tied, it is the embeddings' weight, so nothing is frozen
    below the blocks in any phase."""
    events, final, _ = _run(tmp_path, llm, data, strategy={**LORA, "adapters": ""}, train={"epochs": 2})
    assert final.status == "finished"
    assert [(c.active, c.detail) for c in of_type(events, FeatureCacheChanged)] == [
        (False, "not used: the lowest layers (embeddings) train: no frozen part to cache")
    ]


def test_an_unfreeze_with_nothing_stored_below_drops_the_cache(tmp_path, llm, data) -> None:
    """One epoch: no later phase in the budget, so only layer.0's output is stored; unfreezing layer.0 by hand
    drops it and the rest of the epoch reads real batches, with the losses of the uncached run."""

    def emit_for(control: Control):
        def emit(event) -> None:
            if isinstance(event, MetricsUpdated) and event.global_step == 1:
                control.put(UnfreezeNext())

        return emit

    train = {"epochs": 1, "log_every": 1}
    c1, c2 = Control(), Control()
    cached, final, m1 = _run(tmp_path / "a", llm, data, c1, emit_for(c1), strategy=LORA, train=train)
    plain, _, m2 = _run(
        tmp_path / "b", llm, data, c2, emit_for(c2), strategy=LORA, train={**train, "feature_cache": False}
    )
    changes = of_type(cached, FeatureCacheChanged)
    assert [c.active for c in changes] == [True, False]
    assert changes[0].detail.startswith("output of layer.0 cached (") and "also stored" not in changes[0].detail
    assert changes[1].detail.startswith("dropped: the layers up to layer.0 are no longer all frozen")
    assert changes[1].global_step == of_type(cached, PhaseChanged)[0].global_step
    assert final.status == "finished"
    _same_training(cached, plain, m1, m2)


def _model_and_data(llm, data, packing: bool):
    from tuitune.engine.data.chat import encode_rows, read_rows

    profile = causal_profile(llm, data)
    backbone = build_causal_lm(profile.model, coarse=False)
    rows = read_rows(profile.data, data, "path")
    ids, starts = encode_rows(backbone.tokenizer, rows, 32, str(data))
    pad = backbone.tokenizer.pad_token_id
    dataset = PackedChat(ids, starts, 32, pad) if packing else ChatExamples(ids, starts, rows, 32, pad)
    return backbone.model.eval(), dataset


@pytest.mark.parametrize("packing", [False, True])
def test_rebatched_rows_are_what_the_collate_makes_of_the_same_samples(llm, data, packing) -> None:
    """Stored from batches of one composition, read back in another: padding, masks, position ids, scored
    positions and labels as `ChatCollate` gives for those samples, and each row's activations where they were."""
    model, dataset = _model_and_data(llm, data, packing)
    collate, split = ChatCollate(), split_model(model)
    assert isinstance(split, DecoderSplit)
    rows, cpu = TokenRows(), torch.device("cpu")
    for start in range(0, len(dataset), 7):
        x, y = collate([dataset[i] for i in range(start, min(start + 7, len(dataset)))])
        with torch.no_grad():
            a = split.prefixes(x, [1])[1]
        rows.add(split.top_input(a, x), y, cpu)
    store, order = rows.store(), [5, 0, 11, 3, 9]
    x, y = collate([dataset[i] for i in order])
    got_x, got_y = store.batch(order, cpu)
    assert set(got_x) == {"inputs_embeds", *x} - {"input_ids"}
    for key in set(x) - {"input_ids"}:
        assert torch.equal(got_x[key], x[key]), key
    assert torch.equal(got_y, y)
    with torch.no_grad():
        want = split.prefixes(x, [1])[1]
        scored = y != -100  # a padded position's logits differ (zeros went in, not the pad token's): never scored
        assert torch.allclose(split.top(got_x, 1)[scored], model(x)[scored], atol=1e-5)
    lengths = torch.tensor([store.offsets[i + 1] - store.offsets[i] for i in order])
    real = torch.arange(want.shape[1]) < lengths[:, None]  # each row's own tokens (a packed row: its filled part)
    assert torch.allclose(got_x["inputs_embeds"][real], want[real], atol=1e-5)


def test_the_split_reproduces_the_model_at_every_boundary_and_counts_its_bytes(llm, data) -> None:
    model, dataset = _model_and_data(llm, data, False)
    split = split_model(model)
    x, y = ChatCollate()([dataset[i] for i in range(8)])
    assert [s.name for s in split.segments] == ["embeddings", "layer.0", "layer.1"]
    assert all(verify(split, x, k) == "" for k in range(3))
    rows = TokenRows()
    a = split.top_input(split.prefixes(x, [1])[1], x)
    rows.add(a, y, torch.device("cpu"))
    store = rows.store()
    # [T, hidden] float32 per real token, with its int64 label and mask: what the size check counts, exactly
    assert per_sample(a) * 8 == store.nbytes == int(x["attention_mask"].sum()) * (32 * 4 + 8 + 8)


def test_decoders_it_cannot_split_say_why(llm, data) -> None:
    """GPT-2 adds its position embeddings after `wte`, outside any module the split could stand in for; several
    ranks would need the token rows gathered: both are reasons, not a wrong cache."""
    from types import SimpleNamespace

    from transformers import GPT2Config, GPT2LMHeadModel

    from tuitune.engine.model.causal_lm import CausalLM
    from tuitune.engine.train.feature_cache import FeatureCache
    from tuitune.engine.train.segments import NotSequential

    gpt2 = CausalLM(
        GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0))
    )
    with pytest.raises(NotSequential, match="GPT2Model: no `embed_tokens` module"):
        split_model(gpt2)
    model, _ = _model_and_data(llm, data, False)
    cache = FeatureCache(SimpleNamespace(model=model, dist=SimpleNamespace(active=True)), causal_profile(llm, data))
    assert cache.plan() == (-1, "several ranks: a causal LM's token rows are not gathered across ranks")
