"""T5's span corruption: the preprocessor's rules checked over many samples (noise fraction, span lengths,
sentinel order, a lossless round trip), and `lmkit train` pre-training a t5-tiny with it."""
import json
import math
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402

from lmkit.plugins.t5.span_corruption import corrupt, noise_mask  # noqa: E402

SENTINELS = np.arange(1000, 900, -1)  # <extra_id_0> = 1000, counting down
EOS = 1


def composition_probability(n: int, k: int, j: int) -> float:
    """P(a given run has length j) when n items are cut into k non-empty runs, every cut equally likely."""
    return math.comb(n - j - 1, k - 2) / math.comb(n - 1, k - 1)


@pytest.mark.parametrize("length", [100, 37, 512])
def test_noise_fraction_spans_and_their_lengths(length):
    rng = np.random.default_rng(0)
    num_noise = min(max(round(length * 0.15), 1), length - 1)
    num_spans = max(round(num_noise / 3), 1)
    lengths = Counter()
    for _ in range(2000):
        mask = noise_mask(length, 0.15, 3.0, rng)
        assert mask.sum() == num_noise  # exactly round(L * density)
        assert not mask[0] and mask[-1]  # kept text first, noise last
        starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
        ends = np.flatnonzero(mask & ~np.concatenate([mask[1:], [False]]))
        assert len(starts) == num_spans
        lengths.update((ends - starts + 1).tolist())
    spans = sum(lengths.values())
    assert abs(sum(j * c for j, c in lengths.items()) / spans - num_noise / num_spans) < 1e-9
    # Each noise run's length follows the uniform composition's law (within 4 standard errors).
    for j in range(1, 6):
        p = composition_probability(num_noise, num_spans, j) if num_spans > 1 else float(j == num_noise)
        assert abs(lengths[j] / spans - p) <= 4 * math.sqrt(p * (1 - p) / spans) + 1e-12, (j, lengths[j] / spans, p)


def test_sentinels_in_order_and_the_text_recovered():
    rng = np.random.default_rng(1)
    for _ in range(300):
        tokens = rng.integers(3, 500, size=int(rng.integers(2, 120)))
        mask = noise_mask(len(tokens), 0.15, 3.0, rng)
        inputs, targets = corrupt(tokens, mask, SENTINELS, EOS)
        assert inputs[-1] == EOS and targets[-1] == EOS
        spans = int((mask & ~np.concatenate([[False], mask[:-1]])).sum())
        in_sentinels = inputs[np.isin(inputs, SENTINELS)]
        out_sentinels = targets[np.isin(targets, SENTINELS)]
        assert in_sentinels.tolist() == SENTINELS[:spans].tolist() == out_sentinels.tolist()
        assert targets[0] == SENTINELS[0] and targets[-2] not in SENTINELS  # no trailing sentinel
        # Every sentinel of the input is filled by what follows it in the targets: the text comes back.
        pieces = np.split(targets[:-1], np.flatnonzero(np.isin(targets[:-1], SENTINELS)))[1:]
        filled = {piece[0]: piece[1:] for piece in pieces}
        rebuilt = np.concatenate([filled[t] if t in filled else [t] for t in inputs[:-1]])
        assert rebuilt.tolist() == tokens.tolist()


def test_pretraining_a_t5_tiny_through_the_cli(tmp_path):
    from lmkit.synthetic_translation import TranslationTask, write_task

    files = write_task(str(tmp_path / "data"), n_train=300, n_valid=20, task=TranslationTask(0, nouns=8, adjectives=5,
                                                                                              verbs=5))
    tok, model = str(tmp_path / "tok"), str(tmp_path / "t5")
    specials = json.dumps(["<pad>", "</s>", "<unk>"])
    assert run_cli("tokenizer", "train", "--kind", "unigram", "--vocab-size", 200, "--set", f"special_tokens={specials}",
                   "--set", "sentinels=10", "--set", "template=t5", files["train.src"], "--out", tok).code == 0
    assert run_cli("compose", "t5-tiny", "--set", f"tokenizer={tok}", "--set", "objectives.0.type=span-corruption",
                   "--out", model).code == 0
    # 48-token windows: 7 noise tokens in 2 spans; too few sentinels for 400-token windows is a one-line error.
    common = ["--data", files["train.src"], "--batch-size", 8, "--warmup", 0, "--save-every", 0, "--log-every", 10]
    too_long = run_cli("train", model, *common, "--steps", 1, "--seq-len", 400)
    assert too_long.code != 0 and len(too_long.err.strip().splitlines()) == 1 and "sentinels" in too_long.err
    result = run_cli("train", model, *common, "--steps", 12, "--seq-len", 48, "--eval-every", 12, "--lr", "3e-3")
    assert result.code == 0, result.err
    metrics = [json.loads(line) for line in open(f"{model}/metrics.jsonl")]
    losses = [m["val_loss"] for m in metrics if "val_loss" in m]
    vocab = json.load(open(f"{model}/config.json"))["spec"]["decoder"]["vocab_size"]
    assert losses and np.isfinite(losses[-1]) and losses[-1] < math.log(vocab) - 1  # well below a uniform guess
