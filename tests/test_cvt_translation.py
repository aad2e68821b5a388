"""CVT for translation (Clark et al. 2018 §3.3): auxiliary decoders on an attentional LSTM NMT model.

No runnable reference exists, so the mechanics are checked directly: an auxiliary decoder given the
primary's heads is the primary decoder (so it really shares the embedding and LSTM), the teacher is the
primary's own beam search (eval mode, no gradient), the loss is the hand-computed cross-entropy sum,
the gradient never reaches the primary's attention and softmax, the two views are restricted (attention
weights dropped; the next word predicted without reading it), and `lmkit train --unlabeled` resumes exactly.
"""
from __future__ import annotations

import json
import os

import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions  # noqa: E402
from lmkit.decoding.seq2seq_backend import Seq2SeqBackend  # noqa: E402
from lmkit.model import build_model  # noqa: E402
from lmkit.plugins.cvt.translation import SPECIAL, next_word_labels  # noqa: E402
from lmkit.registry import PluginHost  # noqa: E402
from lmkit.spec import resolve  # noqa: E402

V = 30
START, EOS, PAD = 2, 3, 0


def tiny_nmt(input_feeding: bool = True, dropout: float = 0.0, attention_dropout: float = 0.5, attention="general"):
    spec = {"encoder": {"type": "nmt-bilstm", "vocab_size": V, "d_embed": 8, "hidden_size": 6, "n_layers": 1,
                        "dropout": dropout, "init_range": 0.5},
            "decoder": {"type": "nmt-attention", "vocab_size": V, "d_embed": 8, "hidden_size": 10, "n_layers": 1,
                        "d_encoder": 12, "attention": attention, "input_feeding": input_feeding, "dropout": dropout,
                        "init_range": 0.5},
            "objectives": [{"type": "seq2seq"},
                           {"type": "cvt-translation", "attention_dropout": attention_dropout, "max_new_tokens": 6}]}
    return build_model(resolve(spec, PluginHost()), seed=0)


def sources(seed: int = 0, rows: int = 4, width: int = 7):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (rows, width), generator=generator)
    mask = torch.ones(rows, width, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 3:] = False
    return ids.masked_fill(~mask, PAD), mask


