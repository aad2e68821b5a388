"""CoVe: the trained NMT encoder as frozen features, from `lmkit embed` and as the `cove` encoder."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.numpy import load_file  # noqa: E402
from test_seq2seq import TASK, one_thread  # noqa: E402

from lmkit.model import compose, load_model  # noqa: E402
from lmkit.synthetic_translation import ADJECTIVES  # noqa: E402

# nmt-tiny with one layer: 32-d embeddings, a BiLSTM of 32 per direction.
EMBED, STATES = 32, 64


def test_embed_gives_embeddings_and_encoder_states(run, trained_nmt, tmp_path):
    model_dir, _ = trained_nmt
    out = tmp_path / "cove.safetensors"
    done = run("embed", model_dir, "--text", "the cat sees the dog", "--text", "the dogs like the red bird",
               "--tokens", "--out", out)
    assert done.code == 0, done.err
    tensors = load_file(str(out))
    assert tensors["token_states"].shape[-1] == EMBED + STATES
    assert tensors["attention_mask"].sum(1).tolist() == [5, 6]
    model, tokenizer, _ = load_model(model_dir)
    ids = torch.tensor([tokenizer.encode("the cat sees the dog")])
    with torch.no_grad():
        embeddings = model.encoder.embedding(ids)[0].numpy()
    np.testing.assert_allclose(tensors["token_states"][0, :5, :EMBED], embeddings, atol=1e-6)

    done = run("embed", model_dir, "--text", "the cat sees the dog", "--pool", "mean", "--out", tmp_path / "x.npz")
    assert done.code == 0, done.err
    assert np.load(tmp_path / "x.npz")["pooled"].shape == (1, EMBED + STATES)


def test_embed_with_glove_vectors(run, trained_nmt, tmp_path):
    model_dir, _ = trained_nmt
    glove = tmp_path / "glove.txt"
    glove.write_text("the 1 2 3 4 5\ncat 0.5 0.5 0.5 0.5 0.5\nunused 9 9 9 9 9\n", encoding="utf-8")
    done = run("embed", model_dir, "--text", "the cat sees the dog", "--tokens", "--pool", "none", "--vectors", glove)
    assert done.code == 0, done.err
    states = np.array(__import__("json").loads(done.out)[0]["token_states"])
    assert states.shape == (5, 5 + STATES)
    assert states[0, :5].tolist() == [1, 2, 3, 4, 5] and states[1, :5].tolist() == [0.5] * 5
    assert not states[2, :5].any()  # "sees" is not in the file: zeros, as CoVe does for unknown words

    glove.write_text("the 1 2 3 4 5\ncat 0.5 0.5 0.5\n", encoding="utf-8")
    done = run("embed", model_dir, "--text", "the cat", "--vectors", glove)
    assert done.code == 1
    assert done.err.strip() == (f"error: {glove} line 2 has 3 numbers but line 1 has 5; every vector must have "
                                "the same dimension")


def test_a_classifier_trains_on_frozen_cove_features(trained_nmt, tmp_path):
    """The `cove` encoder in another composition; a small classifier learns on its features, which stay put."""
    model_dir, _ = trained_nmt
    spec = tmp_path / "cove.toml"
    spec.write_text(f'[tokenizer]\npath = "{model_dir}"\n[encoder]\ntype = "cove"\nmodel = "{model_dir}"\n',
                    encoding="utf-8")
    compose(str(spec), [], str(tmp_path / "cove"))
    model, tokenizer, _ = load_model(str(tmp_path / "cove"))
    cove = model.encoder
    assert cove.d_model == EMBED + STATES
    assert not any(p.requires_grad for p in cove.parameters())
    frozen = {name: p.clone() for name, p in cove.state_dict().items()}

    # Is the subject of the sentence plural? The verb agrees with it, so CoVe's states carry it.
    pairs = TASK.pairs(400, seed=7, clauses=(1, 1))
    def subject(words):  # "the [adjective] noun verb ..."
        return words[2] if words[1] in ADJECTIVES else words[1]

    labels = torch.tensor([int(subject(source.split()).endswith("s")) for source, _ in pairs])
    sources = [tokenizer.encode(source) for source, _ in pairs]
    width = max(map(len, sources))
    ids = torch.zeros(len(sources), width, dtype=torch.long)
    mask = torch.zeros(len(sources), width, dtype=torch.bool)
    for i, row in enumerate(sources):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), True

    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Linear(cove.d_model, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    model.train()
    with one_thread():
        features = cove(ids, mask).last_hidden_state  # (N, T, 96), no gradient: frozen
        pooled = features.max(dim=1).values
        train, test = slice(0, 300), slice(300, 400)
        for _ in range(150):
            loss = torch.nn.functional.cross_entropy(classifier(pooled[train]), labels[train])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy = (classifier(pooled[test]).argmax(1) == labels[test]).float().mean().item()
    assert accuracy >= 0.9
    assert all(torch.equal(frozen[name], p) for name, p in cove.state_dict().items())
