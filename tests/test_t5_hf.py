"""`lmkit import-hf` of transformers' T5: encoder states and logits within 1e-4 of
T5ForConditionalGeneration (random weights, transformers pinned in constraints.txt), and greedy and
beam-4 tokens identical to its generate(), for v1.0 (relu, tied + rescaled output) and v1.1 (gated-gelu,
own output layer), tied and untied."""
import json
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from lmkit.commands.import_hf import import_hf  # noqa: E402
from lmkit.errors import LmkitError  # noqa: E402
from lmkit.model import load_model  # noqa: E402
from lmkit.opening import open_model  # noqa: E402
from lmkit.tokenizers.training import fixed_order  # noqa: E402

WORDS = "the quick brown fox jumps over a lazy dog sat on mat and ran".split()
SENTINELS = 10
VOCAB = 96  # the model's rows: the tokenizer's ~50 tokens padded, as T5 pads 32,100 to 32,128
# name: (feed_forward_proj, tie_word_embeddings as given to T5Config, own lm_head, how far eos's output row
# leans towards the decoder's mean state: enough that some hypotheses end with eos inside the beams)
VARIANTS = {
    "v1.0": ("relu", True, False, 1.0),  # t5-small: one matrix in and out, states rescaled before it
    "v1.1": ("gated-gelu", False, True, 0.5),  # google/t5-v1_1-*: own output layer, no rescale
    "v1.0-untied": ("relu", False, True, 0.8),
    "v1.1-tied": ("gated-gelu", True, False, 0.7),
}
SOURCES = ["the quick brown fox", "a lazy dog sat on the mat and ran over the fox", "dog"]


def t5_tokenizer() -> Tokenizer:
    """A T5-style unigram: <pad> 0, </s> 1, <unk> 2, pieces, then sentinels counting down from the end."""
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(300)]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=60, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    # As `lmkit train-tokenizer` does: the trainer numbers pieces in hash-map order, which differs from one
    # process to the next, and the tests that pick tokens by what a model generates need the same ids.
    tokenizer = fixed_order(tokenizer)
    tokenizer.add_special_tokens([f"<extra_id_{i}>" for i in range(SENTINELS - 1, -1, -1)])
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return tokenizer


def hf_model(variant: str, seed: int = 0):
    feed_forward, tie, own_head, lean = VARIANTS[variant]
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj=feed_forward,
        tie_word_embeddings=tie, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, dropout_rate=0.0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:  # norm gains away from 1, so a missing one shows
                parameter.mul_(1 + 0.3 * torch.randn_like(parameter))
        if own_head:
            # transformers 5.x ties lm_head to shared whatever the flag says (it only means "rescale");
            # an output layer of its own is assigned after init, as a v1.1 checkpoint's is loaded.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32) * 0.5)
        # eos likelier, so that hypotheses end inside the beams: its output row leans towards the decoder's
        # mean final state on random inputs.
        ids = torch.randint(3, 50, (8, 6))
        states = model(input_ids=ids, decoder_input_ids=ids, output_hidden_states=True).decoder_hidden_states[-1]
        mean = states.mean((0, 1))
        head = model.lm_head.weight
        head[1] += lean * head[1].norm() * mean / mean.norm()
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    """(variant, hf model, hf tokenizer, lmkit model directory imported from the saved checkpoint)."""
    variant = request.param
    directory = tmp_path_factory.mktemp(f"hf-t5-{variant}")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>",
                                                     pad_token="<pad>", unk_token="<unk>")
    tokenizer.save_pretrained(directory)
    model = hf_model(variant)
    model.save_pretrained(directory)
    out = tmp_path_factory.mktemp("imported") / variant
    import_hf(str(directory), str(out))
    return variant, model, tokenizer, str(out)


def batch(tokenizer):
    encoded = tokenizer(SOURCES, padding=True, return_tensors="pt")  # with </s>, as T5 reads sources
    return encoded["input_ids"], encoded["attention_mask"]


def test_options_record_tying_and_rescale(checkpoint):
    variant, _, _, out = checkpoint
    feed_forward, tie, own_head, _ = VARIANTS[variant]
    decoder = json.load(open(f"{out}/config.json"))["spec"]["decoder"]
    assert decoder["feed_forward"] == feed_forward
    assert decoder["tie_word_embeddings"] is (not own_head)
    assert decoder["rescale_output"] is tie
    assert decoder["share_embedding"] is True