def targets(seed: int = 1, rows: int = 4, width: int = 5):
    ids = torch.randint(4, V, (rows, width), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = START
    return ids


@pytest.mark.parametrize("input_feeding", [True, False])
def test_an_auxiliary_decoder_with_the_primary_heads_is_the_primary_decoder(input_feeding):
    model = tiny_nmt(input_feeding).eval()
    objective = model.objectives["cvt-translation"]
    source_ids, source_mask = sources()
    target_ids = targets()
    with torch.no_grad():
        state = model.decoder.start(model.encoder(source_ids, source_mask))
        primary, _ = model.decoder(target_ids, state)
        for aux in objective.decoders.values():
            assert not torch.allclose(aux.run(model.decoder, target_ids, state), primary)  # own heads: the check can fail
            aux.attention.load_state_dict(model.decoder.attention.state_dict())
            aux.combine.load_state_dict(model.decoder.combine.state_dict())
            aux.lm_head.load_state_dict(model.decoder.lm_head.state_dict())
            # the same embedding, LSTM and (input-fed) recurrence as the primary: only the heads are its own
            torch.testing.assert_close(aux.run(model.decoder, target_ids, state), primary, rtol=0, atol=1e-6)


def test_the_teacher_is_the_primary_beam_search_in_eval_mode_whatever_the_dropout():
    model = tiny_nmt(dropout=0.5)
    objective = model.objectives["cvt-translation"]
    source_ids, source_mask = sources()
    model.train()
    torch.manual_seed(1)
    first = objective.pseudo_targets(model, source_ids, source_mask, (START, EOS, PAD))
    torch.manual_seed(2)
    second = objective.pseudo_targets(model, source_ids, source_mask, (START, EOS, PAD))
    assert model.training and model.encoder.training and model.decoder.training  # put back as it was
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    target_ids, labels = first
    assert not target_ids.requires_grad and not labels.requires_grad
    backend = Seq2SeqBackend(model)  # eval mode
    backend.set_sources([ids[mask].tolist() for ids, mask in zip(source_ids, source_mask)])
    expected = BeamSearch(BeamSearchOptions(max_new_tokens=6, num_beams=4)).generate(
        backend, [[START]] * 4, eos_id=EOS, pad_id=PAD)
    for row, generation in enumerate(expected):
        tokens = generation.tokens + ([EOS] if generation.finish_reason == "eos" else [])
        assert labels[row, :len(tokens)].tolist() == tokens
        assert (labels[row, len(tokens):] == -100).all()
        assert target_ids[row, :len(tokens)].tolist() == [START, *tokens[:-1]]


def test_the_unlabeled_loss_is_the_hand_computed_cross_entropy_sum():
    model = tiny_nmt(dropout=0.3).train()
    objective = model.objectives["cvt-translation"]
    source_ids, source_mask = sources()
    target_ids = targets()
    labels = torch.cat([target_ids[:, 1:], torch.full((4, 1), EOS)], dim=1)
    labels[2, 3:] = -100  # a shorter pseudo-target
    torch.manual_seed(7)
    loss = objective.unlabeled_loss(model, source_ids, source_mask, target_ids, labels)
    torch.manual_seed(7)  # the same dropout masks
    logits = objective.auxiliary_logits(model, source_ids, source_mask, target_ids)
    expected = 0.0
    for view, shift in (("attention-dropout", 0), ("next-word", 1)):
        log_probs = torch.log_softmax(logits[view].double(), dim=-1)
        terms = [-log_probs[b, t, labels[b, t + shift]] for b in range(4) for t in range(5 - shift)
                 if labels[b, t + shift] != -100]
        expected += sum(terms) / len(terms)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert next_word_labels(labels)[2].tolist() == [*labels[2, 1:3].tolist(), -100, -100, -100]


def test_the_auxiliary_loss_reaches_the_encoder_and_shared_lstm_never_the_primary_heads():
    model = tiny_nmt().train()
    source_ids, source_mask = sources()
    batch = {"source_ids": source_ids, "source_mask": source_mask, "unlabeled": torch.ones(4, dtype=torch.bool),
             SPECIAL: torch.tensor([[START, EOS, PAD]] * 4)}
    loss, parts = model.loss(batch)
    assert parts["seq2seq"].item() == 0.0 and parts["cvt-translation"].item() > 0  # the unlabelled batch trains CVT alone
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    for name, grad in grads.items():
        if name.startswith(("decoder.attention.", "decoder.combine.", "decoder.lm_head.")):
            assert grad is None, name  # the teacher's output is ids only: its own heads learn nothing here
        elif name.startswith(("encoder.", "decoder.embedding.", "decoder.lstm.", "objectives.cvt-translation.")):
            assert grad is not None and grad.abs().sum() > 0, name
    # a labelled batch trains the primary alone: the auxiliary decoders give 0
    objective = model.objectives["cvt-translation"]
    labelled = objective(model, {"source_ids": source_ids, "source_mask": source_mask})
    assert labelled.item() == 0.0 and not labelled.requires_grad


def test_the_attention_dropout_view_sees_part_of_the_source():
    model = tiny_nmt(input_feeding=False, attention_dropout=0.5)
    aux = model.objectives["cvt-translation"].decoders["attention_dropout_decoder"]
    source_ids, source_mask = sources(rows=4, width=7)
    memory = model.encoder(source_ids, source_mask).last_hidden_state
    keys, out = aux.attention.keys(memory), torch.randn(4, 50, 10)
    with torch.no_grad():
        full = aux.attention.weights(out, keys, source_mask)
        aux.train()
        dropped = aux.attention_weights(out, keys, source_mask)
        aux.eval()
        torch.testing.assert_close(aux.attention_weights(out, keys, source_mask), full)  # whole at test time
    real = source_mask[:, None, :].expand_as(full)
    zeroed = (dropped == 0) & real
    assert 0.4 < zeroed.sum() / real.sum() < 0.6
    kept = ~zeroed & real
    torch.testing.assert_close(dropped[kept], full[kept] / 0.5)
    assert (dropped[~real] == 0).all()
    # the other view attends to the whole source
    assert model.objectives["cvt-translation"].decoders["next_word_decoder"].attention_dropout == 0.0


def test_the_next_word_view_predicts_a_word_it_has_not_read():
    model = tiny_nmt().eval()
    aux = model.objectives["cvt-translation"].decoders["next_word_decoder"]
    source_ids, source_mask = sources()
    target_ids = targets()
    t = 2
    changed = target_ids.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] + 1) % V  # y_{t+1}, ..., the words it predicts at t and after
    with torch.no_grad():
        state = model.decoder.start(model.encoder(source_ids, source_mask))
        base, other = aux.run(model.decoder, target_ids, state), aux.run(model.decoder, changed, state)
    torch.testing.assert_close(other[:, :t + 1], base[:, :t + 1], rtol=0, atol=0)
    assert not torch.allclose(other[:, t + 1], base[:, t + 1])


