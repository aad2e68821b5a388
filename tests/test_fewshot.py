"""`lmkit eval --task`: zero- and few-shot multiple-choice and cloze accuracy by conditional log-likelihood."""
import json
import random
import shutil

import pytest
import torch

from lmkit import fewshot
from lmkit.errors import DataError
from lmkit.fewshot import CLOZE, MULTIPLE_CHOICE, Item
from lmkit.model import compose, load_model, save_weights

# A fixed association the trained models learn: each thing has one colour.
THINGS = ["sky", "grass", "snow", "blood", "coal", "sun", "sea", "leaf", "milk", "ink", "lime", "rose",
          "cloud", "frog", "tooth", "crow", "lemon", "cherry", "pine", "salt"]
COLOURS = ["blue", "green", "white", "red", "black", "yellow", "blue", "green", "white", "black", "green", "red",
           "white", "green", "white", "black", "yellow", "red", "green", "white"]
PALETTE = sorted(set(COLOURS))  # 6 choices: chance is 1/6


def write_jsonl(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def colour_task(path, cloze: bool = False) -> str:
    if cloze:
        return write_jsonl(path, [{"text": f"the {t} {c}"} for t, c in zip(THINGS, COLOURS)])
    return write_jsonl(path, [{"context": f"the {t}", "choices": PALETTE, "label": PALETTE.index(c), "id": i}
                              for i, (t, c) in enumerate(zip(THINGS, COLOURS))])


# -- models ---------------------------------------------------------------------------------------


def make_models(root, family: str) -> tuple[str, str]:
    """A one-layer, 32-wide GPT-2 (byte-level BPE) or GPT (word BPE) for the colour corpus: as
    initialised, and trained for a second or so with a plain loop (the trainer's checkpoints and
    validation would cost more)."""
    from lmkit.tokenizers import ByteLevelBPE, ByteLevelBPEOptions, WordBPE, WordBPEOptions

    rng = random.Random(0)
    corpus = root / "corpus.jsonl"
    # Documents of a few lines each, so newline-separated in-context examples look like training text.
    documents = ["\n".join(f"the {THINGS[i]} {COLOURS[i]}" for i in rng.choices(range(len(THINGS)), k=rng.randint(1, 4)))
                 for _ in range(1500)]
    write_jsonl(corpus, [{"text": d} for d in documents])
    if family == "gpt2":
        tokenizer = ByteLevelBPE.train([str(corpus)], ByteLevelBPEOptions(vocab_size=300), progress=False)
    else:
        tokenizer = WordBPE.train([str(corpus)], WordBPEOptions(vocab_size=120), progress=False)
    tokenizer.save(str(root / "tok"))
    preset = {"gpt2": "gpt2-tiny", "gpt": "gpt-tiny"}[family]
    untrained, out = str(root / "untrained"), str(root / "trained")
    compose(preset, [f"tokenizer={root / 'tok'}", f"decoder.vocab_size={tokenizer.vocab_size}",
                     "decoder.n_layers=1", "decoder.d_model=32", "decoder.max_positions=48"], untrained)
    shutil.copytree(untrained, out)
    model, tokenizer, _ = load_model(out)
    stream = torch.tensor([t for d in documents for t in [*tokenizer.encode(d), tokenizer.eos_id]])
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small train several times faster without thread hand-offs
    try:
        train_steps(model, optimizer, stream, generator)
    finally:
        torch.set_num_threads(threads)
    save_weights(model, f"{out}/model.safetensors")
    return untrained, out


def train_steps(model, optimizer, stream, generator, steps: int = 150):
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - 25, (32,), generator=generator)
        windows = torch.stack([stream[s:s + 25] for s in starts])  # (32, 25)
        logits = model.decoder(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module", params=["gpt2", "gpt"])
def models(request, tmp_path_factory):
    """(untrained, trained) model directories of one decoder family."""
    return make_models(tmp_path_factory.mktemp(request.param), request.param)


# -- reading task files ---------------------------------------------------------------------------


def test_items_of_each_kind_are_read_and_extra_fields_ignored(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"context": "the sky", "choices": ["blue", "red"], "label": 1, "id": "x"},
        "",  # blank lines are skipped
        {"context": "the sea is", "answer": "blue"},
        {"text": "she opened the door with her key  "},
        {"text": "two lines\nend"},
    ])
    mc, cloze, text, lines = fewshot.read_items(path)
    assert (lines.context, lines.gold) == ("two lines", "end")
    assert (mc.kind, mc.answers, mc.gold, mc.where) == (MULTIPLE_CHOICE, ("blue", "red"), "red", f"{path} line 1")
    assert (cloze.kind, cloze.context, cloze.gold, cloze.where) == (CLOZE, "the sea is", "blue", f"{path} line 3")
    assert (text.context, text.gold) == ("she opened the door with her", "key")


