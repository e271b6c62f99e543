"""Causal language models (`model.task = "causal_lm"`): chat data scored on the response only, packing without
cross-talk, a decoder's layer groups (a tied LM head is one group), progressive unfreezing from the top, exact match,
samples (every evaluation and `GenerateSamples`), the export reloaded by transformers alone, bad input in one line.
All on a 2-block Llama built offline (`causal_fixtures`)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from tests.engine.causal_fixtures import causal_profile, chat_rows, make_llm, write_jsonl
from tests.engine.conftest import of_type
from tuitune.config import ProfileError, profile_from_dict
from tuitune.engine.commands import BadCommand, Control, GenerateSamples, command_from_json
from tuitune.engine.data.chat import IGNORE, PackedChat, build_chat, encode_rows, pack, read_rows, shifted_labels
from tuitune.engine.events import CommandApplied, EpochEnded, MetricsUpdated, RunFailed, RunFinished, SamplesGenerated
from tuitune.engine.model.causal_lm import CausalLM, build_causal_lm, decoder_groups, model_folder
from tuitune.engine.session import run_training
from tuitune.engine.tools.export import export_run
from tuitune.engine.train import strategy
from tuitune.engine.train.causal_lm import CausalLMLoss, exact_match, normalize_answer
from tuitune.engine.train.loop import Trainer
from tuitune.engine.train.objective import Objective
from tuitune.engine.train.watch import MetricWatch
from tuitune.errors import DataError, UserError


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return make_llm(tmp_path_factory.mktemp("llm"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("chat") / "chat.jsonl", chat_rows(32))


@pytest.fixture(scope="module")
def hf(llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(llm).eval(), AutoTokenizer.from_pretrained(llm)


def test_only_the_response_is_scored_and_the_loss_is_the_models_own(llm, data, hf) -> None:
    model, tokenizer = hf
    profile = causal_profile(llm, data)
    bundle = build_chat(profile.data, tokenizer, 32, 0)
    ids, start, n = bundle.val.input_ids[0], int(bundle.val.starts[0]), int(bundle.val.lengths[0])
    y = bundle.val[0][1]
    assert (y[: start - 1] == IGNORE).all() and (y[n - 1 :] == IGNORE).all()
    assert y[start - 1 : n - 1].tolist() == ids[start:n].tolist()  # position t predicts token t + 1
    assert tokenizer.convert_ids_to_tokens(ids[start:n].tolist()) == [bundle.val.rows[0].response, "<|im_end|>"]
    # transformers' own loss, with the labels it expects (unshifted, the prompt and the padding masked); ours on the
    # positions the collate keeps (the ones scored)
    x, y = bundle.val.collate([bundle.val[i] for i in range(4)])
    assert y.shape[1] == len(x["logits_to_keep"]) < x["input_ids"].shape[1]
    labels = x["input_ids"].masked_fill(x["attention_mask"] == 0, IGNORE)
    for r in range(4):
        labels[r, : int(bundle.val.starts[r])] = IGNORE
    with torch.no_grad():
        theirs = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=labels).loss
        ours = CausalLMLoss()(CausalLM(model)(x), y)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_packed_examples_attend_only_to_themselves(llm, data, hf) -> None:
    model, tokenizer = hf
    cfg = causal_profile(llm, data).data
    ids, starts = encode_rows(tokenizer, read_rows(cfg, data, "path")[:12], 32, str(data))
    packed = PackedChat(ids, starts, 32, tokenizer.pad_token_id)
    bins = pack([len(s) for s in ids], 32)
    assert sorted(i for b in bins for i in b) == list(range(12)) and len(packed) == len(bins) < 12
    assert all(sum(len(ids[i]) for i in b) <= 32 for b in bins)
    x, y = packed[0]
    with torch.no_grad():
        together = CausalLM(model)({"input_ids": x["input_ids"][None], "position_ids": x["position_ids"][None]})[0]
        at = 0
        for i in bins[0]:
            alone = model(input_ids=torch.tensor([ids[i]])).logits[0]
            assert torch.allclose(together[at : at + len(ids[i])], alone, atol=1e-5)
            assert y[at : at + len(ids[i])].tolist() == shifted_labels(ids[i], starts[i], len(ids[i])).tolist()
            at += len(ids[i])


def _llama(layers: int, tied: bool) -> CausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        tie_word_embeddings=tied,
    )
    return CausalLM(LlamaForCausalLM(config))


def test_a_decoders_groups_and_its_tied_head() -> None:
    tied = decoder_groups(_llama(7, tied=True))
    assert [g.name for g in tied] == ["layer.0-1", "layer.2-3", "layer.4-5", "layer.6", "norm", "head"]
    assert tied[-1].param_names == ("hf.model.embed_tokens.weight",)  # one parameter: the embeddings and the head
    fine = decoder_groups(_llama(7, tied=True), coarse=False)
    assert [g.name for g in fine][:7] == [f"layer.{i}" for i in range(7)]
    untied = decoder_groups(_llama(2, tied=False))
    assert [g.name for g in untied] == ["embeddings", "layer.0", "layer.1", "norm", "head"]
    assert untied[0].param_names == ("hf.model.embed_tokens.weight",)
    assert untied[-1].param_names == ("hf.lm_head.weight",)


def test_progressive_unfreezes_from_the_top_block_down(llm, data) -> None:
    from tuitune.engine.model.causal_lm import causal_backbone

    def phases(**strategy_cfg):
        profile = causal_profile(llm, data, strategy=strategy_cfg)
        backbone, _, _ = causal_backbone(profile, dataclasses.replace(profile.model, pretrained=False))
        plan = strategy.plan_phases([g.name for g in backbone.groups], profile.strategy)
        return strategy.from_first_trainable(plan, {g.name for g in backbone.groups if g.trained}).phases

    assert phases(kind="progressive") == (
        ("head",),
        ("norm", "head"),
        ("layer.1", "norm", "head"),
        ("layer.0", "layer.1", "norm", "head"),
    )
    # LoRA: the pretrained head has no adapter (it does not train), nor has the norm: the top block's adapters first
    assert phases(kind="progressive", adapters="lora") == (
        ("layer.1", "norm", "head"),
        ("layer.0", "layer.1", "norm", "head"),
    )
    assert phases(kind="head_only") == (("head",),)


def test_exact_match_is_squads_and_better_higher() -> None:
    assert normalize_answer("  The YES. ") == "yes" and exact_match("Yes!", "yes") and not exact_match("yes no", "yes")
    assert MetricWatch("val_exact_match").higher_is_better
    assert not MetricWatch("val_loss").higher_is_better


def test_samples_every_evaluation_and_on_demand(llm, data, tmp_path) -> None:
    """Samples after each epoch's EpochEnded and when `GenerateSamples` is put; the run's best is chosen by exact
    match; the summary keeps the last samples. The val rows start "no", "no", "no", "yes": the two samples shown
    are one of each."""
    rows = sorted(chat_rows(12, seed=1), key=lambda r: r["response"])  # the "no"s first
    val = write_jsonl(tmp_path / "val.jsonl", [*rows[:3], rows[-1], *rows[3:-1]])
    events: list = []
    control = Control()

    def emit(event) -> None:
        events.append(event)
        if isinstance(event, MetricsUpdated) and event.global_step == 2:
            control.put(GenerateSamples())

    profile = causal_profile(
        llm,
        data,
        train={"epochs": 2, "log_every": 2, "max_steps_per_epoch": 2, "checkpoint_metric": "val_exact_match"},
        generate={"exact_match": 4, "samples": 2},
        data={"val_path": str(val)},
    )
    final = Trainer(profile, llm.parent / "samples-run", emit, control).run()
    samples = of_type(events, SamplesGenerated)
    assert [s.reason for s in samples] == ["asked", "epoch", "epoch"]
    assert all(len(s.samples) == 2 and set(s.samples[0]) == {"prompt", "reference", "output", "match"} for s in samples)
    assert samples[0].samples[0]["prompt"].startswith("is the ") and samples[0].samples[0]["reference"] in ("yes", "no")
    applied = [e for e in of_type(events, CommandApplied) if e.command == "GenerateSamples"]
    assert len(applied) == 1 and "2 samples" in applied[0].detail
    epochs = of_type(events, EpochEnded)
    assert [events.index(e) + 1 for e in epochs] == [events.index(s) for s in samples[1:]]  # right after each epoch
    assert all(0.0 <= e.extra["val_exact_match"] <= 1.0 for e in epochs)
    assert all(math.isclose(e.extra["val_perplexity"], math.exp(e.val_loss), rel_tol=1e-6) for e in epochs)
    assert final.best["metric"] == "val_exact_match" and final.samples == samples[-1].samples
    assert {s["reference"] for s in samples[0].samples} == {"yes", "no"}  # both answers shown, not the first two rows


def test_the_samples_deal_the_references_round_robin_so_a_rare_answer_shows() -> None:
    from tuitune.engine.data.chat import Row, by_reference

    rows = [Row(i, [], answer) for i, answer in enumerate(["no", "no", "no", "yes", "no", "yes"])]
    assert by_reference([0, 1, 2, 3, 4, 5], rows) == [0, 3, 1, 5, 2, 4]
    assert by_reference([4, 2], rows) == [4, 2]
    free_form = [Row(i, [], f"answer {i}") for i in range(4)]
    assert by_reference([3, 1, 2, 0], free_form) == [3, 1, 2, 0]


def test_generate_samples_is_checked_and_a_classifier_has_none() -> None:
    assert command_from_json('{"type": "GenerateSamples"}') == GenerateSamples()
    with pytest.raises(BadCommand, match="GenerateSamples: unknown key 'n'"):
        command_from_json('{"type": "GenerateSamples", "n": 3}')
    detail, event = Objective.generate_now(object.__new__(Objective), None, 0, 0)  # type: ignore[arg-type]
    assert event is None and "nothing to generate" in detail


def test_the_export_generates_the_same_tokens_with_transformers_alone(llm, data, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    profile = causal_profile(llm, data, strategy={"kind": "lora"}, train={"lr": 0.05, "max_steps_per_epoch": 2})
    final = run_training(profile, tmp_path, lambda e: None, Control(), interactive=False)
    assert isinstance(final, RunFinished) and final.export_dir, final
    export = tmp_path / "export"
    model = AutoModelForCausalLM.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.chat_template and not any("lora" in n for n, _ in model.named_parameters())
    record = json.loads((export / "generations.json").read_text())
    assert len(record["examples"]) == 4
    config = GenerationConfig(
        max_new_tokens=record["max_new_tokens"],
        do_sample=False,
        pad_token_id=record["pad_token_id"],
        eos_token_id=record["eos_token_ids"],
    )
    for example in record["examples"]:
        out = model.generate(torch.tensor([example["prompt_ids"]]), generation_config=config)[0]
        new = out[len(example["prompt_ids"]) :].tolist()
        stop = next((i for i, t in enumerate(new) if t in record["eos_token_ids"]), len(new))
        assert new[:stop] == example["output_ids"]
    # `tuitune export RUN` rebuilds the model from the profile and the best checkpoint: the same generations
    manifest = export_run(tmp_path, tmp_path / "again", sample=2)
    again = json.loads((tmp_path / "again" / "generations.json").read_text())
    assert manifest["task"] == "causal_lm" and manifest["sample"]["examples"] == 2
    assert [e["output_ids"] for e in again["examples"]] == [e["output_ids"] for e in record["examples"][:2]]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "is it ?", "response": "yes"}], "data.prompt_column: no column 'prompt' (columns: question"),
        ([{"prompt": "is it ?", "response": ""}], "row 1: 'response' must be non-empty text"),
        (
            [{"prompt": "is the cat " + "very " * 40 + "good ?", "response": "yes"}],
            "row 1: the prompt and response take",
        ),
    ],
)
def test_bad_chat_rows_are_one_line(llm, data, hf, tmp_path, rows, message) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows * 4)
    cfg = dataclasses.replace(causal_profile(llm, data).data, path=str(path))
    with pytest.raises(DataError, match=re.escape(message)) as e:
        build_chat(cfg, hf[1], 32, 0)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_bad_messages_and_profiles_are_one_line(llm, data, hf, tmp_path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "is it ?"}]}])
    cfg = dataclasses.replace(causal_profile(llm, data).data, path=str(path), messages_column="messages")
    with pytest.raises(DataError, match="row 1: 'messages' must be a list of {role, content} messages ending with"):
        build_chat(cfg, hf[1], 32, 0)
    for changes, message in [
        ({"train": {"checkpoint_metric": "val_exact_match"}}, "val_exact_match needs generate.exact_match > 0"),
        ({"loss": {"kind": "focal"}}, "loss.kind: not used by model.task = 'causal_lm'"),
        ({"model": {"source": "timm"}}, "model.source: model.task = 'causal_lm' is built from hf models"),
        ({"data": {"kind": "text"}}, "data.kind: 'text' data does not fit model.task = 'causal_lm'"),
    ]:
        table = {"model": {"task": "causal_lm", "source": "hf", "name": "x"}, "data": {"kind": "chat", "path": "a"}}
        for section, values in changes.items():
            table[section] = {**table.get(section, {}), **values}
        with pytest.raises(ProfileError, match=message):
            profile_from_dict(table, "p.toml")


def test_a_tokenizer_without_a_chat_template_fails_the_run_in_one_line(llm, data, tmp_path) -> None:
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(llm, folder)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    final = run_training(causal_profile(folder, data), tmp_path / "run", lambda e: None, Control(), interactive=False)
    assert isinstance(final, RunFailed) and final.bad_input, final
    assert final.message.startswith("tiny-chat.toml: data.kind: the model's tokenizer has no chat template")


def test_model_folders_and_gguf_files_are_checked(llm) -> None:
    from tuitune.config import ModelConfig

    assert model_folder(ModelConfig(source="hf", name=str(llm))) == (str(llm), True)
    with pytest.raises(UserError, match=r"model.gguf_file: no tiny.gguf in .*tuitune \(GGUF files there: none\)"):
        model_folder(ModelConfig(source="hf", name="python:tuitune", gguf_file="tiny.gguf"))
    with pytest.raises(UserError, match="model.name: python:no_such_pkg: no installed Python package"):
        model_folder(ModelConfig(source="hf", name="python:no_such_pkg"))


def test_gradient_checkpointing_gives_the_same_gradients(llm, data, hf) -> None:
    from tuitune.config import ModelConfig

    cfg = ModelConfig(task="causal_lm", source="hf", name=str(llm))
    grads = []
    for on in (False, True):
        backbone = build_causal_lm(cfg, checkpointing=on)
        assert any(getattr(m, "gradient_checkpointing", False) for m in backbone.model.modules()) == on
        backbone.model.train()
        ids = torch.tensor([[3, 5, 12, 16, 19, 28, 10, 4, 3, 6, 8, 4]])
        y = torch.cat([ids[:, 1:], torch.full((1, 1), IGNORE)], dim=1)
        CausalLMLoss()(backbone.model({"input_ids": ids}), y).backward()
        grads.append(backbone.model.hf.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_gguf_dequantization_reports_progress_instead_of_a_bar() -> None:
    """transformers' tqdm over the GGUF tensors becomes SetupProgressed events while a model loads, and comes back."""
    import importlib

    from tuitune.engine.events import SetupProgressed
    from tuitune.engine.model.causal_lm import _gguf_progress

    module = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    before, events = module.tqdm, []
    with _gguf_progress(events.append, "m.gguf"):
        assert list(module.tqdm(range(3), desc="Converting")) == [0, 1, 2]
    assert module.tqdm is before
    done = [e for e in events if isinstance(e, SetupProgressed) and e.finished]
    assert done and done[-1].task == "convert" and done[-1].detail == "m.gguf" and done[-1].done == 3


def test_the_console_prints_each_sample_on_a_line() -> None:
    import io

    from tuitune.console import ConsolePrinter

    out = io.StringIO()
    sample = {"prompt": "is the cat good ?", "reference": "yes", "output": "no", "match": False}
    ConsolePrinter(out=out)(
        SamplesGenerated(samples=(sample, {**sample, "output": "yes", "match": True}), epoch=1, global_step=6)
    )
    lines = out.getvalue().splitlines()
    assert lines[0] == "samples at step 6 (epoch): 1/2 match"
    assert lines[1] == "  ✗ 'is the cat good ?' -> 'no' ('yes')" and lines[2].startswith("  ✓ ")
