"""Export runtimes: looked up by architecture in the registry, and the encoder-decoder one driven by the
manifest alone, on a toy transformer-style encoder-decoder whose state is laid out unlike the LSTM's;
lmkit.open_model on a model directory and on its export giving the same generations and vectors."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_bert_export import bert, fp32_export  # noqa: E402, F401 - the tiny BERT and its export, shared
from torch import nn  # noqa: E402

from lmkit.contract import EncoderOutput  # noqa: E402
from lmkit.decoding.beam import BeamSearch  # noqa: E402
from lmkit.decoding.greedy import Greedy  # noqa: E402
from lmkit.decoding.options import BeamSearchOptions, GreedyOptions, SamplingOptions  # noqa: E402
from lmkit.decoding.sampling import Sampling  # noqa: E402
from lmkit.errors import ArtifactError  # noqa: E402
from lmkit.exports.graphs import (  # noqa: E402
    BATCH,
    ENCODER_DECODER,
    PAST,
    SOURCE,
    EncoderDecoderLayout,
    Feed,
    Graph,
    TensorInfo,
)

V, D, START, EOS, PAD = 19, 8, 1, 2, 0


# -- the registry --------------------------------------------------------------------------------


def test_the_three_architectures_are_registered_runtimes():
    from lmkit.registry import get_host

    runtimes = get_host().components["export-runtime"]
    assert {"decoder-only", "encoder-only", "encoder-decoder"} <= set(runtimes)
    assert all(runtimes[name].plugin == "core" for name in ("decoder-only", "encoder-only", "encoder-decoder"))


def test_an_export_of_an_unknown_architecture_is_a_one_line_error_naming_what_is_installed(tiny_gpt2_export,
                                                                                          tmp_path):
    import lmkit.exports

    copy = str(tmp_path / "copy")
    shutil.copytree(tiny_gpt2_export, copy)
    path = os.path.join(copy, "lmkit-onnx.json")
    manifest = json.loads(open(path).read())
    manifest["architecture"] = "prefix-lm"  # the manifest itself is not hashed: only the files it lists
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(ArtifactError) as caught:
        lmkit.exports.load(copy)
    message = str(caught.value)
    assert "\n" not in message and "'prefix-lm' export, which no installed export runtime serves" in message
    installed = message.split("(installed: ")[1].split(")")[0].split(", ")
    assert {"decoder-only", "encoder-decoder", "encoder-only"} <= set(installed) and installed == sorted(installed)
    assert "register_export_runtimes" in message


# -- a toy encoder-decoder: padded encoder, growing self-attention past, cross keys/values once ----


class ToyEncoder(nn.Module):
    """Token states plus their masked mean (so padding changes the result unless the mask is read)."""

    def __init__(self):
        super().__init__()
        self.embedding, self.proj = nn.Embedding(V, D), nn.Linear(D, D)

    def forward(self, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        x = torch.tanh(self.proj(self.embedding(input_ids)))
        weights = mask.to(x.dtype)[..., None]
        mean = (x * weights).sum(1) / weights.sum(1).clamp(min=1)
        return EncoderOutput(x + mean[:, None], mask, pooler_output=mean)


class ToyDecoder(nn.Module):
    """Self-attention over a key/value past (batch, past, D) that grows, cross-attention over keys/values
    computed once from the encoder, and a two-slot memory (2, batch, D) started from the encoder."""

    ROWS = {"keys": 0, "values": 0, "memory": 1, "cross_keys": 0, "cross_values": 0, "mask": 0}

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, D)
        self.q, self.k, self.v, self.ck, self.cv = (nn.Linear(D, D) for _ in range(5))
        self.out = nn.Linear(2 * D, V)

    def start(self, encoded):
        states = encoded.last_hidden_state
        B = states.shape[0]
        return {"keys": states.new_zeros(B, 0, D), "values": states.new_zeros(B, 0, D),
                "memory": torch.stack([encoded.pooler_output, -encoded.pooler_output]),
                "cross_keys": self.ck(states), "cross_values": self.cv(states), "mask": encoded.attention_mask}

    def forward(self, input_ids, state):
        state, logits = dict(state), []
        for t in range(input_ids.shape[1]):
            x = self.embedding(input_ids[:, t]) + state["memory"].sum(0)  # (B, D)
            state["keys"] = torch.cat([state["keys"], self.k(x)[:, None]], 1)
            state["values"] = torch.cat([state["values"], self.v(x)[:, None]], 1)
            q = self.q(x)[:, None]  # (B, 1, D)
            own = torch.softmax(q @ state["keys"].transpose(1, 2), -1) @ state["values"]
            scores = (q @ state["cross_keys"].transpose(1, 2)).masked_fill(~state["mask"].bool()[:, None], -1e9)
            cross = torch.softmax(scores, -1) @ state["cross_values"]
            h = torch.tanh(own + cross)[:, 0]
            state["memory"] = torch.tanh(state["memory"] + h[None])
            logits.append(self.out(torch.cat([h, x], -1)))
        return torch.stack(logits, 1), state

    def reorder(self, state, rows):
        return {name: value.index_select(self.ROWS[name], rows) for name, value in state.items()}


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.encoder, self.decoder = ToyEncoder().eval(), ToyDecoder().eval()


class EncoderGraph(nn.Module):
    def __init__(self, toy):
        super().__init__()
        self.toy = toy

    def forward(self, input_ids, attention_mask):
        state = self.toy.decoder.start(self.toy.encoder(input_ids, attention_mask))
        return state["memory"], state["cross_keys"], state["cross_values"]


class DecoderGraph(nn.Module):
    def __init__(self, toy):
        super().__init__()
        self.toy = toy

    def forward(self, input_ids, keys, values, memory, cross_keys, cross_values, mask):
        state = {"keys": keys, "values": values, "memory": memory, "cross_keys": cross_keys,
                 "cross_values": cross_values, "mask": mask}
        logits, state = self.toy.decoder(input_ids, state)
        return logits, state["keys"], state["values"], state["memory"]  # logits (B, 1, V)


def write_toy_export(toy, directory: str, batching: str) -> None:
    """The toy's two graphs and a manifest whose encoder_decoder table wires them (no torch at run time)."""
    from lmkit.exports.convert import export_graph
    from lmkit.exports.manifest import FORMAT, FORMAT_VERSION, MANIFEST, describe_files

    f32 = "float32"
    encoder = Graph("encoder", EncoderGraph(toy).eval(),
                    [TensorInfo("input_ids", "int64", (BATCH, SOURCE)), TensorInfo("attention_mask", "int64", (BATCH, SOURCE))],
                    [TensorInfo("memory_init", f32, (2, BATCH, D)), TensorInfo("cross_keys", f32, (BATCH, SOURCE, D)),
                     TensorInfo("cross_values", f32, (BATCH, SOURCE, D))],
                    example=(torch.randint(3, V, (2, 5)), torch.ones(2, 5, dtype=torch.long)), validation=[],
                    scores=None, exporter="legacy")
    decoder = Graph("decoder", DecoderGraph(toy).eval(),
                    [TensorInfo("input_ids", "int64", (BATCH, 1)), TensorInfo("past.keys", f32, (BATCH, PAST, D)),
                     TensorInfo("past.values", f32, (BATCH, PAST, D)), TensorInfo("memory", f32, (2, BATCH, D)),
                     TensorInfo("cross_keys", f32, (BATCH, SOURCE, D)), TensorInfo("cross_values", f32, (BATCH, SOURCE, D)),
                     TensorInfo("encoder_attention_mask", "int64", (BATCH, SOURCE))],
                    [TensorInfo("logits", f32, (BATCH, 1, V)), TensorInfo("present.keys", f32, (BATCH, "total", D)),
                     TensorInfo("present.values", f32, (BATCH, "total", D)),
                     TensorInfo("present.memory", f32, (2, BATCH, D))],
                    example=(torch.randint(3, V, (2, 1)), torch.randn(2, 3, D), torch.randn(2, 3, D),
                             torch.randn(2, 2, D), torch.randn(2, 5, D), torch.randn(2, 5, D),
                             torch.ones(2, 5, dtype=torch.long)),
                    validation=[], cache=[("past.keys", "present.keys"), ("past.values", "present.values"),
                                          ("memory", "present.memory")], exporter="legacy")
    layout = EncoderDecoderLayout([Feed("past.keys", "zeros"), Feed("past.values", "zeros"),
                                   Feed("memory", "encoder", "memory_init"),
                                   Feed("cross_keys", "encoder", "cross_keys"),
                                   Feed("cross_values", "encoder", "cross_values"),
                                   Feed("encoder_attention_mask", "source_mask")], batching=batching)
    os.makedirs(directory)
    for graph in (encoder, decoder):
        export_graph(graph, os.path.join(directory, f"{graph.name}.onnx"))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": ENCODER_DECODER, "dtype": "fp32",
                "graphs": {g.name: g.describe(f"{g.name}.onnx") for g in (encoder, decoder)},
                "encoder_decoder": layout.to_dict(), "tokenizer": None, "dimensions": {"max_positions": None},
                "special_tokens": {"bos": START, "eos": EOS, "pad": PAD, "decoder_start": START},
                "generation": {"strategy": "greedy", "options": {}}, "files": describe_files(directory)}
    with open(os.path.join(directory, MANIFEST), "w") as handle:
        json.dump(manifest, handle)