def test_the_delimiter_goes_between_context_and_answer_only_where_there_is_no_whitespace():
    assert fewshot.continuation("the sky is", "blue") == " blue"
    assert fewshot.continuation("the sky is", " blue") == " blue"  # lm-eval-harness style answers
    assert fewshot.continuation("Q: 2+2\nA:\n", "4") == "4"
    assert fewshot.continuation("", "blue") == "blue"
    assert fewshot.continuation("2+2=", "4", delimiter="") == "4"


# -- prompts --------------------------------------------------------------------------------------


def test_examples_are_k_other_items_repeatably_chosen_by_seed_and_item():
    for index in range(10):
        chosen = fewshot.choose_examples(index, 10, 4, seed=0, exclude_self=True)
        assert len(chosen) == len(set(chosen)) == 4 and index not in chosen
        assert chosen == fewshot.choose_examples(index, 10, 4, seed=0, exclude_self=True)
    every_draw = [fewshot.choose_examples(i, 10, 4, seed=s, exclude_self=True) for s in range(2) for i in range(10)]
    assert len({tuple(d) for d in every_draw}) > 15  # items and seeds get different examples
    assert fewshot.choose_examples(3, 4, 3, seed=0, exclude_self=True) != [3]  # all the others
    assert sorted(fewshot.choose_examples(3, 4, 3, seed=0, exclude_self=True)) == [0, 1, 2]
    assert 3 in fewshot.choose_examples(3, 4, 4, seed=0, exclude_self=False)  # another file: all may be used
    assert fewshot.choose_examples(3, 4, 0, seed=0, exclude_self=True) == []


def test_a_prompt_is_end_of_text_then_the_examples_then_the_context(tiny_gpt2):
    _, tokenizer, _ = load_model(tiny_gpt2)
    items = [Item(f"the cat {w}", ("sat", "ran"), i % 2, MULTIPLE_CHOICE, f"line {i}")
             for i, w in enumerate(["a", "b", "c", "d", "e"])]
    prompted = fewshot.build_prompts(items, tokenizer, 64, shots=2, seed=7, exclude_self=True)
    for index, p in enumerate(prompted):
        chosen = fewshot.choose_examples(index, 5, 2, seed=7, exclude_self=True)
        text = "\n\n".join([*(f"{items[i].context} {items[i].gold}" for i in chosen), items[index].context])
        assert p.prompt == [tokenizer.eos_id, *tokenizer.encode(text)]
        # the answers are tokenized on their own, with the delimiter, and appended after the prompt
        assert p.answers == [tokenizer.encode(" sat"), tokenizer.encode(" ran")]
        assert (p.shots, p.truncated) == (2, False)
    # the same item gets the same examples however many items are scored
    assert fewshot.build_prompts(items[:2], tokenizer, 64, examples=items, shots=2, seed=7,
                                 exclude_self=True)[1].prompt == prompted[1].prompt
    other_seeds = {tuple(fewshot.build_prompts(items, tokenizer, 64, shots=2, seed=seed, exclude_self=True)[1].prompt)
                   for seed in range(8, 12)}
    assert len(other_seeds | {tuple(prompted[1].prompt)}) > 1


