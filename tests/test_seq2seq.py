"""Seq2Seq and attentional NMT end to end: parallel text, training, BLEU, translate/eval/generate, bad input."""
import json
import os
import time

import pytest

torch = pytest.importorskip("torch")

from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions  # noqa: E402
from lmkit.model import compose  # noqa: E402
from lmkit.opening import open_model  # noqa: E402
from lmkit.parallel import read_pairs  # noqa: E402
from lmkit.seq2seq import evaluate_bleu  # noqa: E402
from lmkit.synthetic_translation import TranslationTask, write_task  # noqa: E402
from lmkit.tokenizers import WordBPEOptions, train_tokenizer  # noqa: E402
from lmkit.training import train  # noqa: E402

# A small lexicon, so the tiny model learns the task in seconds; 1-2 clauses per sentence.
TASK = TranslationTask(0, nouns=8, adjectives=5, verbs=5)
TRAIN_STEPS = 200
MIN_BLEU = 60.0  # measured 88.8 greedy / 88.9 beam after 200 steps


class one_thread:
    """Tiny recurrent models run step by step: on a shared 2-core machine one thread is several times faster."""

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def make_task(tmp_path_factory) -> dict:
    """The synthetic task's files and a word-level tokenizer (conftest's `translation_task`)."""
    root = tmp_path_factory.mktemp("translation")
    files = write_task(str(root / "data"), n_train=1500, n_valid=100, task=TASK)
    tokenizer = train_tokenizer("bpe", [files["train.src"], files["train.tgt"]],
                                WordBPEOptions(vocab_size=200, min_frequency=1,
                                               special_tokens=("<pad>", "<unk>", "<s>", "</s>")), progress=False)
    tokenizer.save(str(root / "tok"))
    return {"root": root, "tok": str(root / "tok"), **files}


def compose_tiny(task, name: str, preset: str = "nmt-tiny", *overrides: str) -> str:
    out = str(task["root"] / name)
    compose(preset, [f"tokenizer={task['tok']}", "encoder.vocab_size=200", "decoder.vocab_size=200", *overrides],
            out, force=True)
    return out


@pytest.fixture(scope="module")
def task(translation_task):
    return translation_task


@pytest.fixture(scope="module")
def trained(trained_nmt):
    return trained_nmt


def train_nmt(task) -> tuple[str, dict]:
    """nmt-tiny with one layer per side, trained on the synthetic task (15-25 s on 2 busy cores)."""
    model_dir = compose_tiny(task, "nmt", "nmt-tiny", "encoder.n_layers=1", "decoder.n_layers=1")
    started = time.perf_counter()
    with one_thread():
        record = train(model_dir, data=[task["train.src"], task["train.tgt"]],
                       val_data=[task["valid.src"], task["valid.tgt"]], steps=TRAIN_STEPS, batch_size=32,
                       seq_len=64, lr=2e-2, warmup=10, weight_decay=0.0, grad_clip=5.0, eval_every=0,
                       save_every=0, progress=False)
    record["seconds"] = time.perf_counter() - started
    return model_dir, record


def test_the_attentional_model_learns_the_synthetic_task_and_beam_is_as_good_as_greedy(trained, task):
    model_dir, record = trained
    assert record["val_loss"] < 0.5
    pairs = read_pairs([task["valid.src"], task["valid.tgt"]])
    translator = open_model(model_dir, device="cpu")
    with one_thread():
        greedy, _ = evaluate_bleu(translator, Greedy(GreedyOptions(max_new_tokens=60)), pairs)
        beam, _ = evaluate_bleu(translator, BeamSearch(BeamSearchOptions(max_new_tokens=60, num_beams=4)), pairs)
    print(f"BLEU greedy {greedy.score:.2f}, beam 4 {beam.score:.2f}, trained in {record['seconds']:.1f} s")
    assert greedy.score >= MIN_BLEU
    # Beam search maximises the model's likelihood, not BLEU: it may trail greedy by a hair on a model this
    # good (87.11 against 87.13 once); test_seq2seq_decoding checks that it finds the exhaustive optimum.
    assert beam.score >= greedy.score - 1.0
    assert greedy.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_translate_eval_and_generate_commands(run, trained, task):
    with one_thread():
        check_commands(run, trained, task)