def test_encoder_states_and_logits_match_transformers(checkpoint):
    _, hf, tokenizer, out = checkpoint
    model, _, _ = load_model(out)
    model.eval()
    ids, mask = batch(tokenizer)
    targets = torch.tensor([[0, 5, 9, 14, 3, 7], [0, 11, 4, 4, 12, 8], [0, 6, 6, 6, 20, 30]])
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=targets)
        encoded = model.encoder(ids, mask)
        logits, _ = model.decoder(targets, model.decoder.start(encoded))
    real = mask.bool()
    states = encoded.last_hidden_state
    assert (states - expected.encoder_last_hidden_state)[real].abs().max() < 1e-4
    assert (logits - expected.logits).abs().max() < 1e-4
    assert expected.logits.abs().max() > 1  # not a trivially small comparison


def test_cached_steps_equal_one_pass(checkpoint):
    model, _, _ = load_model(checkpoint[3])
    model.eval()
    ids, mask = batch(checkpoint[2])
    targets = torch.randint(3, 50, (3, 7))
    with torch.no_grad():
        state = model.decoder.start(model.encoder(ids, mask))
        full, _ = model.decoder(targets, state)
        steps, state = model.decoder(targets[:, :3], state)
        outputs = [steps]
        for t in range(3, 7):
            step, state = model.decoder(targets[:, t:t + 1], state)
            outputs.append(step)
    torch.testing.assert_close(torch.cat(outputs, 1), full, rtol=1e-5, atol=1e-5)


def hf_generate(model, tokenizer, **settings) -> list[list[list[int]]]:
    """Per source, transformers' returned hypotheses: tokens after the start, cut at eos."""
    ids, mask = batch(tokenizer)
    n = settings.get("num_return_sequences", 1)
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=14,
                                decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, **settings)
    hypotheses = []
    for row in output[:, 1:].tolist():
        hypotheses.append(row[:row.index(1)] if 1 in row else row)
    return [hypotheses[i * n:(i + 1) * n] for i in range(len(SOURCES))]


def lmkit_generate(directory, tokenizer, strategy, **options) -> list[list[list[int]]]:
    opened = open_model(directory, device="cpu")
    sources = [tokenizer(text)["input_ids"] for text in SOURCES]
    results = opened.generate_ids(sources, opened.decoding(strategy, max_new_tokens=14, **options))
    return [[r.tokens, *(a.tokens for a in r.alternatives)] for r in results]


def test_greedy_tokens_match_generate(checkpoint):
    _, hf, tokenizer, out = checkpoint
    assert lmkit_generate(out, tokenizer, "greedy") == hf_generate(hf, tokenizer, num_beams=1)


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, 2.0])
def test_beam_4_n_best_matches_generate(checkpoint, length_penalty):
    variant, hf, tokenizer, out = checkpoint
    if length_penalty != 1.0 and variant not in ("v1.0", "v1.1"):
        pytest.skip("other length penalties on the released variants only (the suite's time)")
    settings = {"num_beams": 4, "length_penalty": length_penalty, "num_return_sequences": 4}
    expected = hf_generate(hf, tokenizer, early_stopping=False, **settings)
    assert lmkit_generate(out, tokenizer, "beam", **settings) == expected
    if length_penalty <= 1:  # (2.0 favours long hypotheses: they may all run to the limit)
        ended = sum(len(h) < 14 for hypotheses in expected for h in hypotheses)
        assert ended, "no hypothesis ended with eos: the comparison would not cover eos inside the beam"


def test_text_prompts_generate_as_transformers(checkpoint):
    """`lmkit generate` on text: each source ends with </s> (encoder.append_eos), as transformers' T5 tokenizer
    writes it, so the tokens are generate()'s on the tokenizer's ids."""
    from conftest import run_cli

    variant, hf, tokenizer, out = checkpoint
    assert open_model(out, device="cpu").encode_sources(SOURCES) == tokenizer(SOURCES)["input_ids"]
    result = run_cli("generate", out, *(x for text in SOURCES for x in ("--prompt", text)), "--strategy", "greedy",
                     "--max-new-tokens", "14", "--json")
    assert result.code == 0, result.err
    expected = [hypotheses[0] for hypotheses in hf_generate(hf, tokenizer, num_beams=1)]
    assert [r["tokens"] for r in json.loads(result.out)] == expected