def test_a_long_prompt_drops_the_oldest_examples_first_then_cuts_the_context_on_the_left(tiny_gpt2):
    _, tokenizer, _ = load_model(tiny_gpt2)
    pool = [Item(f"the dog ran far away {word} home", ("quickly",), 0, CLOZE, word)
            for word in ("cat", "mat", "sat", "on")]
    item = Item("the cat sat on a mat", ("home",), 0, CLOZE, "item")
    answer = tokenizer.encode(" home")
    chosen = fewshot.choose_examples(0, 4, 3, seed=0, exclude_self=False)
    newest = pool[chosen[-1]]
    one_example = [tokenizer.eos_id, *tokenizer.encode(fewshot.render_example(newest) + "\n\n" + item.context)]
    room = len(one_example) + len(answer) - 1  # exactly one example fits
    (p,) = fewshot.build_prompts([item], tokenizer, room, examples=pool, shots=3, seed=0)
    assert (p.shots, p.truncated) == (1, False)
    assert tokenizer.decode(p.prompt) == tokenizer.decode(one_example)  # the last example is kept
    assert len(p.prompt) + len(p.answers[0]) - 1 <= room

    context = tokenizer.encode(item.context)
    (p,) = fewshot.build_prompts([item], tokenizer, 4 + len(answer) - 1, examples=pool, shots=3, seed=0)
    assert (p.shots, p.truncated, p.prompt) == (0, True, context[-4:])


# -- scoring --------------------------------------------------------------------------------------


def independent_scores(decoder, prompt, answer):
    """(summed log-likelihood, greedy) of `answer` after `prompt`, from one unpadded forward pass."""
    sequence = torch.tensor([prompt + answer])
    with torch.no_grad():
        log_probs = torch.log_softmax(decoder(sequence[:, :-1])[0].float(), -1)[len(prompt) - 1:]
    targets = torch.tensor(answer)
    return log_probs.gather(1, targets[:, None]).sum().item(), bool((log_probs.argmax(-1) == targets).all())


@pytest.mark.parametrize("family", ["gpt2", "gpt"])
def test_each_answer_scores_its_log_likelihood_given_the_prompt_as_a_single_forward_pass_does(
        family, tiny_gpt2, tmp_path):
    if family == "gpt2":
        model_dir = tiny_gpt2
    else:
        model_dir = str(tmp_path / "gpt")
        (tmp_path / "c.txt").write_text("the cat sat on the mat and the dog ran far away home\n" * 50)
        from lmkit.tokenizers import WordBPE, WordBPEOptions
        WordBPE.train([str(tmp_path / "c.txt")], WordBPEOptions(vocab_size=80), progress=False).save(
            str(tmp_path / "tok"))
        compose("gpt-tiny", [f"tokenizer={tmp_path / 'tok'}", "decoder.n_layers=1"], model_dir)
        # spread the weights out so that answers differ and greedy matches happen by chance
        model, _, _ = load_model(model_dir)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.5 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
        save_weights(model, f"{model_dir}/model.safetensors")
    model, tokenizer, _ = load_model(model_dir)
    items = [
        Item("the cat sat on", ("the mat", "a dog that ran far away", "home"), 0, MULTIPLE_CHOICE, "1"),
        Item("", ("the", "cat"), 1, MULTIPLE_CHOICE, "2"),  # an empty context: the answer follows end-of-text
        Item("the dog ran far", ("away",), 0, CLOZE, "3"),
        Item("a", ("mat", "cat sat", "dog", "home quickly"), 2, MULTIPLE_CHOICE, "4"),
    ]
    prompted = fewshot.build_prompts(items, tokenizer, model.decoder.max_positions, shots=1, seed=0,
                                     exclude_self=True)
    # 3 rows per forward pass: items are split across batches and rows of different lengths padded
    scores = fewshot.score(model.decoder, prompted, batch_size=3)
    for p, answers in zip(prompted, scores):
        assert len(answers) == len(p.item.answers)
        for tokens, got in zip(p.answers, answers):
            expected, greedy = independent_scores(model.decoder, p.prompt, tokens)
            assert got.log_likelihood == pytest.approx(expected, abs=1e-4)
            assert got.greedy == greedy and got.tokens == len(tokens)
    # one batch of everything gives the same numbers
    together = fewshot.score(model.decoder, prompted, batch_size=100)
    assert [s.log_likelihood for a in together for s in a] == pytest.approx(
        [s.log_likelihood for a in scores for s in a], abs=1e-4)

    # greedy: the model's own two-token continuation counts, one with its last token changed does not
    prompt = prompted[0].prompt
    with torch.no_grad():
        first = model.decoder(torch.tensor([prompt]))[0, -1].argmax().item()
        second = model.decoder(torch.tensor([prompt + [first]]))[0, -1].argmax().item()
    answers = [[first, second], [first, (second + 1) % tokenizer.vocab_size]]
    own = fewshot.Prompted(Item("", ("x", "y"), 0, MULTIPLE_CHOICE, ""), prompt, answers, [1, 1], 0, False)
    assert [s.greedy for s in fewshot.score(model.decoder, [own])[0]] == [True, False]