@pytest.fixture(scope="module")
def toy_exports(tmp_path_factory):
    toy = Toy()
    root = tmp_path_factory.mktemp("toy")
    for batching in ("padded", "one-by-one"):
        write_toy_export(toy, str(root / batching), batching)
    return toy, root


SOURCES = [[5, 6, 7, 8, 9, 3], [4], [11, 12, 13], [5, 6, 7, 8, 9, 3]]


@pytest.mark.parametrize("batching", ["padded", "one-by-one"])
@pytest.mark.parametrize("name", ["greedy", "beam", "sample"])
def test_a_manifest_wired_encoder_decoder_is_token_identical_to_pytorch(toy_exports, batching, name):
    """No code in exports/ knows this layout: past (batch, past, D) grows, memory has its batch on axis 1,
    cross keys/values come once from a padded (or one-source) encoder; logits are (batch, 1, V)."""
    import lmkit.exports
    from lmkit.decoding.seq2seq_backend import Seq2SeqBackend
    from lmkit.seq2seq import Seq2SeqGenerator

    toy, root = toy_exports
    exported = lmkit.exports.load(str(root / batching), device="cpu")
    assert exported.kind == "encoder-decoder" and exported.decoder_start == START
    strategy = {"greedy": Greedy(GreedyOptions(max_new_tokens=12)),
                "beam": BeamSearch(BeamSearchOptions(max_new_tokens=12, num_beams=3, num_return_sequences=2)),
                "sample": Sampling(SamplingOptions(max_new_tokens=12, seed=4))}[name]
    results = {}
    for backend_name, backend in (("torch", Seq2SeqBackend(toy, "cpu", pad_id=PAD)), ("onnxruntime", exported.backend())):
        results[backend_name] = Seq2SeqGenerator(backend, START, EOS, PAD).generate(strategy, SOURCES, batch_size=3)
    for want, got in zip(results["torch"], results["onnxruntime"]):
        assert got.tokens == want.tokens and got.score == pytest.approx(want.score, abs=1e-3)
        assert [a.tokens for a in got.alternatives] == [a.tokens for a in want.alternatives]
    assert any(result.tokens for result in results["torch"])


