"""GLM (Du et al. 2022): the model, its 2D positions and mask, and the blank-infilling data.

No library holds a faithful GLM (transformers' glm* models are GLM-4), so correctness is shown by the
hand-derived fixture of the reference page (/work/shared/reference/next-families.md, GLM), by
invariances the mask implies, and by the statistics of the span lengths.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.plugins.glm.config import BlankInfillingOptions, GLMConfig  # noqa: E402
from lmkit.plugins.glm.data import (  # noqa: E402
    IGNORE,
    Blanker,
    build_sample,
    document_span,
    place_spans,
    sentence_spans,
    span_length_distribution,
    span_lengths,
)
from lmkit.plugins.glm.model import GLMDecoder, glm_attention_mask  # noqa: E402

M, SM, GM, S, E = 100, 101, 102, 103, 104
IDS = {"[MASK]": M, "[sMASK]": SM, "[gMASK]": GM, "[S]": S, "[E]": E}
X = [10, 11, 12, 13, 14, 15]  # x0 .. x5

# The reference fixture (0-based), spans [x2] and [x4 x5] shuffled to ([x4 x5], [x2]).
FIXTURE = {
    "input": [10, 11, M, 13, M, S, 14, 15, S, 12],
    "pos1": [0, 1, 2, 3, 4, 4, 4, 4, 2, 2],
    "pos2": [0, 0, 0, 0, 0, 1, 2, 3, 1, 2],
    "target": [IGNORE] * 5 + [14, 15, E, 12, E],
    "sep": 5,
}
FIXTURE_SEED = 299  # the first seed of np.random.default_rng whose draw on x0..x5 is the fixture's


def tiny(seed: int = 0, **options) -> GLMDecoder:
    torch.manual_seed(seed)
    return GLMDecoder(GLMConfig(**{"vocab_size": 128, "max_positions": 32, "d_model": 32, "n_layers": 2,
                                   "n_heads": 4, "dropout": 0.0, **options})).eval()


def fixture_tensors():
    ids = torch.tensor([FIXTURE["input"]])
    positions = torch.tensor([[FIXTURE["pos1"], FIXTURE["pos2"]]])
    return ids, positions


# -- the model -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, millions", [("glm-base", 110), ("glm-large", 335)])
def test_preset_parameter_counts(preset, millions):
    from lmkit.registry import PluginHost

    options = PluginHost().presets[preset].spec["decoder"]
    with torch.device("meta"):
        decoder = GLMDecoder(GLMConfig(**{k: v for k, v in options.items() if k != "type"}))
    count = sum(p.numel() for p in decoder.parameters())
    # GLM-Base 110M and GLM-Large 335M (Du et al. 2022, Table 1): 109.3M and 334.7M here, the output
    # layer tied to the 30,592-token embedding.
    assert abs(count / 1e6 - millions) < 1.0, count


def test_mask_follows_from_the_positions_as_the_reference_rule():
    _, positions = fixture_tensors()
    mask = glm_attention_mask(positions[:, 1], None, past=0)[0, 0]  # (T, T)
    i, j = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    expected = (j < FIXTURE["sep"]) | (j <= i)  # position i may attend to j when j < sep or j <= i
    assert mask.numpy().tolist() == expected.tolist()


def test_part_a_outputs_do_not_depend_on_part_b():
    decoder = tiny()
    ids, positions = fixture_tensors()
    edited_ids = torch.tensor([[10, 11, M, 13, M, S, 77, S, 90, 91, 92]])  # other spans, another length
    edited_positions = torch.tensor([[[0, 1, 2, 3, 4, 4, 4, 2, 2, 2, 2], [0, 0, 0, 0, 0, 1, 2, 1, 2, 3, 4]]])
    with torch.no_grad():
        a = decoder(ids, position_ids=positions)[:, :5]
        b = decoder(edited_ids, position_ids=edited_positions)[:, :5]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_part_a_is_bidirectional():
    decoder = tiny()
    ids, positions = fixture_tensors()
    edited = ids.clone()
    edited[0, 3] = 55  # x3 -> another token: x0's output must change, it sees the whole of Part A
    with torch.no_grad():
        a, b = decoder(ids, position_ids=positions), decoder(edited, position_ids=positions)
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_a_part_b_output_does_not_depend_on_later_part_b_tokens():
    decoder = tiny()
    ids, positions = fixture_tensors()
    with torch.no_grad():
        full = decoder(ids, position_ids=positions)
        for i in range(5, 10):
            edited = ids.clone()
            edited[0, i + 1:] = 60  # every later Part-B token replaced
            again = decoder(edited, position_ids=positions)
            torch.testing.assert_close(again[:, :i + 1], full[:, :i + 1], rtol=0, atol=1e-6)


def test_cached_span_decoding_equals_one_forward_pass():
    decoder = tiny()
    ids, positions = fixture_tensors()
    with torch.no_grad():
        full = decoder(ids, position_ids=positions)
        cache = decoder.new_cache(1, 10)
        # Part A and the first [S] at once (the prefill), then one token at a time, with its positions.
        steps = [decoder(ids[:, :6], cache, position_ids=positions[:, :, :6])]
        steps += [decoder(ids[:, t:t + 1], cache, position_ids=positions[:, :, t:t + 1]) for t in range(6, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_padding_changes_no_real_token():
    decoder = tiny()
    ids, positions = fixture_tensors()
    padded = torch.cat([ids, torch.full((1, 3), 7)], dim=1)
    padded_positions = torch.cat([positions, torch.tensor([[[0, 0, 0], [1, 1, 1]]])], dim=2)
    mask = torch.tensor([[True] * 10 + [False] * 3])
    with torch.no_grad():
        alone = decoder(ids, position_ids=positions)
        with_padding = decoder(padded, attention_mask=mask, position_ids=padded_positions)[:, :10]
    torch.testing.assert_close(with_padding, alone, rtol=1e-5, atol=1e-5)


# -- the data --------------------------------------------------------------------------------------


def test_the_fixture_is_what_the_pipeline_draws_from_a_fixed_seed():
    blanker = Blanker(BlankInfillingOptions(mask_ratio=0.5), IDS)  # 3 of the 6 tokens masked
    sample = blanker(np.array(X), np.array([0]), np.random.default_rng(FIXTURE_SEED))
    assert sample.input_ids.tolist() == FIXTURE["input"]
    assert sample.position_ids[0].tolist() == FIXTURE["pos1"]
    assert sample.position_ids[1].tolist() == FIXTURE["pos2"]
    assert sample.labels.tolist() == FIXTURE["target"]
    assert sample.sep == FIXTURE["sep"]
    i, j = np.meshgrid(np.arange(10), np.arange(10), indexing="ij")
    assert sample.attention_mask().tolist() == ((j < 5) | (j <= i)).tolist()


def test_span_lengths_follow_poisson_3_on_1_to_39():
    p = span_length_distribution(3.0, 39)
    mean = float((np.arange(1, 40) * p).sum())
    assert abs(mean - 3.157) < 1e-3  # 3 / (1 - e^-3): Poisson(3) without its zero
    rng = np.random.default_rng(0)
    options = BlankInfillingOptions()
    drawn = [length for _ in range(3000) for length in span_lengths(400, options, rng, p)]
    lengths = np.array(drawn)
    assert lengths.min() >= 1 and lengths.max() <= 39
    standard_error = lengths.std() / np.sqrt(len(lengths))
    assert abs(lengths.mean() - mean) < 4 * standard_error, lengths.mean()


def test_token_blanks_mask_15_percent_without_touching_each_other():
    rng = np.random.default_rng(1)
    options = BlankInfillingOptions()
    p = span_length_distribution()
    for n in (20, 57, 200):
        for _ in range(50):
            spans = place_spans(span_lengths(n, options, rng, p), n, rng)
            masked = sum(end - start for start, end in spans)
            assert masked >= int(0.15 * n) or masked + len(spans) >= n - 3  # enough, or no room for more
            assert all(0 <= a < b <= n for a, b in spans)
            assert all(b1 < a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # a token between spans


def test_sentence_and_document_blanks():
    rng = np.random.default_rng(2)
    options = BlankInfillingOptions()
    starts = np.array([0, 5, 9, 20, 26])
    for _ in range(20):
        spans = sentence_spans(30, starts, options, rng)
        bounds = set(starts.tolist()) | {30}
        assert all(a in bounds and b in bounds for a, b in spans) and sum(b - a for a, b in spans) >= 0.15 * 30
        (start, end), = document_span(40, options, rng)
        assert end == 40 and 20 <= end - start <= 40  # the last 50-100% of the text


def test_document_blank_is_a_prefix_language_model_sample():
    sample = build_sample(np.array(X), [(2, 6)], [GM], S, E)
    assert sample.input_ids.tolist() == [10, 11, GM, S, 12, 13, 14, 15]
    assert sample.position_ids.tolist() == [[0, 1, 2, 2, 2, 2, 2, 2], [0, 0, 0, 1, 2, 3, 4, 5]]
    assert sample.labels.tolist() == [IGNORE] * 3 + [12, 13, 14, 15, E]


# -- from the CLI ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("glm-data")
    rng = np.random.default_rng(0)
    words = "the cat dog sat on a mat near door old red small big ran saw".split()
    documents = ["\n".join(" ".join(rng.choice(words, size=int(rng.integers(4, 9)))) + " ." for _ in range(4))
                 for _ in range(60)]
    (root / "docs.txt").write_text("\n\n".join(documents) + "\n")
    tok = str(root / "tok")
    result = run_cli("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", 120, str(root / "docs.txt"),
                     "--out", tok)
    assert result.code == 0, result.err
    return {"root": root, "docs": str(root / "docs.txt"), "tok": tok}


def test_compose_adds_glm_special_tokens_to_the_tokenizer(corpus, tmp_path):
    from lmkit.tokenizers import load_tokenizer

    before = load_tokenizer(corpus["tok"])
    assert before.token_to_id("[gMASK]") is None
    out = str(tmp_path / "glm")
    result = run_cli("compose", "glm-tiny", "--set", f"tokenizer={corpus['tok']}", "--out", out)
    assert result.code == 0, result.err
    after = load_tokenizer(out)
    for token in ("[MASK]", "[sMASK]", "[gMASK]", "[S]", "[E]"):
        assert after.token_to_id(token) is not None
    assert after.eos_id == after.token_to_id("[E]") and after.bos_id == after.token_to_id("[S]")
    config = json.loads((tmp_path / "glm" / "config.json").read_text())
    assert config["spec"]["decoder"]["vocab_size"] == after.vocab_size
    assert after.encode("[gMASK]") == [after.token_to_id("[gMASK]")]


def test_training_data_is_seeded_per_epoch_and_resumable(corpus, tmp_path):
    from lmkit.model import load_model
    from lmkit.training.arguments import TrainingArguments
    from lmkit.training.batches import DataContext, batches_for

    out = str(tmp_path / "glm")
    assert run_cli("compose", "glm-tiny", "--set", f"tokenizer={corpus['tok']}", "--set",
                   "objectives.blank-infilling.sentence_weight=1", "--set",
                   "objectives.blank-infilling.document_weight=1", "--out", out).code == 0
    model, tokenizer, _ = load_model(out)
    args = TrainingArguments(data=[corpus["docs"]], seq_len=48, batch_size=4, steps=1)

    def make():
        return batches_for(DataContext(model, tokenizer, args, ["blank-infilling"], progress=False,
                                       say=lambda m: None))

    batches, again = make(), make()
    n = len(batches.train_texts)
    first = batches.train(0, 8)
    np.testing.assert_array_equal(first["input_ids"], again.train(0, 8)["input_ids"])  # same seed, same data
    np.testing.assert_array_equal(batches.train(5, 3)["labels"], first["labels"][5:8])  # read by index
    # The same text in the next epoch gets other blanks.
    text = int(batches.order(0)[0])
    next_epoch = int(np.flatnonzero(batches.order(1) == text)[0]) + n
    assert not np.array_equal(batches.train(next_epoch, 1)["input_ids"][0], first["input_ids"][0])
    masks = {tokenizer.token_to_id(t) for t in ("[MASK]", "[sMASK]", "[gMASK]")}
    kinds = {int(t) for row in batches.train(0, 64)["input_ids"] for t in row if t in masks}
    assert kinds == masks  # the mixture draws all three kinds of blank
    assert (first["labels"] != IGNORE).any(axis=1).all()  # every sample has a Part B to learn


@pytest.mark.parametrize("option, value", [("max_span_length", 0), ("max_span_length", 600),
                                           ("mask_ratio", 1.5), ("document_min_ratio", 0)])
def test_out_of_range_options_are_one_line_errors(corpus, tmp_path, option, value):
    result = run_cli("compose", "glm-tiny", "--set", f"objectives.blank-infilling.{option}={value}",
                     "--out", str(tmp_path / "m"))
    assert result.code != 0 and option in result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err


# -- embed: the text as Part A ---------------------------------------------------------------------


def test_features_read_the_text_both_ways_as_part_a():
    decoder = tiny()
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    states = decoder.features(ids).last_hidden_state
    positions = torch.tensor([[[0, 1, 2, 3, 4, 5], [0] * 6]])  # pos1 0, 1, ...; pos2 0: all Part A
    torch.testing.assert_close(states, decoder.hidden_states(ids, None, None, positions))
    edited = ids.clone()
    edited[0, 5] = 20
    assert not torch.allclose(decoder.features(edited).last_hidden_state[0, 0], states[0, 0])  # sees what follows
    # GPT's fine-tuning recipe still reads the left-to-right states, which its auxiliary LM loss reuses
    from types import SimpleNamespace

    from lmkit.tasks.recipes import DecoderRecipe

    model = SimpleNamespace(decoder=decoder)
    a = DecoderRecipe().run(model, ids, None, None).last_hidden_state
    b = DecoderRecipe().run(model, edited, None, None).last_hidden_state
    torch.testing.assert_close(a[0, :5], b[0, :5])


def test_features_of_a_padded_batch_equal_each_text_alone():
    decoder = tiny()
    rows = [[10, 11, 12, 13, 14, 15], [20, 21, 22]]
    ids = torch.tensor([rows[0], rows[1] + [0, 0, 0]])
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    batched = decoder.features(ids, mask).last_hidden_state
    for i, row in enumerate(rows):
        alone = decoder.features(torch.tensor([row])).last_hidden_state[0]
        torch.testing.assert_close(batched[i, :len(row)], alone, atol=1e-5, rtol=1e-5)


def test_embed_gives_part_a_states(tmp_path):
    from lmkit.model import load_model

    (tmp_path / "docs.txt").write_text("the cat sat on the mat .\na dog ran near the door .\n" * 20)
    tok, model_dir = str(tmp_path / "tok"), str(tmp_path / "glm")
    for args in (("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", 80, tmp_path / "docs.txt", "--out", tok),
                 ("compose", "glm-tiny", "--set", f"tokenizer={tok}", "--out", model_dir)):
        assert run_cli(*args).code == 0
    result = run_cli("embed", model_dir, "--text", "the cat sat", "--text", "a dog ran near the door", "--pool",
                     "none", "--tokens")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    model, tokenizer, _ = load_model(model_dir)
    for row, text in zip(rows, ("the cat sat", "a dog ran near the door")):
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=True)])
        T = ids.size(1)
        assert row["input_ids"] == ids[0].tolist()
        with torch.no_grad():
            expected = model.decoder.hidden_states(ids, None, None, torch.tensor([[list(range(T)), [0] * T]]))[0]
        np.testing.assert_allclose(np.array(row["token_states"]), expected.numpy(), atol=1e-5)
