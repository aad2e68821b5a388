"""NoisyTune (Wu et al. 2022): the noise's law per tensor, what is left alone, seeding, and the CLI option."""
import json
import random

import pytest

torch = pytest.importorskip("torch")

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.tasks.finetune import TaskOptions, finetune  # noqa: E402
from lmkit.tasks.noisy_tune import perturb  # noqa: E402
from lmkit.tokenizers import WordBPE, WordBPEOptions  # noqa: E402

WORDS = "sun joy gift smile rain pain loss frown the a of and".split()


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(200)))
    WordBPE.train([str(corpus)], WordBPEOptions(vocab_size=60, min_frequency=1), progress=False).save(str(root / "tok"))
    compose("gpt-tiny", [f"tokenizer={root / 'tok'}", "decoder.vocab_size=60", "decoder.max_positions=32"],
            str(root / "gpt"))
    return str(root / "gpt")


def test_each_tensor_moves_by_uniform_noise_scaled_by_its_own_spread(pretrained):
    model, _, _ = load_model(pretrained)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    perturbed = perturb(model, 0.15, seed=3)
    assert perturbed, "a random-weight GPT has tensors with spread"
    for name, parameter in model.named_parameters():
        delta, old = parameter.detach() - before[name], before[name]
        if name not in perturbed:  # one element, or all equal (a layer norm's gain of ones, a bias of zeros)
            assert torch.equal(delta, torch.zeros_like(delta)) and (old.numel() < 2 or old.std() == 0), name
            continue
        ratio = delta / old.std()
        assert ratio.abs().max() <= 0.075 + 1e-6, name  # U(-λ/2, λ/2) times std(W)
        if ratio.numel() >= 2000:  # the law of the noise: mean 0, variance λ²/12
            assert abs(ratio.mean().item()) < 0.004, name
            assert ratio.var().item() == pytest.approx(0.15 ** 2 / 12, rel=0.1), name
            assert (ratio > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)


def test_the_same_seed_gives_the_same_noise_and_another_seed_other_noise(pretrained):
    first, second, third = (load_model(pretrained)[0] for _ in range(3))
    perturb(first, 0.15, seed=7)
    perturb(second, 0.15, seed=7)
    perturb(third, 0.15, seed=8)
    pairs = [(a, b, c) for a, b, c in zip(first.parameters(), second.parameters(), third.parameters())]
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_a_shared_tensor_is_perturbed_once_and_the_task_head_not_at_all():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(50, 16)
            self.output = torch.nn.Linear(16, 50, bias=False)
            self.output.weight = self.embedding.weight
            self.objectives = torch.nn.ModuleDict({"head": torch.nn.Linear(16, 2)})

    model = Tied()
    before = model.embedding.weight.detach().clone()
    head = model.objectives["head"].weight.detach().clone()
    assert perturb(model, 0.5, seed=0) == ["embedding.weight"]
    assert model.output.weight is model.embedding.weight
    assert ((model.embedding.weight - before).abs() / before.std()).max() <= 0.25 + 1e-6  # once, not twice
    assert torch.equal(model.objectives["head"].weight, head)


def test_lambda_zero_changes_nothing(pretrained):
    model, _, _ = load_model(pretrained)
    before = [p.detach().clone() for p in model.parameters()]
    assert perturb(model, 0.0, seed=0) == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def write_task(path, rng, n):
    rows = [{"text": " ".join(rng.choice(WORDS[:4] if i % 2 else WORDS[4:8]) for _ in range(4)), "label": i % 2}
            for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_finetune_starts_from_the_shaken_weights_and_resumes_bit_for_bit(run, pretrained, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import lmkit.training.trainer as trainer_module

    rng = random.Random(1)
    train_file, dev_file = write_task(tmp_path / "train.jsonl", rng, 48), write_task(tmp_path / "dev.jsonl", rng, 16)
    args = ["--task", "classification", "--train", train_file, "--dev", dev_file, "--epochs", "2", "--batch-size",
            "16", "--lr", "2e-3", "--noisy-tune", "0.15"]
    assert run("finetune", pretrained, *args, "--out", tmp_path / "straight").code == 0
    assert json.loads((tmp_path / "straight" / "task.json").read_text())["noisy_tune"] == 0.15

    class Interrupted(Exception):
        pass

    save = trainer_module.save_checkpoint

    def save_then_stop(directory, *rest, **kwargs):
        save(directory, *rest, **kwargs)
        raise Interrupted  # a crash right after the first epoch's checkpoint

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_stop)
    with pytest.raises(Interrupted):
        finetune(pretrained, str(tmp_path / "resumed"), train_file, dev_file,
                 TaskOptions(kind="classification", noisy_tune=0.15), epochs=2, batch_size=16, lr=2e-3,
                 progress=False)
    monkeypatch.undo()
    assert run("finetune", "--resume", "--out", tmp_path / "resumed").code == 0
    straight, resumed = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("straight", "resumed"))
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)

    quiet = run("finetune", pretrained, *args[:-2], "--out", tmp_path / "quiet")
    assert quiet.code == 0, quiet.err
    quiet = load_file(str(tmp_path / "quiet" / "model.safetensors"))  # the same run, unshaken
    assert sum(not torch.equal(straight[name], quiet[name]) for name in quiet if not name.startswith("objectives.")) \
        > len(quiet) // 2

@pytest.mark.parametrize("level", ["1.0", "-0.1", "2"])
def test_a_noise_level_outside_zero_to_one_is_refused_before_anything_is_written(run, pretrained, tmp_path, level):
    train_file = write_task(tmp_path / "train.jsonl", random.Random(2), 8)
    result = run("finetune", pretrained, "--task", "classification", "--train", train_file, "--out",
                 tmp_path / "tuned", "--noisy-tune", level)
    assert result.code == 1 and result.err.count("\n") == 1 and "--noisy-tune must lie in [0, 1)" in result.err
    assert not (tmp_path / "tuned").exists() and list(tmp_path.iterdir()) == [tmp_path / "train.jsonl"]
