"""CLI conventions: fast start without torch, listings with --json, one-line errors and exit codes."""
import json
import re
import subprocess
import sys

import pytest
from conftest import run_subprocess


def test_import_and_help_do_not_import_torch():
    code = ("import sys, lmkit; from lmkit.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'tokenizers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False False"


def test_listings_do_not_import_torch():
    code = ("import sys; from lmkit.cli import main\n"
            "for args in (['plugins'], ['components', '--json'], ['presets']):\n"
            "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_help_lists_the_commands():
    result = run_subprocess("--help")
    assert result.code == 0
    for command in ("plugins", "components", "presets", "tokenizer", "compose", "show"):
        assert command in result.out


def test_version(run):
    result = run("--version")
    assert result.code == 0 and result.out.strip() == "lmkit, version 0.1.0"


def test_plugins_lists_the_built_ins(run):
    result = run("plugins", "--json")
    assert result.code == 0
    plugins = {p["name"]: p for p in json.loads(result.out)}
    assert plugins["gpt"]["status"] == "ok" and "decoder:gpt2" in plugins["gpt"]["components"]
    assert plugins["core"]["distribution"] == "lmkit-toolkit"
    assert "register_decoders" in plugins["gpt"]["hooks"]
    # Commands too (a trial's plugin registered one that worked and was not listed).
    assert plugins["neurons"]["components"] == ["command:neurons"]
    table = run("plugins")
    assert table.out.splitlines()[0].split() == ["NAME", "VERSION", "STATUS", "REGISTERS"]


def test_components_with_their_option_schemas(run):
    result = run("components", "--kind", "decoder", "--json")
    rows = json.loads(result.out)
    gpt2 = next(r for r in rows if r["name"] == "gpt2")
    options = {o["name"]: o for o in gpt2["options"]}
    assert options["n_layers"]["type"] == "an integer" and options["n_layers"]["default"] == 12
    assert options["d_ff"]["type"] == "an integer (or unset)" and options["d_ff"]["default"] is None
    assert {r["kind"] for r in rows} == {"decoder"}
    assert "bytelevel-bpe" in run("components", "--kind", "tokenizer").out


def test_presets(run):
    result = run("presets", "--json")
    names = {p["name"] for p in json.loads(result.out)}
    assert {"gpt2-small", "gpt2-medium", "gpt-mini"} <= names
    assert "decoder=gpt2" in run("presets").out


def test_usage_errors_exit_2(run, tmp_path):
    result = run("components", "--kind", "decodr")
    assert result.code == 2 and "Invalid value for '--kind'" in result.err
    assert run("no-such-command").code == 2
    # lmkit's own checks of the command line's form exit 2 too (a trial found them exiting 1)
    malformed = run("compose", "gpt2-tiny", "--out", tmp_path / "m", "--set", "foo")
    assert malformed.code == 2 and malformed.err == "error: --set 'foo': expected key=value, e.g. --set " \
        "decoder.n_layers=4\n" and not (tmp_path / "m").exists()
    assert run("compose", "gpt2-tiny", "--out", tmp_path / "m").code == 0
    (tmp_path / "t.txt").write_text("the cat sat\n")
    missing = run("train", tmp_path / "m", "--data", tmp_path / "t.txt", "--steps", "2")
    assert missing.code == 2 and "--batch-size, --seq-len are needed to start a training run" in missing.err


def test_errors_are_one_line_with_exit_1(run):
    result = run("compose", "gpt-mni", "--out", "/nonexistent/x")
    assert result.code == 1
    assert result.err == ("error: 'gpt-mni' is neither a preset nor a .toml file (did you mean 'gpt-mini'?); "
                          f"presets: {result.err.split('presets: ')[1]}")
    assert result.err.count("\n") == 1 and result.out == ""


def test_debug_shows_the_traceback():
    plain = run_subprocess("show", "/nonexistent")
    assert plain.code == 1 and "Traceback" not in plain.err
    debug = run_subprocess("show", "/nonexistent", env={"LMKIT_DEBUG": "1"})
    assert debug.code == 1 and "Traceback" in debug.err and "ArtifactError" in debug.err


def test_tokenizer_train_and_encode(run, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    (corpus / "b.txt").write_text("a lazy dog sleeps in the sun all day long\n" * 50)
    out = tmp_path / "tok"
    result = run("tokenizer", "train", "--kind", "bytelevel-bpe", "--vocab-size", "300", corpus / "a.txt",
                 corpus / "b.txt", "--out", out)
    assert result.code == 0, result.err
    assert result.out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    encoded = json.loads(run("tokenizer", "encode", out, "the lazy dog", "--json").out)
    assert "".join(encoded["tokens"]).replace("Ġ", " ") == "the lazy dog"
    char = run("tokenizer", "train", "--kind", "char", "--vocab-size", "40", corpus, "--out", tmp_path / "chars")
    assert char.code == 0, char.err
    # Two sentences hold nowhere near 5000 pieces: the trainer stops short, and says so.
    unigram = run("tokenizer", "train", "--kind", "unigram", "--vocab-size", "5000", corpus, "--out", tmp_path / "uni")
    assert unigram.code == 0, unigram.err
    size = json.loads(run("tokenizer", "encode", tmp_path / "uni", "dog", "--json").out)  # it opens and encodes
    assert size["ids"] and "is fewer than the 5000 asked for: the trainer found no more pieces" in unigram.err
    # T5's sentinels come on top of --vocab-size: the shortfall counts the trained tokens alone (a user's trial).
    t5 = run("tokenizer", "train", "--kind", "unigram", "--vocab-size", "5000", "--set", "sentinels=100", corpus,
             "--out", tmp_path / "t5")
    trained = int(t5.err.split(" trained, 100 sentinels)")[0].rsplit("(", 1)[1])
    assert t5.code == 0 and f"; {trained} is fewer than the 5000 asked for" in t5.err


def test_tokenizer_bad_inputs_are_one_line_errors_and_write_nothing(run, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    out = tmp_path / "tok"
    cases = [
        ([latin1], "latin1.txt is not UTF-8 text"),
        ([empty], "empty"),
        ([tmp_path / "missing.txt"], "missing.txt"),
    ]
    for files, message in cases:
        result = run("tokenizer", "train", "--kind", "bytelevel-bpe", *files, "--out", out)
        assert result.code == 1 and message in result.err and result.err.count("\n") == 1, result.err
        assert not out.exists()
    unknown = run("tokenizer", "train", "--kind", "bytelevel", empty, "--out", out)
    assert unknown.code == 1 and "did you mean 'bytelevel-bpe'" in unknown.err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"model": 3}')
    result = run("tokenizer", "encode", bad, "text")
    assert result.code == 1 and "is not a valid tokenizer file" in result.err and result.err.count("\n") == 1


def test_commands_that_need_torch_say_so_when_it_is_missing(tmp_path):
    out = tmp_path / "m"
    code = ("import sys; sys.modules['torch'] = None  # as if torch were not installed\n"
            "from lmkit.cli import main\n"
            f"main(['compose', 'gpt2-tiny', '--out', {str(out)!r}])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr == ("error: building a model needs PyTorch, which is not installed; install it with: "
                           "pip install -c constraints.txt 'lmkit-toolkit[torch]'\n")
    assert not out.exists()


def test_tokenizer_trains_on_the_text_field_of_jsonl(run, tmp_path):
    records = [{"text": f"the quick brown fox number {i} jumps", "id": i} for i in range(200)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    out = tmp_path / "tok"
    result = run("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "200", data, "--out", out)
    assert result.code == 0, result.err
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert "quick" in vocab and "text" not in vocab and '"' not in vocab  # the records' words, not their JSON
    missing = run("tokenizer", "train", "--kind", "wordpiece", data, "--text-field", "body", "--out", tmp_path / "t2")
    assert missing.code == 1 and "docs.jsonl:1 has no 'body' field" in missing.err


def test_compose_bad_specs_on_the_command_line(run, tmp_path):
    spec = tmp_path / "model.toml"
    spec.write_text("[decoder\ntype = gpt2\n")
    cases = [
        ([spec], "model.toml is not valid TOML"),
        (["gpt2-tiny", "--set", "decoder.n_layers=two"], "decoder.n_layers: 'two' is not an integer"),
        (["gpt2-tiny", "--set", "decoder.n_layer=2"], "did you mean 'n_layers'"),
        (["gpt2-tiny", "--set", "encoder.type=bret"], "unknown encoder 'bret'"),
    ]
    for args, message in cases:
        result = run("compose", *args, "--out", tmp_path / "m")
        assert result.code == 1 and message in result.err and result.err.count("\n") == 1, result.err
        assert not (tmp_path / "m").exists()


def test_usage_errors_are_one_line_too(run):
    result = run("compose", "gpt2-tiny")
    assert result.code == 2
    assert result.err == "error: Missing option '--out'. (see: lmkit compose --help)\n"


@pytest.mark.parametrize("name, body", [
    ("task.jsonl", '{"input": "caf\xe9", "target": "a"}\n'), ("task.tsv", "sentence\tlabel\ncaf\xe9\t1\n"),
    ("squad.json", '{"data": [{"title": "caf\xe9"}]}'), ("tags.conll", "caf\xe9 NN\n"),
    ("sources.txt", "caf\xe9\n")])
def test_every_task_and_input_reader_refuses_text_that_is_not_utf8(name, body, tmp_path):
    # Each reader of a user's file (task files of every format, --input of translate and embed) says which
    # file and where, in one line, where a UnicodeDecodeError used to be an internal error.
    from lmkit.data import read_text
    from lmkit.errors import DataError
    from lmkit.tasks.formats import read_task_file
    from lmkit.tasks.qa import read_squad
    from lmkit.tasks.text_to_text import read_text_pairs
    from lmkit.tasks.tokens import read_conll

    path = tmp_path / name
    path.write_bytes(body.encode("latin-1"))
    readers = {"task.jsonl": [lambda p: read_task_file(p, "classification"), read_text_pairs],
               "task.tsv": [lambda p: read_task_file(p, "classification")], "squad.json": [read_squad],
               "tags.conll": [read_conll], "sources.txt": [read_text]}
    for read in readers[name]:
        with pytest.raises(DataError, match=f"{name} is not UTF-8 text"):
            read(str(path))


def test_translate_input_that_is_missing_or_not_utf8_is_a_one_line_error(run, trained_nmt, tmp_path):
    latin1 = tmp_path / "sources.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1"))
    for path, says in ((latin1, "is not UTF-8 text"), (tmp_path / "missing.txt", "does not exist")):
        result = run("translate", trained_nmt[0], "--input", path)
        assert result.code != 0 and says in result.err and "Traceback" not in result.err
        assert len(result.err.strip().splitlines()) == 1


def test_generate_prints_a_continuation_as_it_reads_after_the_prompt(run, tmp_path):
    """A word-end BPE tokenizer (GPT's, ULMFiT's): the printed text is the prompt's and continuation's tokens decoded
    together, streamed or not. A trial's ULMFiT printed "the redthe the": the continuation decoded alone."""
    import random

    from lmkit.tokenizers import load_tokenizer

    words, rng = "the red cat sat on a mat and dog ran far away home".split(), random.Random(0)
    (tmp_path / "c.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(300)))
    assert run("tokenizer", "train", "--kind", "bpe", "--vocab-size", 120, tmp_path / "c.txt",
               "--out", tmp_path / "tok").code == 0
    assert run("compose", "gpt-tiny", "--set", f"tokenizer={tmp_path / 'tok'}", "--out", tmp_path / "m").code == 0
    args = ("generate", tmp_path / "m", "--prompt", "the red", "--max-new-tokens", 5)
    tokens = json.loads(run(*args, "--json").out)[0]["tokens"]
    tokenizer = load_tokenizer(str(tmp_path / "tok"))
    expected = tokenizer.decode(tokenizer.encode("the red") + tokens)
    assert run(*args).out.strip() == expected and run(*args, "--stream").out.strip() == expected


def test_generate_reads_a_batch_of_prompts_from_input(run, tmp_path):
    # A trial: translate and embed read --input FILE, generate only --prompt or stdin.
    (tmp_path / "c.txt").write_text("the cat sat on the mat and the dog ran home\n" * 50)
    assert run("tokenizer", "train", "--kind", "bpe", "--vocab-size", 60, tmp_path / "c.txt",
               "--out", tmp_path / "tok").code == 0
    assert run("compose", "gpt-tiny", "--set", f"tokenizer={tmp_path / 'tok'}", "--out", tmp_path / "m").code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat\n\nthe dog sat\n")  # a blank line is skipped, as on stdin
    args = ("generate", tmp_path / "m", "--max-new-tokens", 3, "--json")
    from_file = run(*args, "--input", prompts)
    assert from_file.code == 0, from_file.err
    from_flags = run(*args, "--prompt", "the cat", "--prompt", "the dog sat")
    assert json.loads(from_file.out) == json.loads(from_flags.out) and len(json.loads(from_file.out)) == 2
    missing = run(*args, "--input", tmp_path / "missing.txt")
    assert missing.code == 1 and missing.err.strip().endswith("does not exist; give a file of prompts, one per line")
    (tmp_path / "blank.txt").write_text("\n  \n")
    assert "holds no prompts" in run(*args, "--input", tmp_path / "blank.txt").err
    assert run(*args, "--input", prompts, "--prompt", "x").code == 2


def test_stop_and_separator_texts_take_backslash_escapes():
    # A trial's `lmkit generate ... --stop '\n'` passed backslash and n, which no text ever held.
    import click

    from lmkit.commands.decoding_cli import unescape

    assert unescape("\\n", "--stop") == "\n" and unescape("\\n\\n", "--stop") == "\n\n"
    assert unescape("a\\tb", "--stop") == "a\tb" and unescape("\\r", "--stop") == "\r"
    assert unescape("\\\\n", "--stop") == "\\n"  # an escaped backslash stays one
    assert unescape("\\x65\\u00e9", "--stop") == "e\u00e9" and unescape("café", "--stop") == "café"
    assert unescape("\\ud83d\\ude00", "--stop") == unescape("\\U0001F600", "--stop") == "\U0001F600"  # a pair: one
    # Any other backslash was taken as it was typed, and a stop like that never matched; half a surrogate pair
    # reached the tokenizer and crashed it: now each is a usage error that says what is wrong.
    for typed, problem in (("\\145", "holds \\1, which is no escape"), ("\\q", "holds \\q, which is no escape"),
                           ("e\\", "ends with a lone backslash"), ("\\", "ends with a lone backslash"),
                           ("\\x6", "has \\x without the 2 hex digits"), ("\\u12g4", "has \\u without the 4"),
                           ("\\ud800", "half of a UTF-16 surrogate pair"), ("\\U00110000", "past the last Unicode")):
        with pytest.raises(click.BadParameter, match=re.escape(problem)):
            unescape(typed, "--stop")


def test_the_summary_names_the_objective_a_perplexity_is_of():
    # A trial read "val_loss 6.4844 (perplexity 327.09)" as exp(6.48): the loss was masked-LM plus NSP.
    import math

    from lmkit.commands.train import _perplexity_label

    bert = {"val_loss": 6.4844, "val_loss_masked-lm": 5.79, "val_loss_next-sentence": 0.69,
            "val_ppl": math.exp(min(5.79, 700.0))}
    assert _perplexity_label("val_ppl", bert["val_ppl"], bert) == "masked-lm perplexity"
    assert _perplexity_label("val_ppl", math.exp(3.0), {"val_loss": 3.0, "val_ppl": math.exp(3.0)}) == "perplexity"
    assert _perplexity_label("val_ppl_causal-lm", 20.0, {}) == "causal-lm perplexity"