def test_a_layout_that_leaves_a_decoder_input_unfed_is_refused_in_one_line(toy_exports, tmp_path):
    import lmkit.exports

    _, root = toy_exports
    copy = str(tmp_path / "copy")
    shutil.copytree(root / "padded", copy)
    path = os.path.join(copy, "lmkit-onnx.json")
    manifest = json.loads(open(path).read())
    manifest["encoder_decoder"]["feeds"] = [f for f in manifest["encoder_decoder"]["feeds"] if f["input"] != "memory"]
    open(path, "w").write(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="gives no first value for decoder input.s. memory; export the model again"):
        lmkit.exports.load(copy)


# -- open_model: one object over a model directory and its export ----------------------------------


def test_open_model_gives_the_same_generations_on_a_model_directory_and_its_export(tiny_gpt2, tiny_gpt2_export):
    from lmkit.opening import open_model

    torch_model, exported = open_model(tiny_gpt2, device="cpu"), open_model(tiny_gpt2_export, device="cpu")
    assert type(exported).__name__ == "ExportedModel" and torch_model.kind == exported.kind == "decoder"
    assert torch_model.generation == exported.generation
    assert torch_model.max_positions == exported.max_positions
    prompts = ["the cat", "a dog sat on"]
    for options in ({"strategy": "greedy"}, {"strategy": "beam", "num_beams": 3}):
        assert torch_model.generate(prompts, max_new_tokens=6, **options) == exported.generate(
            prompts, max_new_tokens=6, **options)


def test_open_model_gives_the_same_sentence_vectors_on_a_model_directory_and_its_export(bert_export_pair):
    from lmkit.opening import open_model

    model_dir, export_dir = bert_export_pair
    texts = ["the first sentence", "a second, longer sentence than the first one"]
    for pooling in ("mean", "cls", "last"):
        want = open_model(model_dir, device="cpu").embed(texts, pooling=pooling)
        got = open_model(export_dir, device="cpu").embed(texts, pooling=pooling)
        np.testing.assert_allclose(got[0], want[0], atol=1e-4)
        assert got[2] == want[2]
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def bert_export_pair(bert, fp32_export):  # noqa: F811 - the fixtures imported above
    return bert, fp32_export[0]


def test_is_export_is_one_function_with_one_line_errors(tiny_gpt2, tiny_gpt2_export, tmp_path):
    from lmkit.opening import is_export

    assert is_export(tiny_gpt2_export) and not is_export(tiny_gpt2)
    (tmp_path / "repo" / "m0").mkdir(parents=True)
    shutil.copy(os.path.join(tiny_gpt2_export, "lmkit-onnx.json"), tmp_path / "repo" / "m0")
    (tmp_path / "repo" / "m0" / "config.pbtxt").write_text('name: "m0"\n')
    with pytest.raises(ArtifactError, match="looks like a Triton repository: give .*m0"):
        is_export(str(tmp_path / "repo"))
