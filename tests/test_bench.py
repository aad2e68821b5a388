"""`lmkit bench`: a model directory and its export timed side by side, and what it refuses."""
import json

import numpy as np
import pytest

from lmkit.benchmark import measure, table
from lmkit.opening import open_model


def test_a_model_and_its_export_are_timed_side_by_side(run, tiny_gpt2, tiny_gpt2_export):
    result = run("bench", tiny_gpt2, tiny_gpt2_export, "--prompt-tokens", "8", "--new-tokens", "4",
                 "--repeats", "2", "--threads", "1", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    first, second = report["models"]
    assert first["runtime"].startswith("torch") and second["runtime"].startswith("onnxruntime fp32")
    for speed in (first, second):
        assert speed["kind"] == "decoder" and speed["prefill_ms"] > 0 and speed["decode_ms_per_step"] > 0
        # The rates are the batch's tokens over the times: 8 prompt tokens, 1 new token a step.
        assert speed["prefill_tokens_per_s"] == pytest.approx(8 / (speed["prefill_ms"] / 1e3))
        assert speed["decode_tokens_per_s"] == pytest.approx(1 / (speed["decode_ms_per_step"] / 1e3))
    text = run("bench", tiny_gpt2, tiny_gpt2_export, "--prompt-tokens", "8", "--new-tokens", "4",
               "--repeats", "1")
    assert text.code == 0 and "| speed vs first |" in text.out and "1.00x" in text.out


def test_the_decoding_steps_are_those_of_greedy_generation(tiny_gpt2, monkeypatch):
    # The timed loop feeds back the argmax: what greedy decoding of the same prompt would produce.
    opened = open_model(tiny_gpt2, device="cpu")
    fed: list[int] = []
    make_backend = opened.backend

    def recording_backend(*args, **kwargs):
        backend = make_backend(*args, **kwargs)
        step = backend.step

        def record(tokens, rows=None):
            fed.append(int(tokens[0]))
            return step(tokens, rows)

        backend.step = record
        return backend

    monkeypatch.setattr(opened, "backend", recording_backend)
    [speed] = measure([opened], prompt_tokens=6, new_tokens=5, repeats=1)
    assert "| torch (cpu) |" in table([speed])
    assert len(fed) == 10  # the warm-up run, then the timed one
    timed = fed[5:]
    prompt = np.random.default_rng(0).integers(8, opened.tokenizer.vocab_size, size=(1, 6)).tolist()
    greedy = opened.generate_ids(prompt, opened.decoding("greedy", max_new_tokens=5))[0].tokens
    assert timed == list(greedy)


def test_what_it_refuses(run, tiny_gpt2, tiny_gpt2_export, trained_nmt, tmp_path):
    too_long = run("bench", tiny_gpt2, "--prompt-tokens", "100000")
    assert too_long.code != 0 and "positions" in too_long.err and "lower them" in too_long.err
    assert "Traceback" not in too_long.err and len(too_long.err.strip().splitlines()) == 1
    # more new tokens than the context, no --prompt-tokens given: said so, not as "--prompt-tokens 1 + ..." (a trial)
    no_room = run("bench", tiny_gpt2, "--new-tokens", "100000")
    assert no_room.code != 0 and len(no_room.err.strip().splitlines()) == 1, no_room.err
    assert "--new-tokens 100000 leaves none for a prompt; ask for at most" in no_room.err, no_room.err
    missing = run("bench", str(tmp_path / "nowhere"))
    assert missing.code != 0 and "Traceback" not in missing.err
    long_source = run("bench", trained_nmt[0], "--prompt-tokens", "100000", "--repeats", "1")
    assert long_source.code != 0 and "positions" in long_source.err and "Traceback" not in long_source.err


def test_an_encoder_decoder_and_its_export_are_timed_as_a_generation(run, trained_nmt, tmp_path, monkeypatch):
    exported = str(tmp_path / "nmt-export")
    assert run("export", trained_nmt[0], "--out", exported).code == 0
    result = run("bench", trained_nmt[0], exported, "--prompt-tokens", "6", "--new-tokens", "3", "--repeats", "1",
                 "--batch-size", "2", "--threads", "1", "--json")
    assert result.code == 0, result.err
    for speed in json.loads(result.out)["models"]:
        assert speed["kind"] == "encoder-decoder" and speed["prefill_ms"] > 0 and speed["decode_ms_per_step"] > 0
        assert speed["decode_tokens_per_s"] == pytest.approx(2 / (speed["decode_ms_per_step"] / 1e3))
    # The steps feed back the argmax after each source's start token: a greedy translation of the sources.
    opened = open_model(trained_nmt[0], device="cpu")
    fed: list[list[int]] = []
    make_backend = opened.backend

    def recording_backend(*args, **kwargs):
        backend = make_backend(*args, **kwargs)
        step = backend.step

        def record(tokens, rows=None):
            fed.append(tokens.tolist())
            return step(tokens, rows)

        backend.step = record
        return backend

    monkeypatch.setattr(opened, "backend", recording_backend)
    measure([opened], prompt_tokens=5, new_tokens=4, batch_size=2, repeats=1)
    sources = np.random.default_rng(0).integers(8, opened.tokenizer.vocab_size, size=(2, 5)).tolist()
    from lmkit.decoding.greedy import Greedy
    from lmkit.decoding.options import GreedyOptions
    from lmkit.seq2seq import Seq2SeqGenerator

    greedy = Seq2SeqGenerator(make_backend(4), opened.decoder_start, None, 0).generate(
        Greedy(GreedyOptions(max_new_tokens=4)), sources)
    assert [list(row) for row in zip(*fed[4:])] == [list(g.tokens) for g in greedy]


def test_the_default_prompt_fits_a_small_context_and_a_busy_machine_is_named(run, tiny_gpt2, monkeypatch):
    import os

    limit = open_model(tiny_gpt2, device="cpu").max_positions
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    new = limit - 20  # leaves 12 positions for the prompt, past the 8 spare ones
    quiet = run("bench", tiny_gpt2, "--new-tokens", new, "--repeats", "1", "--threads", "1", "--json")
    assert quiet.code == 0, quiet.err
    report = json.loads(quiet.out)
    # 128 tokens unless the context leaves less room: then what it leaves after the new tokens and 8 spare.
    assert report["prompt_tokens"] == 12 and report["busy_machine"] is None
    assert "warning" not in quiet.err
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0 * (os.cpu_count() or 1), 1.0, 1.0))
    busy = run("bench", tiny_gpt2, "--prompt-tokens", "4", "--new-tokens", "2", "--repeats", "1", "--threads", "1")
    assert busy.code == 0 and "warning: this machine is busy (load average" in busy.err
    # Settings it refuses are refused in their one line alone, busy or not (CI under load saw a second line).
    refused = run("bench", tiny_gpt2, "--prompt-tokens", "100000")
    assert refused.code != 0 and len(refused.err.strip().splitlines()) == 1 and "lower them" in refused.err


def test_speed_is_compared_within_a_kind():
    # A user's trial: an encoder's forward pass was set against a decoder's step (0.81x) in one column.
    from lmkit.benchmark import Speed

    def speed(name, kind, prefill, decode):
        return Speed(name, "torch (cpu)", kind, prefill, 1.0, decode, None if decode is None else 1.0)

    text = table([speed("gpt", "decoder", 9.0, 2.0), speed("bert", "encoder", 4.0, None),
                  speed("gpt-export", "decoder", 9.0, 1.0), speed("bert-export", "encoder", 2.0, None)])
    ratios = [row.rsplit("|", 2)[1].strip() for row in text.splitlines()[2:]]
    assert ratios == ["1.00x", "1.00x", "2.00x", "2.00x"]
