"""`lmkit import-hf`: a Hugging Face GPT-2 becomes an lmkit model with the same logits and the same
greedy and beam-search output as transformers' generate(); bad checkpoints are refused in one line."""
import io
import json
import random
import shutil

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from lmkit.commands.import_hf import import_hf  # noqa: E402
from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions  # noqa: E402
from lmkit.decoding.torch_backend import TorchBackend  # noqa: E402
from lmkit.model import load_model  # noqa: E402

EOT = "<|endoftext|>"
TEXTS = ["the quick brown fox", "a lazy dog sat on the mat and", "café"]  # 3 lengths: a padded batch
NEW_TOKENS = 12


def gpt2_tokenizer() -> Tokenizer:
    """A GPT-2 style byte-level BPE, trained on generated text."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog sat on mat and ran café naïve".split()
    corpus = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(500)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, model, tokenizer) of a random GPT2LMHeadModel saved as save_pretrained does."""
    directory = tmp_path_factory.mktemp("hf-gpt2")
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=gpt2_tokenizer(), bos_token=EOT,
                                                     eos_token=EOT, unk_token=EOT)
    tokenizer.save_pretrained(directory)
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=eos, eos_token_id=eos)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than HF's init: peaked distributions, biases and LN gains away from 0 and 1
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    assert (directory / "model.safetensors").is_file() and not (directory / "pytorch_model.bin").exists()
    return directory, model, tokenizer


@pytest.fixture(scope="module")
def imported(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "gpt2"
    import_hf(str(checkpoint[0]), str(out))
    return out


def hf_generate(model, ids, eos, **settings) -> list[int]:
    """transformers' continuation of one prompt, cut at its first eos (lmkit leaves the eos out)."""
    with torch.no_grad():
        output = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=eos, eos_token_id=eos,
                                **settings)
    new = output[0, len(ids):].tolist()
    return new[:new.index(eos)] if eos in new else new


def test_import_through_the_cli_writes_a_model_directory(checkpoint, tmp_path, run):
    out = tmp_path / "model"
    result = run("import-hf", checkpoint[0], "--out", out)
    assert result.code == 0, result.err
    assert result.out.strip() == str(out)
    assert "decoder=gpt2" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json",
                                                     "tokenizer_config.json"]
    spec = json.loads((out / "config.json").read_text())["spec"]
    assert spec["decoder"]["type"] == "gpt2" and spec["decoder"]["d_model"] == 64
    assert spec["decoding"] == {"strategy": "greedy", "max_new_tokens": 50, "no_repeat_ngram_size": 0}
    assert spec["tokenizer"] == {"type": "bytelevel-bpe", "vocab_size": len(checkpoint[2])}

    again = run("import-hf", checkpoint[0], "--out", out)
    assert again.code == 1 and "pass --force" in again.err
    assert run("import-hf", checkpoint[0], "--out", out, "--force").code == 0