def _train_args(task, unlabeled: str, steps: int) -> list[str]:
    return ["--data", task["train.src"], "--data", task["train.tgt"], "--val-data", task["valid.src"],
            "--val-data", task["valid.tgt"], "--unlabeled", unlabeled, "--steps", steps, "--batch-size", 8,
            "--seq-len", 64, "--lr", 0.02, "--warmup", 1, "--eval-every", 0, "--save-every", 2, "--log-every", 1]


def test_train_with_unlabeled_sources_from_the_cli_resumes_exactly(translation_task, tmp_path):
    from test_seq2seq import TASK, compose_tiny, one_thread

    task = translation_task
    unlabeled = tmp_path / "mono.src"
    unlabeled.write_text("".join(source + "\n" for source, _ in TASK.pairs(64, seed=9)), encoding="utf-8")
    dirs = [compose_tiny(task, name, "nmt-tiny", "encoder.n_layers=1", "decoder.n_layers=1",
                         "objectives.cvt-translation.num_beams=2") for name in ("cvt_a", "cvt_b")]
    with one_thread():
        straight = run_cli("train", dirs[0], *_train_args(task, str(unlabeled), 4))
        assert straight.code == 0, straight.err
        half = run_cli("train", dirs[1], *_train_args(task, str(unlabeled), 2))
        assert half.code == 0, half.err
        resumed = run_cli("train", dirs[1], "--resume", "--steps", 4)
        assert resumed.code == 0, resumed.err
    assert "unlabeled sources: 64 sentences" in straight.err
    with open(os.path.join(dirs[0], "model.safetensors"), "rb") as a, \
            open(os.path.join(dirs[1], "model.safetensors"), "rb") as b:
        assert a.read() == b.read()
    records = [json.loads(line) for line in open(os.path.join(dirs[0], "metrics.jsonl"))]
    by_step = {r["step"]: r for r in records if "loss" in r}
    # labelled steps (1, 3) train seq2seq alone, unlabelled ones (2, 4) the auxiliary decoders alone
    assert by_step[1]["loss_cvt-translation"] == 0.0 and by_step[1]["loss_seq2seq"] > 0
    assert by_step[2]["loss_seq2seq"] == 0.0 and by_step[2]["loss_cvt-translation"] > 0


def test_bad_input_is_a_one_line_error(translation_task, tmp_path):
    from test_seq2seq import compose_tiny

    task = translation_task
    plain = compose_tiny(task, "plain_nmt", "nmt-tiny", "encoder.n_layers=1", "decoder.n_layers=1")
    good = tmp_path / "mono.src"
    good.write_text("the cat sees the dog\n", encoding="utf-8")
    bad = tmp_path / "bad.src"
    bad.write_bytes(b"the cat sees the dog\nthe \xff dog\n")
    common = ["--data", task["train.src"], "--data", task["train.tgt"], "--steps", 1, "--batch-size", 4, "--seq-len", 64]
    result = run_cli("train", plain, *common, "--unlabeled", good)
    assert result.code != 0 and "none of the objectives (seq2seq) learns from unlabelled text" in result.err
    assert "Traceback" not in result.err and not os.path.exists(os.path.join(plain, "trainer_state.json"))
    cvt = compose_tiny(task, "cvt_bad", "nmt-tiny", "encoder.n_layers=1", "decoder.n_layers=1",
                       "objectives.cvt-translation.weight=1")
    result = run_cli("train", cvt, *common, "--unlabeled", bad)
    assert result.code != 0 and "is not UTF-8: line 2, byte offset 25 (0xff)" in result.err
    result = run_cli("compose", "seq2seq-tiny", "--set", f"tokenizer={task['tok']}",
                     "--set", "objectives.cvt-translation.weight=1", "--out", tmp_path / "s2s")
    assert result.code != 0 and "this decoder has no attention" in result.err
    assert not os.path.exists(tmp_path / "s2s")
    result = run_cli("compose", "nmt-tiny", "--set", f"tokenizer={task['tok']}",
                     "--set", "objectives.cvt-translation.views=[\"next-word\", \"past\"]", "--out", tmp_path / "v")
    assert result.code != 0 and "unknown CVT translation views ['past']" in result.err