def test_accuracies_by_sum_per_token_and_per_character():
    def prompted(label, answers):
        return fewshot.Prompted(Item("", tuple(answers), label, MULTIPLE_CHOICE, ""), [0],
                                [[0] * n for n, _ in answers.values()], [c for _, c in answers.values()], 0, False)

    # choice "a": 1 token, 10 characters; choice "b": 4 tokens, 2 characters
    item = prompted(1, {"a": (1, 10), "b": (4, 2)})
    scores = [[fewshot.AnswerScore(-2.0, 1, 10, False), fewshot.AnswerScore(-4.0, 4, 2, False)]]
    result = fewshot.summarize([item], scores)
    # sum: a wins (-2 > -4); per token: b wins (-1 > -2); per character: a wins (-0.2 > -2)
    assert (result["accuracy"], result["accuracy_per_token"], result["accuracy_per_char"]) == (0, 1, 0)
    assert result["chance"] == 0.5


# -- learning: a trained model is far above chance, an untrained one is not ------------------------


def test_a_trained_model_answers_zero_and_few_shot_far_above_chance(run, models, tmp_path):
    untrained, trained = models
    task, cloze = colour_task(tmp_path / "task.jsonl"), colour_task(tmp_path / "cloze.jsonl", cloze=True)
    results = {}
    for name, model_dir in (("untrained", untrained), ("trained", trained)):
        for shots in (0, 3):
            result = run("eval", model_dir, "--task", task, "--shots", shots, "--separator", "\\n", "--json")
            assert result.code == 0, result.err
            results[name, shots] = json.loads(result.out)
        result = run("eval", model_dir, "--task", cloze, "--json")
        assert result.code == 0, result.err
        results[name, "cloze"] = json.loads(result.out)
    chance = 1 / len(PALETTE)
    assert results["trained", 0]["chance"] == pytest.approx(chance)
    for shots in (0, 3):
        assert results["trained", shots]["shots_used"] == shots and results["trained", shots]["items"] == 20
        assert results["trained", shots]["accuracy"] >= 0.8
        assert results["trained", shots]["accuracy_per_char"] >= 0.8
        assert results["untrained", shots]["accuracy"] <= 0.45
    assert results["trained", "cloze"]["accuracy"] >= 0.8 and results["trained", "cloze"]["perplexity"] < 2
    assert results["untrained", "cloze"]["accuracy"] <= 0.2 and results["untrained", "cloze"]["perplexity"] > 20

    table = run("eval", trained, "--task", task, "--shots", 2, "--limit", 5)
    assert table.code == 0, table.err
    assert "multiple choice, 5 items" in table.out and "per char" in table.out and "2 from" in table.out


