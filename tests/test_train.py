"""The bundled model's training command (circuitkit.zoo.train), run for a few steps."""

import json

import pytest
import torch
from safetensors.torch import load_file

import circuitkit as ck
from circuitkit.zoo import train


def run(out):
    threads = torch.get_num_threads()  # training sets one thread for the process; put it back
    try:
        train.main(
            [
                "--out",
                str(out),
                "--steps",
                "3",
                "--tasks",
                "ioi,induction",
                "--pool",
                "60",
                "--eval-examples",
                "16",
                "--eval-every",
                "0",
            ]
        )
    finally:
        torch.set_num_threads(threads)


def test_training_writes_a_loadable_model_and_its_report_and_is_reproducible(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b")
    report = json.loads((tmp_path / "a" / "training_report.json").read_text())
    assert report["args"]["steps"] == 3 and report["architecture"]["n_layer"] == train.ARCH["n_layer"]
    assert set(report["held_out"]) == {"ioi", "induction"}
    assert all(r["n"] == 16 and 0.0 <= r["accuracy"] <= 1.0 for r in report["held_out"].values())
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same command, same weights
    assert all(t.dtype == torch.float16 for t in a.values())
    model = ck.load_model(str(tmp_path / "a"))
    assert model.graph.n_heads == train.ARCH["n_head"] and model.graph.n_layers == train.ARCH["n_layer"]


def fresh_model(**arch):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = train.load_tokenizer()
    config = GPT2Config(vocab_size=len(tok), **{**train.ARCH, **arch}, tie_word_embeddings=True)
    torch.manual_seed(0)
    return tok, GPT2LMHeadModel(config)


def test_the_induction_initialisation_continues_held_out_repeats_through_its_previous_token_head():
    tok, model = fresh_model()
    held_out = {"induction": train.build_task("induction", "test", 64, 0, tok)}
    plain = train.evaluate(model, held_out, tok.eos_token_id)["induction"]["accuracy"]
    train.init_induction_circuit(model, 0, **train.INDUCTION_INIT)
    built = train.evaluate(model, held_out, tok.eos_token_id)["induction"]
    assert plain < 0.1 and built["accuracy"] >= 0.95 and built["clean_metric"] > built["corrupted_metric"] + 5
    hd = train.ARCH["n_embd"] // train.ARCH["n_head"]
    with torch.no_grad():
        model.transformer.h[0].attn.c_proj.weight[:hd] = 0.0  # silence the previous-token head
    assert train.evaluate(model, held_out, tok.eos_token_id)["induction"]["accuracy"] < 0.2


def test_the_induction_initialisation_refuses_heads_it_cannot_build():
    _, model = fresh_model(n_head=4)  # 32-dim heads
    with pytest.raises(ValueError, match="16-dim heads"):
        train.init_induction_circuit(model, 0, **train.INDUCTION_INIT)