def check_commands(run, trained, task):
    model_dir, _ = trained
    source, target = TASK.pairs(1, seed=99, clauses=(1, 1))[0]
    done = run("translate", model_dir, "--text", source, "--strategy", "beam", "--num-beams", "3")
    assert done.code == 0, done.err
    assert done.out.strip() == target

    done = run("translate", model_dir, "--text", source, "--text", "the cat sees the dog", "--json",
               "--strategy", "greedy")
    records = json.loads(done.out)
    assert [r["source"] for r in records] == [source, "the cat sees the dog"]
    assert records[0]["text"] == target and records[0]["finish_reason"] == "eos"

    done = run("generate", model_dir, "--prompt", source, "--strategy", "greedy")
    assert done.code == 0, done.err
    assert done.out.strip() == target

    done = run("eval", model_dir, "--data", task["valid.src"], "--data", task["valid.tgt"], "--strategy", "beam",
               "--num-beams", "2", "--json")
    assert done.code == 0, done.err
    score = json.loads(done.out)
    assert score["bleu"] >= MIN_BLEU and score["sentences"] == 100
    done = run("eval", model_dir, "--data", task["valid.src"], "--data", task["valid.tgt"])
    assert "BLEU" in done.out and "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in done.out


def test_train_command_on_tsv_with_sgd_and_halving(run, task, tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in TASK.pairs(64, seed=5)), encoding="utf-8")
    model_dir = compose_tiny(task, "sgd", "seq2seq-tiny")
    with one_thread():
        done = run("train", model_dir, "--data", tsv, "--steps", 6, "--batch-size", 8, "--seq-len", 40, "--lr", 0.7,
                   "--warmup", 0, "--optimizer", "sgd", "--schedule", "halving", "--schedule-set", "halve_from=2", "--schedule-set", "halve_every=2",
                   "--grad-clip", 5, "--log-every", 1, "--eval-every", 0)
    assert done.code == 0, done.err
    with open(os.path.join(model_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        rates = [json.loads(line)["lr"] for line in handle]
    assert rates == pytest.approx([0.7, 0.7, 0.35, 0.35, 0.175, 0.175])
    with open(os.path.join(model_dir, "trainer_state.json"), encoding="utf-8") as handle:
        state = json.load(handle)
    assert state["arguments"]["optimizer"] == "sgd" and state["data"]["train_pairs"] > 0


@pytest.fixture(scope="module")
def untrained(task):
    return compose_tiny(task, "untrained", "nmt-tiny", "encoder.max_positions=6")


def test_bad_input_is_one_line_errors(run, task, untrained, tmp_path):
    def error(*args):
        done = run(*args)
        assert done.code != 0
        lines = done.err.strip().splitlines()
        assert len(lines) == 1, done.err
        return lines[0]

    src, tgt = tmp_path / "a.src", tmp_path / "a.tgt"
    src.write_text("the cat sees the dog\nthe dog sees the cat\n", encoding="utf-8")
    tgt.write_text("lo x lo y t\n", encoding="utf-8")
    assert "line 2" in error("train", untrained, "--data", src, "--data", tgt, "--steps", 1, "--batch-size", 2,
                             "--seq-len", 20)
    tgt.write_text("lo x lo y t\n\n", encoding="utf-8")
    message = error("train", untrained, "--data", src, "--data", tgt, "--steps", 1, "--batch-size", 2,
                    "--seq-len", 20)
    assert "line 2 is empty" in message
    tgt.write_text("lo x lo y t\nlo y lo x t\n", encoding="utf-8")
    message = error("train", untrained, "--data", src, "--data", tgt, "--steps", 1, "--batch-size", 2,
                    "--seq-len", 3)
    assert "pair 1" in message and "more than the maximum of 3" in message
    message = error("translate", untrained, "--text", "the big cat sees the small dog")
    assert "more than the model's maximum of 6" in message and "or pass --truncate to keep its first 6" in message
    # --truncate keeps a long source's first tokens, in translate and generate alike (generate used to accept the
    # flag and refuse the source anyway: a user's trial), with a warning.
    for command in ("translate", "generate"):
        text = ["--text" if command == "translate" else "--prompt", "the big cat sees the small dog"]
        cut = run(command, untrained, *text, "--truncate", "--max-new-tokens", 3)
        assert cut.code == 0 and "warning: kept the first 6 of the 7 tokens of the source" in cut.err, cut.err
        short = run(command, untrained, *(text[:1] + ["the big cat sees the small"]), "--max-new-tokens", 3)
        assert cut.out == short.out  # what the first 6 tokens translate to
    # lmkit eval has no --truncate: its refusal names what to do there (a trial was told to pass --truncate)
    long_pairs = tmp_path / "long.tsv"
    long_pairs.write_text("the big cat sees the small dog\tlo x\n", encoding="utf-8")
    message = error("eval", untrained, "--data", long_pairs)
    assert "more than the model's maximum of 6" in message and "--truncate" not in message
    message = error("translate", untrained, "--text", "the cat", "--strategy", "beam", "--num-beams", 0)
    assert "num_beams must be at least 1" in message
    message = error("compose", "nmt-tiny", "--set", "decoder.d_encoder=32", "--out", tmp_path / "bad")
    assert "set --set decoder.d_encoder=64" in message
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("the cat\tlo x\nno tab here\n", encoding="utf-8")
    assert "line 2 has no tab" in error("train", untrained, "--data", tsv, "--steps", 1, "--batch-size", 1,
                                        "--seq-len", 9)


def test_each_side_can_have_its_own_tokenizer(run, task, tmp_path):
    """--set tokenizer.target=DIR: the decoder reads and writes the target tokenizer's ids, everywhere."""
    options = dict(min_frequency=1, special_tokens=("<pad>", "<unk>", "<s>", "</s>"))
    sides = {}
    for side, size in (("src", 120), ("tgt", 160)):
        tokenizer = train_tokenizer("bpe", [task[f"train.{side}"]], WordBPEOptions(vocab_size=size, **options),
                                    progress=False)
        tokenizer.save(str(tmp_path / side))
        sides[side] = tokenizer
    model_dir = str(tmp_path / "m")
    source_size, target_size = sides["src"].vocab_size, sides["tgt"].vocab_size

    def compose_with(decoder_size):
        return run("compose", "nmt-tiny", "--set", f"tokenizer={tmp_path / 'src'}", "--set",
                   f"tokenizer.target={tmp_path / 'tgt'}", "--set", f"encoder.vocab_size={source_size}", "--set",
                   f"decoder.vocab_size={decoder_size}", "--out", model_dir)

    done = compose_with(target_size - 1)
    assert done.code == 1 and f"decoder.vocab_size={target_size - 1} is smaller than the target tokenizer's" in done.err
    done = compose_with(target_size)
    assert done.code == 0, done.err
    assert os.path.isfile(os.path.join(model_dir, "target_tokenizer", "tokenizer.json"))
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["spec"]["tokenizer"]["target"]["vocab_size"] == target_size
    with one_thread():
        done = run("train", model_dir, "--data", task["train.src"], "--data", task["train.tgt"], "--steps", 3,
                   "--batch-size", 8, "--seq-len", 64, "--eval-every", 0)
        assert done.code == 0, done.err
        source = TASK.pairs(1, seed=3)[0][0]
        want = run("translate", model_dir, "--text", source, "--json", "--max-new-tokens", 8)
        export = str(tmp_path / "exp")
        assert run("export", model_dir, "--out", export).code == 0
        got = run("translate", export, "--text", source, "--json", "--max-new-tokens", 8)
    want, got = json.loads(want.out)[0], json.loads(got.out)[0]
    assert want["tokens"] == got["tokens"] and want["text"] == got["text"]
    assert want["text"] == sides["tgt"].decode(want["tokens"], skip_special_tokens=True).strip()
