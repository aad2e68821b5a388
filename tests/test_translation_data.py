"""Parallel text (reading, checking, batching), the halving schedule, and exact resume on sentence pairs."""
import pytest

from lmkit.errors import DataError
from lmkit.parallel import make_batch, read_pairs
from lmkit.plugins.seq2seq.training import halving_rate
from lmkit.synthetic_translation import TranslationTask


def test_files_and_tsv_give_the_same_pairs(tmp_path):
    pairs = TranslationTask(0).pairs(5, seed=1)
    (tmp_path / "a.src").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    (tmp_path / "a.tgt").write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    (tmp_path / "a.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    assert read_pairs([tmp_path / "a.src", tmp_path / "a.tgt"]) == pairs
    assert read_pairs([tmp_path / "a.tsv"]) == pairs
    with pytest.raises(DataError, match="got 3 file"):
        read_pairs([tmp_path / "a.src", tmp_path / "a.tgt", tmp_path / "a.src"])
    with pytest.raises(DataError, match="not both"):
        read_pairs([tmp_path / "a.tsv", tmp_path / "a.src"])


def test_different_line_counts_name_the_line(tmp_path):
    (tmp_path / "a.src").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "a.tgt").write_text("x\ny\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_pairs([tmp_path / "a.src", tmp_path / "a.tgt"])
    assert "has 3 lines but" in str(error.value) and f"line 3 of {tmp_path / 'a.src'} has no pair" in str(error.value)


def test_batches_pad_sources_and_shift_targets():
    batch = make_batch([([5, 6, 7], [8, 9]), ([4], [3, 3, 3])], bos=1, eos=2, pad=0)
    assert batch["source_ids"].tolist() == [[5, 6, 7], [4, 0, 0]]
    assert batch["source_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["target_ids"].tolist() == [[1, 8, 9, 0], [1, 3, 3, 3]]
    assert batch["labels"].tolist() == [[8, 9, 2, -100], [3, 3, 3, 2]]


def test_halving_takes_the_papers_proportions_by_default():
    # 7.5 epochs of 30 steps: constant for 5 epochs (150 steps), then halved every half epoch (15 steps).
    rates = [halving_rate(step, lr=0.7, warmup=0, steps=225) for step in range(225)]
    assert rates[149] == 0.7 and rates[150] == 0.35 and rates[164] == 0.35 and rates[165] == 0.175
    assert rates[-1] == pytest.approx(0.7 / 32)
    assert halving_rate(0, lr=1.0, warmup=4, steps=100) == pytest.approx(0.2)


def test_resume_on_parallel_text_is_exact(translation_task, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    from test_seq2seq import compose_tiny, one_thread

    from lmkit.training import train

    task = translation_task
    (tmp_path / "small.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in TranslationTask(0).pairs(40, seed=3)),
                                        encoding="utf-8")
    arguments = dict(data=[tmp_path / "small.tsv"], batch_size=4, seq_len=64, lr=1e-2, warmup=0,
                     eval_every=0, save_every=0, progress=False, optimizer="sgd", schedule="halving",
                     schedule_options={"halve_from": 2, "halve_every": 2})  # explicit: the default proportions depend on --steps
    whole, halves = compose_tiny(task, "whole", "seq2seq-tiny"), compose_tiny(task, "halves", "seq2seq-tiny")
    with one_thread():
        train(whole, steps=6, **arguments)
        train(halves, steps=3, **arguments)
        train(halves, steps=6, resume=True, progress=False)
    a, b = load_file(f"{whole}/model.safetensors"), load_file(f"{halves}/model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