def test_logits_match_transformers(checkpoint, imported):
    model, _, _ = load_model(str(imported))
    ids = torch.randint(0, len(checkpoint[2]), (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = checkpoint[1](ids).logits
        logits = model.eval().decoder(ids)
    assert (logits - expected).abs().max() < 1e-4


def test_the_tokenizer_is_the_checkpoints(checkpoint, imported):
    _, tokenizer, _ = load_model(str(imported))
    hf_tokenizer = checkpoint[2]
    assert tokenizer.eos_id == hf_tokenizer.eos_token_id
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert ids == hf_tokenizer.encode(text)
        assert tokenizer.decode(ids) == text


def test_vocab_and_merges_are_read_when_there_is_no_tokenizer_json(checkpoint, tmp_path):
    source = tmp_path / "hf"
    shutil.copytree(checkpoint[0], source)
    (source / "tokenizer.json").unlink()
    Tokenizer.from_file(str(checkpoint[0] / "tokenizer.json")).model.save(str(source))  # vocab.json, merges.txt
    import_hf(str(source), str(tmp_path / "out"))
    _, tokenizer, _ = load_model(str(tmp_path / "out"))
    assert [tokenizer.encode(text) for text in TEXTS] == [checkpoint[2].encode(text) for text in TEXTS]
    assert tokenizer.eos_id == checkpoint[2].eos_token_id


@pytest.mark.parametrize("flags, settings", [
    (["--strategy", "greedy"], {"num_beams": 1}),
    (["--strategy", "beam", "--num-beams", "4"], {"num_beams": 4, "length_penalty": 1.0, "early_stopping": False}),
    (["--strategy", "beam", "--num-beams", "4", "--early-stopping"], {"num_beams": 4, "early_stopping": True}),
], ids=["greedy", "beam", "beam-early-stopping"])
def test_generate_matches_transformers(checkpoint, imported, run, flags, settings):
    prompts = [arg for text in TEXTS for arg in ("--prompt", text)]
    result = run("generate", imported, *prompts, *flags, "--max-new-tokens", NEW_TOKENS, "--json", "--device", "cpu")
    assert result.code == 0, result.err
    outputs = json.loads(result.out)
    _, model, tokenizer = checkpoint
    for text, output in zip(TEXTS, outputs):
        expected = hf_generate(model, tokenizer.encode(text), tokenizer.eos_token_id, **settings)
        assert output["prompt"] == text
        assert output["tokens"] == expected
        assert output["text"] == tokenizer.decode(expected)


@pytest.mark.parametrize("early_stopping", [False, True])
@pytest.mark.parametrize("length_penalty", [1.0, 0.5])
def test_beam_search_matches_transformers_when_hypotheses_end(checkpoint, imported, early_stopping, length_penalty):
    """eos is set to tokens the model often picks, so hypotheses end at different lengths."""
    _, model, tokenizer = checkpoint
    prompts = [tokenizer.encode(text) for text in TEXTS]
    decoder = load_model(str(imported))[0].decoder
    frequent = hf_generate(model, prompts[1], eos=-1, num_beams=4)[1:4]
    options = BeamSearchOptions(max_new_tokens=NEW_TOKENS, num_beams=4, length_penalty=length_penalty,
                                early_stopping=early_stopping, num_return_sequences=2)
    endings = set()
    for eos in frequent:
        results = BeamSearch(options).generate(TorchBackend(decoder, NEW_TOKENS), prompts, eos_id=eos, pad_id=0)
        for prompt, result in zip(prompts, results):
            with torch.no_grad():
                output = model.generate(
                    torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                    do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=eos, eos_token_id=eos,
                    num_beams=4, length_penalty=length_penalty, early_stopping=early_stopping,
                    num_return_sequences=2, output_scores=True, return_dict_in_generate=True)
            for generation, sequence, score in zip([result, *result.alternatives], output.sequences,
                                                   output.sequences_scores):
                new = sequence[len(prompt):].tolist()
                assert generation.tokens == (new[:new.index(eos)] if eos in new else new)
                assert generation.normalized_score == pytest.approx(score.item(), abs=1e-4)
                endings.add(generation.finish_reason)
    assert endings == {"eos", "length"}


def test_greedy_with_eos_matches_transformers(checkpoint, imported):
    _, model, tokenizer = checkpoint
    prompts = [tokenizer.encode(text) for text in TEXTS]
    decoder = load_model(str(imported))[0].decoder
    for eos in hf_generate(model, prompts[0], eos=-1)[2:5]:
        results = Greedy(GreedyOptions(max_new_tokens=NEW_TOKENS)).generate(
            TorchBackend(decoder, NEW_TOKENS), prompts, eos_id=eos, pad_id=0)
        assert [r.tokens for r in results] == [hf_generate(model, p, eos) for p in prompts]


def test_generate_streams_one_prompt_and_reads_prompts_from_stdin(checkpoint, imported, run, monkeypatch):
    _, model, tokenizer = checkpoint
    expected = [tokenizer.decode(hf_generate(model, tokenizer.encode(text), tokenizer.eos_token_id)) for text in TEXTS]
    streamed = run("generate", imported, "--prompt", TEXTS[2], "--max-new-tokens", NEW_TOKENS, "--device", "cpu")
    assert streamed.code == 0, streamed.err
    assert streamed.out == TEXTS[2] + expected[2] + "\n"

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n\n"))
    piped = run("generate", imported, "--max-new-tokens", NEW_TOKENS, "--device", "cpu")
    assert piped.code == 0, piped.err
    assert piped.out == "\n\n".join(text + continuation for text, continuation in zip(TEXTS, expected)) + "\n"


def test_generate_refuses_what_does_not_fit_in_one_line(imported, run):
    wrong = run("generate", imported, "--prompt", "the", "--top-k", 5)
    assert wrong.code == 2 and "--top-k does not apply to the greedy strategy; it is an option of sample" in wrong.err
    bad = run("generate", imported, "--prompt", "the", "--strategy", "beam", "--num-beams", 0)
    assert bad.code == 1 and bad.err == "error: decoding beam: num_beams must be at least 1, got 0\n"

    long_prompt = "the quick brown fox " * 30  # more than the 64 positions of the model
    too_long = run("generate", imported, "--prompt", long_prompt, "--max-new-tokens", 4, "--device", "cpu")
    assert too_long.code == 1 and too_long.out == ""
    assert too_long.err.startswith("error: the prompt has ") and "pass --truncate to keep its last 61" in too_long.err
    cut = run("generate", imported, "--prompt", long_prompt, "--max-new-tokens", 4, "--truncate", "--json")
    assert cut.code == 0 and len(json.loads(cut.out)[0]["tokens"]) == 4
    assert cut.err.startswith("warning: kept the last 61 of the ")


def without_config(checkpoint, directory):
    (directory / "weights.safetensors").write_bytes(b"")


def electra(checkpoint, directory):
    transformers.ElectraConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64).save_pretrained(directory)


def pickle_only(checkpoint, directory):
    shutil.copy(checkpoint[0] / "config.json", directory)
    shutil.copy(checkpoint[0] / "tokenizer.json", directory)
    torch.save(checkpoint[1].state_dict(), directory / "pytorch_model.bin")


def without_tokenizer(checkpoint, directory):
    shutil.copy(checkpoint[0] / "config.json", directory)
    shutil.copy(checkpoint[0] / "model.safetensors", directory)


def other_sizes(checkpoint, directory):
    shutil.copytree(checkpoint[0], directory, dirs_exist_ok=True)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "n_embd": 32}))


