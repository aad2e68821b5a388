"""Knowledge neurons (Dai et al. 2022): attributions equal captum's integrated gradients, completeness,
the choice of shared neurons, edits, and `lmkit neurons` on good and bad input."""
import json
import random

import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.nn.blocks import MLP  # noqa: E402
from lmkit.plugins.neurons.attribution import (  # noqa: E402
    Query,
    attributions,
    probability_with,
    shared_neurons,
)
from lmkit.tokenizers import WordBPE, WordBPEOptions, WordPiece, WordPieceOptions  # noqa: E402

WORDS = "paris rome oslo france italy norway capital city of the is in".split()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random-weight bert-tiny, albert-tiny and gpt2-tiny with small word tokenizers."""
    root = tmp_path_factory.mktemp("neurons")
    rng = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(200)))
    WordPiece.train([str(corpus)], WordPieceOptions(vocab_size=80), progress=False).save(str(root / "wp"))
    WordBPE.train([str(corpus)], WordBPEOptions(vocab_size=80, min_frequency=1), progress=False).save(str(root / "bpe"))
    made = {}
    for preset, tokenizer, stack in (("bert-tiny", "wp", "encoder"), ("albert-tiny", "wp", "encoder"),
                                     ("gpt2-tiny", "bpe", "decoder")):
        made[preset] = str(root / preset)
        compose(preset, [f"tokenizer={root / tokenizer}", f"{stack}.vocab_size=80"], made[preset])
    return made


def query(model, tokenizer, masked: bool) -> Query:
    if masked:
        ids = tokenizer.encode("the capital of france is [MASK] .", add_special_tokens=True)
        position = ids.index(tokenizer.token_to_id("[MASK]"))
    else:
        ids = tokenizer.encode("the capital of france is")
        position = len(ids) - 1
    return Query(torch.tensor([ids]), position, tokenizer.encode(" paris")[0])


def captum_layer(model, q: Query, layer: int, steps: int):
    """captum's IntegratedGradients over one layer's activation at the answer position (its own hook)."""
    stack = model.encoder if model.encoder is not None else model.decoder
    act = [m.act for m in stack.modules() if isinstance(m, MLP)][layer]
    seen = {}
    handle = act.register_forward_hook(lambda m, i, out: seen.setdefault("out", out.detach()))
    with torch.no_grad():
        probability(model, q.input_ids, q)
    handle.remove()
    activation = seen["out"][0, q.position]

    def forward(x):  # x: (n, d_ff) activations at the position -> (n,) P(answer)
        def replace(m, i, out):
            out = out.clone()
            out[:, q.position] = x
            return out
        handle = act.register_forward_hook(replace)
        try:
            return probability(model, q.input_ids.expand(x.shape[0], -1), q)
        finally:
            handle.remove()

    ig = captum_attr.IntegratedGradients(forward)
    return ig.attribute(activation[None], baselines=torch.zeros_like(activation[None]), n_steps=steps,
                        method="riemann_left")[0]


def probability(model, input_ids, q):
    if model.encoder is not None:
        states = model.encoder(input_ids, torch.ones_like(input_ids)).last_hidden_state
        logits = model.objectives["masked-lm"].logits(model, states[:, q.position])
    else:
        logits = model.decoder(input_ids)[:, q.position]
    return logits.float().softmax(-1)[:, q.answer_id]


@pytest.mark.parametrize("preset", ["bert-tiny", "gpt2-tiny"])
def test_attributions_equal_captums_integrated_gradients(models, preset):
    model, tokenizer, _ = load_model(models[preset])
    q = query(model, tokenizer, masked=model.encoder is not None)
    ours = attributions(model, q, steps=20)  # (n_layers, d_ff)
    assert ours.shape == (2, 256)
    for layer in range(2):
        expected = captum_layer(model, q, layer, 20)
        torch.testing.assert_close(ours[layer], expected.float(), rtol=1e-4, atol=1e-9)


def test_the_attributions_sum_to_the_probability_change_as_steps_grow(models):
    """Completeness: Σ Attr → P(w) - P(0) for a layer, the left Riemann sum's error shrinking like 1/m."""
    model, tokenizer, _ = load_model(models["bert-tiny"])
    # A random tiny model's P(answer) is nearly linear in one layer's activations, which makes every
    # Riemann sum exact to float error; FFN outputs scaled up make it curved, so convergence shows.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("mlp.c_proj.weight"):
                parameter.mul_(30)
    q = query(model, tokenizer, masked=True)
    change = probability_with(model, q, [], 1.0) - probability_with(model, q, [(0, i) for i in range(256)], 0.0)
    errors = [abs(attributions(model, q, steps=m)[0].sum().item() - change) for m in (5, 50, 200)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < errors[0] / 10, errors
    assert errors[2] <= 0.1 * abs(change), (errors, change)


def test_a_shared_layer_counts_once_per_application(models):
    model, tokenizer, _ = load_model(models["albert-tiny"])  # one block, applied twice
    q = query(model, tokenizer, masked=True)
    ours = attributions(model, q, steps=4)
    assert ours.shape[0] == 2 and not torch.equal(ours[0], ours[1])


def test_shared_neurons_are_kept_by_the_share_of_prompts_and_the_share_moves_toward_two_to_five():
    a = torch.zeros(2, 10)
    prompts = []
    for kept in ([(0, 1), (1, 2), (1, 3)], [(0, 1), (1, 2)], [(0, 1), (1, 2), (1, 4)]):
        b = a.clone()
        b[0, 0] = 0.01  # below 0.2 of the maximum: never kept
        for layer, index in kept:
            b[layer, index] = 1.0
        prompts.append(b)
    assert shared_neurons(prompts, 0.2, 0.7) == ([(0, 1), (1, 2)], 0.7)
    # at share 0.3 a neuron kept by one prompt of three counts: 4 neurons, within 2-5, so the share stays
    assert shared_neurons(prompts, 0.2, 0.3) == ([(0, 1), (1, 2), (1, 3), (1, 4)], 0.3)
    lonely = [torch.zeros(2, 10) for _ in range(5)]
    for i, p in enumerate(lonely):
        p[0, i] = 1.0  # each prompt keeps its own neuron: none is shared, so the share goes down by 0.05 ...
    assert shared_neurons(lonely, 0.2, 0.7) == ([], 0.4)  # ... at most 6 times: 1 of 5 prompts is still below 0.4
    assert shared_neurons(lonely, 0.2, 0.3) == ([(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)], 0.2)


def test_suppressing_and_amplifying_edit_the_answer_probability(models):
    model, tokenizer, _ = load_model(models["gpt2-tiny"])
    q = query(model, tokenizer, masked=False)
    plain = probability_with(model, q, [], 1.0)
    assert plain == pytest.approx(probability(model, q.input_ids, q).item(), rel=1e-6)
    top = attributions(model, q, steps=8).flatten().topk(5).indices
    neurons = [(int(i) // 256, int(i) % 256) for i in top]
    assert probability_with(model, q, neurons, 0.0) != plain != probability_with(model, q, neurons, 2.0)


def test_the_command_prints_neurons_and_edits_and_json(run, models, tmp_path):
    prompts = ["--prompt", "the capital of france is [MASK] .", "--prompt", "[MASK] is the capital of france ."]
    result = run("neurons", models["bert-tiny"], *prompts, "--answer", "paris", "--steps", "4", "--suppress")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 3 and all(line.startswith("P(paris) ") and " suppressed " in line for line in lines[:2])
    assert lines[2].startswith("knowledge neurons (layer:index, kept by >= ")
    result = run("neurons", models["gpt2-tiny"], "--prompt", "the capital of france is", "--answer", "paris",
                 "--steps", "4", "--amplify", "--json", "--plot", tmp_path / "map.png")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["answer"] == "paris" and report["steps"] == 4
    row = report["prompts"][0]
    assert {"prompt", "probability", "amplified", "attributions"} <= set(row)
    assert len(row["attributions"]) == 2 and len(row["attributions"][0]) == 256
    assert all(0 <= layer < 2 and 0 <= index < 256 for layer, index in report["neurons"])
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("preset, prompt, answer, message", [
    ("bert-tiny", "the capital of france is paris", "paris", "has 0 blanks; put one [MASK] where the answer goes"),
    ("bert-tiny", "[MASK] capital of [MASK]", "paris", "has 2 blanks"),
    ("bert-tiny", "the capital is [MASK]", "parisrome", "tokens for this tokenizer"),
    ("gpt2-tiny", "the capital is [MASK]", "paris", "a causal LM reads the answer as the next token"),
    ("bert-tiny", "the capital is [MASK]", "xylophone", "is not in the tokenizer's vocabulary"),
])
def test_bad_prompts_and_answers_get_one_line_errors(run, models, preset, prompt, answer, message):
    result = run("neurons", models[preset], "--prompt", prompt, "--answer", answer)
    assert result.code == 1 and result.out == "" and result.err.count("\n") == 1, result.err
    assert message in result.err