# -- bad input: one line each ---------------------------------------------------------------------


GOOD = {"context": "the cat", "choices": ["sat", "ran", "home"], "label": 0}


@pytest.mark.parametrize("lines, flags, message", [
    ([GOOD, {"context": "x", "choices": ["a", "b"]}], [], 'line 2 has no "label"'),
    ([GOOD, GOOD, {"choices": ["a", "b"], "label": 0}], [], 'line 3 has no "context"'),
    ([GOOD, {**GOOD, "label": 3}], [], 'line 2: "label" 3 is outside the 3 choices; labels are 0-based'),
    ([GOOD, {**GOOD, "label": "sat"}], [], '"label" must be an integer'),
    ([GOOD, {**GOOD, "choices": ["only"]}], [], '"choices" must be a list of at least 2 strings'),
    ([GOOD, {"context": "x"}], [], 'line 2 has none of "choices", "answer" or "text"'),
    ([GOOD, {"context": "x", "answer": "y", "choices": ["a", "b"], "label": 0}], [], "either multiple choice"),
    ([GOOD, '{"context": "x", "answer": }'], [], "line 2 is not valid JSON"),
    ([GOOD, "[1, 2]"], [], "line 2 is a JSON array, not an object"),
    ([GOOD, {"context": "x", "answer": "y"}], [], "line 2 is a cloze item but"),
    ([{"text": "single"}], [], '"text" needs at least two words'),
    ([GOOD, {**GOOD, "choices": ["a", "the cat " * 40]}], [],
     "line 2: choice 1 is 81 tokens but the model reads at most 64 positions"),
    ([GOOD, GOOD, GOOD], ["--shots", "3"], "--shots 3 needs 3 in-context examples but"),
    ([GOOD], ["--stride", "4"], "--stride applies to --data only"),
    ([GOOD], ["--context", "65"], "--context 65 is beyond the model's 64 positions"),
])
def test_bad_tasks_are_one_line_errors(run, tiny_gpt2, tmp_path, lines, flags, message):
    task = write_jsonl(tmp_path / "tasks.jsonl", lines)
    result = run("eval", tiny_gpt2, "--task", task, *flags)
    assert result.code == 1 and result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert message in result.err


def test_bad_files_and_modes_are_one_line_errors(run, tiny_gpt2, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD])
    cases = [
        (["--task", empty], "has no items"),
        (["--task", tmp_path / "missing.jsonl"], "no such task file"),
        (["--task", good, "--shots", "1", "--examples", tmp_path / "none.jsonl"], "no such examples file"),
        (["--task", good, "--shots", "2", "--examples", good], "has only 0 other items"),
        (["--task", good, "--data", good], "not both"),
        ([], "not neither"),
        (["--data", good, "--shots", "2"], "--shots applies to --task only"),
    ]
    for flags, message in cases:
        result = run("eval", tiny_gpt2, *flags)
        assert result.code == 1 and result.err.count("\n") == 1 and message in result.err, (flags, result.err)


def test_examples_may_come_from_another_file(run, tiny_gpt2, tmp_path):
    task = write_jsonl(tmp_path / "task.jsonl", [GOOD])
    examples = write_jsonl(tmp_path / "train.jsonl", [{"context": "a dog", "answer": "ran"}] * 2)
    result = run("eval", tiny_gpt2, "--task", task, "--shots", 2, "--examples", examples, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["shots_used"] == 2 and json.loads(result.out)["examples"] == examples


def test_reading_a_task_file_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    task = write_jsonl(tmp_path / "t.jsonl", [GOOD])
    code = (f"import sys, lmkit.fewshot as f; f.read_items({task!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_error_in_an_item_names_its_line(tmp_path):
    task = write_jsonl(tmp_path / "t.jsonl", [GOOD] * 6 + [{**GOOD, "label": 4}])
    with pytest.raises(DataError, match=r't.jsonl line 7: "label" 4 is outside the 3 choices'):
        fewshot.read_items(task)