@pytest.mark.parametrize("make, message", [
    (without_config, "has no config.json: it is not a Hugging Face model directory"),
    (electra, "holds a 'electra' model (config.json model_type); lmkit imports albert, bert, gpt2"),
    (pickle_only, "pytorch_model.bin: it is a pickle (torch.save zip archive), and loading a pickle can run "
                  "arbitrary code; convert it to safetensors"),
    (without_tokenizer, "has no tokenizer (tokenizer.json, spiece.model, vocab.txt, or vocab.json with merges.txt)"),
    (other_sizes, "wte.weight is (300, 64) but the config says (vocab_size, n_embd) = (300, 32)"),
], ids=["no-config", "electra", "pickle", "no-tokenizer", "mismatch"])
def test_bad_checkpoints_are_refused_in_one_line(checkpoint, tmp_path, run, make, message):
    source = tmp_path / "hf"
    source.mkdir()
    make(checkpoint, source)
    out = tmp_path / "out"
    result = run("import-hf", source, "--out", out)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    assert message in result.err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no staging directory left behind either


def test_an_import_interrupted_while_writing_leaves_no_out_or_the_old_one(checkpoint, tmp_path, run, monkeypatch):
    import lmkit.model as model_module

    save = model_module.save_weights

    def written_then_interrupted(*args, **kwargs):
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(model_module, "save_weights", written_then_interrupted)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "model"
    assert run("import-hf", checkpoint[0], "--out", out).code == 130
    assert list(work.iterdir()) == []
    out.mkdir()
    (out / "config.json").write_text('{"old": true}\n')
    assert run("import-hf", checkpoint[0], "--out", out, "--force").code == 130
    assert [p.name for p in work.iterdir()] == ["model"] and [p.name for p in out.iterdir()] == ["config.json"]
    assert (out / "config.json").read_text() == '{"old": true}\n'
    monkeypatch.undo()
    assert run("import-hf", checkpoint[0], "--out", out, "--force").code == 0
    assert (out / "model.safetensors").is_file() and [p.name for p in work.iterdir()] == ["model"]