def test_unsupported_variant_names_the_field(tmp_path):
    hf_model("v1.0").save_pretrained(tmp_path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=t5_tokenizer(), eos_token="</s>", pad_token="<pad>",
                                         unk_token="<unk>").save_pretrained(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    config["feed_forward_proj"] = "gated-silu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmkitError, match="feed_forward_proj"):
        import_hf(str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_relative_buckets_by_hand():
    """The hand-checked table (32 buckets, max distance 128) of ../shared/reference/next-families.md."""
    from lmkit.nn.relative import relative_position_bucket

    rel = torch.tensor([-200, -128, -64, -32, -16, -12, -9, -8, -7, -1, 0, 1, 7, 8, 16, 64, 128])
    encoder = [15, 15, 14, 12, 10, 9, 8, 8, 7, 1, 0, 17, 23, 24, 26, 30, 31]
    decoder = [31, 31, 26, 21, 16, 12, 9, 8, 7, 1, 0, 0, 0, 0, 0, 0, 0]
    assert relative_position_bucket(rel, bidirectional=True).tolist() == encoder
    assert relative_position_bucket(rel, bidirectional=False).tolist() == decoder
    reference = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    wide = torch.arange(-300, 300)
    for bidirectional in (True, False):
        assert torch.equal(relative_position_bucket(wide, bidirectional=bidirectional),
                           reference(wide, bidirectional=bidirectional))




@pytest.mark.parametrize("preset, published", [("t5-small", 60_506_624), ("t5-base", 222_903_552),
                                               ("t5-large", 737_668_096), ("t5-v1_1-small", 76_961_152),
                                               ("t5-v1_1-base", 247_577_856)])
def test_preset_parameter_counts(preset, published):
    """The released checkpoints' sizes (what transformers counts for them), built on the meta device."""
    from lmkit.model import build_model
    from lmkit.registry import get_host
    from lmkit.spec import resolve

    spec = resolve(dict(get_host().presets[preset].spec), get_host())
    with torch.device("meta"):
        model = build_model(spec, seed=None)
    assert sum(p.numel() for p in model.parameters()) == published


def test_spiece_model_alone_is_imported_as_t5_tokenizes(tmp_path):
    """A checkpoint with spiece.model and no tokenizer.json: converted at import (the spiece extra), its ids
    those of SentencePiece itself plus </s> (what the slow T5Tokenizer gave) and of transformers' T5Tokenizer."""
    import io

    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS + ["Zoë", "naïve", "ﬁsh"]) for _ in range(10)) for _ in range(300)]
    written = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=written, vocab_size=48,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   minloglevel=2)
    checkpoint = tmp_path / "hf"
    checkpoint.mkdir()
    (checkpoint / "spiece.model").write_bytes(written.getvalue())
    config = transformers.T5Config(vocab_size=192, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                   decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    transformers.T5ForConditionalGeneration(config).save_pretrained(checkpoint)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "generation_config.json",
                                                           "model.safetensors", "spiece.model"]
    import_hf(str(checkpoint), str(tmp_path / "out"))
    from lmkit.tokenizers import load_tokenizer

    ours = load_tokenizer(str(tmp_path / "out"))
    assert ours.vocab_size == 148 and ours.token_to_id("<extra_id_0>") == 147 and ours.eos_id == 1
    processor = spm.SentencePieceProcessor(model_proto=written.getvalue())
    reference = transformers.T5Tokenizer.from_pretrained(str(checkpoint))
    texts = ["the quick brown fox", "  a  lazy dog ran  ", "Zoë is naïve about ﬁsh", "the ☃ sat on the mat",
             "the fox <extra_id_0> over <extra_id_1>"]
    for text in texts:
        expected = reference(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True) == expected, text
        if "<extra_id" not in text:  # SentencePiece itself knows no sentinels
            assert processor.encode(text) + [1] == expected, text
    assert open_model(str(tmp_path / "out"), device="cpu").encode_sources(texts[:1]) == [reference(texts[0])["input_ids"]]
