"""The family contract, checked on every registered stack through its tiny preset (lmkit.contract).

Every encoder and decoder a plugin registers, built-in or third-party (the example plugin is
installed for this module), must have a `*-tiny` preset; each tiny preset is then held to the same
checks, chosen by the kind of model it composes (encoder, decoder, encoder-decoder):

    every kind        save/load round trip, exact resume, finetune + predict + embed, export parity
                      and a torch-free run of the export, a too-long input is a one-line error
    decoder           cached equals uncached, left padding equals one-by-one, beam reorder, eval; generation
                      through a Generator of its own (GLM fills blanks) where it has one
    encoder           padding changes no real token's state
    encoder-decoder   batched equals one-by-one, beam reorder, eval (BLEU)

A new family passes this file by registering parts that meet lmkit.contract and a tiny preset.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import NO_TORCH, run_cli  # noqa: E402

from lmkit.registry import PluginHost, reset_host  # noqa: E402
from lmkit.synthetic_translation import TranslationTask, write_task  # noqa: E402

# The special tokens each tokenizer kind is trained with here: what the BERT family's templates,
# the LSTM decoders' <s> ... </s> and GPT's markers need (a user trains the same for their model).
SPECIALS = {
    "bytelevel-bpe": ("<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"),
    "bpe": ("<unk>", "<|endoftext|>", "<pad>", "<s>", "</s>", "_start_", "_delimiter_", "_classify_"),
    "wordpiece": ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
    "unigram": ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"),
    "char": ("<pad>", "<unk>", "<|endoftext|>", "<s>", "</s>"),
    "word": ("<pad>", "<unk>", "<s>", "</s>"),
}
# Presets whose stack wraps another model directory: what to compose first, and the option to point at it.
WRAPS = {"cove-tiny": ("nmt-tiny", "encoder.model")}
TASK = TranslationTask(0, nouns=8, adjectives=5, verbs=5)
LONG = " ".join(["the"] * 600)


@pytest.fixture(scope="module")
def host(third_party_site):
    """The plugin host with the third-party example plugin installed, as a user would have it."""
    sys.path.insert(0, third_party_site)
    reset_host()
    try:
        yield PluginHost()
    finally:
        sys.path.remove(third_party_site)
        reset_host()


def tiny_presets() -> list[str]:
    """The tiny presets of the built-in plugins (the third-party one is added by test_every_stack_...)."""
    return sorted(name for name in PluginHost().presets if name.endswith("-tiny"))


def stacks_of(host, preset: str) -> list[tuple[str, str]]:
    spec = host.presets[preset].spec
    return [(key, spec[key]["type"]) for key in ("encoder", "decoder") if spec.get(key)]


def kind_of(host, preset: str) -> str:
    keys = {key for key, _ in stacks_of(host, preset)}
    return "encoder-decoder" if keys == {"encoder", "decoder"} else keys.pop()


def test_every_stack_has_a_tiny_preset(host):
    covered = {stack for preset in host.presets if preset.endswith("-tiny") for stack in stacks_of(host, preset)}
    registered = {(kind, name) for kind in ("encoder", "decoder") for name in host.components[kind]}
    missing = sorted(registered - covered)
    print(f"\nconformance: {len(registered)} stacks registered, {len(registered & covered)} covered by "
          f"{sum(p.endswith('-tiny') for p in host.presets)} tiny presets")
    assert not missing, f"registered without a tiny preset: {missing}"
    assert ("decoder", "bigram") in covered  # the third-party plugin is held to the contract too


# -- the artifacts of each preset, made once ------------------------------------------------------


class Artifacts:
    """Directories made from one preset, on demand: data, tokenizer, composed, trained, exported."""

    def __init__(self, root, host, preset: str, data: dict):
        self.root, self.host, self.preset, self.data = root, host, preset, data
        self.kind = kind_of(host, preset)
        self._made: dict[str, str] = {}

    def cli(self, *args):
        result = run_cli(*args)
        assert result.code == 0, f"lmkit {' '.join(map(str, args))}: {result.err}"
        return result

    def tokenizer(self) -> str:
        spec = self.host.presets[self.preset].spec
        kind = (spec.get("tokenizer") or {}).get("type", "bytelevel-bpe")
        if kind not in self._made:
            out = str(self.root / f"tok-{kind}")
            vocab = 300 if kind == "bytelevel-bpe" else 200
            specials = json.dumps(list(SPECIALS[kind]))
            self.cli("tokenizer", "train", "--kind", kind, "--vocab-size", vocab, "--set", f"special_tokens={specials}",
                     self.data["train.src"], self.data["train.tgt"], "--out", out)
            self._made[kind] = out
        return self._made[kind]

    def composed(self) -> str:
        if "composed" not in self._made:
            out = str(self.root / "composed")
            overrides = [f"tokenizer={self.tokenizer()}"]
            spec = self.host.presets[self.preset].spec
            for key in ("encoder", "decoder"):
                if spec.get(key) and "vocab_size" in spec[key]:
                    overrides.append(f"{key}.vocab_size=320")
            if self.preset in WRAPS:
                inner, option = WRAPS[self.preset]
                inner_dir = Artifacts(self.root / inner, self.host, inner, self.data).trained()
                overrides.append(f"{option}={json.dumps(inner_dir)}")
            args = [x for o in overrides for x in ("--set", o)]
            self.cli("compose", self.preset, *args, "--out", out)
            self._made["composed"] = out
        return self._made["composed"]

    def train_args(self, steps: int) -> list:
        data = (["--data", self.data["train.src"], "--data", self.data["train.tgt"]]
                if self.kind == "encoder-decoder" else ["--data", self.data["documents"]])
        return [*data, "--steps", steps, "--batch-size", 4, "--seq-len", self.seq_len(), "--warmup", 0, "--eval-every", 0,
                "--save-every", 0, "--log-every", 1, "--eval-batches", 1]

    def seq_len(self) -> int:
        """24, or for parallel text (whose sentences are refused, not cut, past --seq-len) the longest sentence
        in tokens, plus one for a source suffix (T5's </s>): a 200-piece unigram tokenizer spells these in up to ~40."""
        if self.kind != "encoder-decoder":
            return 24
        from lmkit.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(self.tokenizer())
        lines = [line for side in ("train.src", "train.tgt")
                 for line in open(self.data[side], encoding="utf-8").read().splitlines()]
        return max(24, *map(len, tokenizer.encode_batch(lines))) + 1

    def trainable(self) -> bool:
        return bool(self.host.presets[self.preset].spec.get("objectives"))

    def trained(self) -> str:
        """The composed model after 4 steps; a preset without objectives (frozen CoVe) as composed."""
        if "trained" not in self._made:
            out = str(self.root / "trained")
            shutil.copytree(self.composed(), out)
            if self.trainable():
                self.cli("train", out, *self.train_args(4))
            self._made["trained"] = out
        return self._made["trained"]

    def exported(self) -> str:
        if "exported" not in self._made:
            out = str(self.root / "exported")
            self.cli("export", self.trained(), "--out", out)
            self._made["exported"] = out
        return self._made["exported"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("conformance-data")
    files = write_task(str(root), n_train=300, n_valid=20, task=TASK)
    # Documents, one sentence per line, a blank line between documents (masked LM reads them so).
    with open(files["train.src"], encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    documents = root / "documents.txt"
    documents.write_text("\n\n".join("\n".join(lines[i:i + 5]) for i in range(0, len(lines), 5)) + "\n")
    labelled = root / "task.jsonl"
    # A label the length decides: learnable, but this file only checks that every stack fine-tunes.
    median = sorted(len(line.split()) for line in lines[:48])[24]
    labelled.write_text("".join(json.dumps({"text": line, "label": "a" if len(line.split()) < median else "b"}) + "\n"
                                for line in lines[:48]))
    return {**files, "documents": str(documents), "task": str(labelled)}


@pytest.fixture(scope="module")
def artifacts(host, data, tmp_path_factory):
    made: dict[str, Artifacts] = {}

    def get(preset: str) -> Artifacts:
        if preset not in made:
            made[preset] = Artifacts(tmp_path_factory.mktemp(preset), host, preset, data)
        return made[preset]

    return get


PRESETS = [*tiny_presets(), "bigram-tiny"]


def by_kind(*kinds: str) -> list:
    host = PluginHost()
    return [p for p in PRESETS if p == "bigram-tiny" and "decoder" in kinds
            or p in host.presets and kind_of(host, p) in kinds]


def prompt_for(made: Artifacts) -> str:
    """'the first', and for a decoder that fills blanks rather than continuing (a generator of its own,
    lmkit.contract.Generator: GLM) a blank after it: its tokenizer's mask token."""
    from lmkit.tokenizers import load_tokenizer

    generators = made.host.components["generator"]
    if made.kind == "decoder" and any(kind == "decoder" and name in generators
                                      for kind, name in stacks_of(made.host, made.preset)):
        return "the first " + load_tokenizer(made.trained()).special_tokens["mask"]
    return "the first"


def load(directory: str):
    from lmkit.model import load_model

    return load_model(directory)


# -- every kind -----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", PRESETS)
def test_save_load_round_trip(preset, artifacts):
    made = artifacts(preset)
    model, tokenizer, _ = load(made.composed())
    again, _, _ = load(made.composed())
    ids = torch.tensor([tokenizer.encode("the first sentence of a test")[:10]])
    with torch.no_grad():
        a, b = model.embed(ids), again.embed(ids)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=0)
    # What task heads read (the stack's task recipe) is d_model wide; embed's features may be wider (CoVe).
    from lmkit.tasks.recipes import recipe_for

    with torch.no_grad():
        states = recipe_for(model.feature_stack).run(model, ids, torch.ones_like(ids, dtype=torch.bool), None)
    assert states.last_hidden_state.shape[-1] == model.feature_stack.d_model


@pytest.mark.parametrize("preset", PRESETS)
def test_exact_resume(preset, artifacts, tmp_path, monkeypatch):
    """A run stopped right after its step-2 checkpoint (Ctrl-C), then resumed, ends bit for bit where the
    uninterrupted run does."""
    from safetensors.torch import load_file

    from lmkit.training import trainer

    made = artifacts(preset)
    if not made.trainable():
        pytest.skip("the preset has no objectives: nothing to train (a frozen feature extractor)")
    whole, halves = str(tmp_path / "whole"), str(tmp_path / "halves")
    shutil.copytree(made.composed(), whole)
    shutil.copytree(made.composed(), halves)
    arguments = [*made.train_args(4), "--save-every", 2]
    made.cli("train", whole, *arguments)
    save = trainer.save_checkpoint

    def save_then_stop(directory, model, optimizer, names, state):
        save(directory, model, optimizer, names, state)
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    assert run_cli("train", halves, *arguments).code == 130
    monkeypatch.undo()
    made.cli("train", halves, "--resume")
    a, b = load_file(f"{whole}/model.safetensors"), load_file(f"{halves}/model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("preset", PRESETS)
def test_finetune_predict_embed(preset, artifacts, data, tmp_path):
    made = artifacts(preset)
    out = str(tmp_path / "tuned")
    made.cli("finetune", made.trained(), "--task", "classification", "--train", data["task"], "--dev", data["task"],
             "--out", out, "--steps", 3, "--batch-size", 8, "--max-length", 24)
    predicted = made.cli("predict", os.path.join(out, "best"), "--data", data["task"])
    rows = [json.loads(line) for line in predicted.out.splitlines() if line.startswith("{")]
    assert len(rows) == 48 and {row["label"] for row in rows} <= {"a", "b"}
    embedded = made.cli("embed", made.trained(), "--text", "the first sentence", "--text", "a second one")
    vectors = json.loads(embedded.out)
    model, tokenizer, _ = load(made.trained())
    from lmkit.token_inputs import batch_inputs, spell

    encoding = tokenizer.hf_tokenizer.encode("a second one", add_special_tokens=True)
    # a stack that reads per-token inputs (ELMo's characters) gets them from what each token spells
    extra = batch_inputs(model.feature_stack.token_inputs(tokenizer), [spell(tokenizer, encoding, ["a second one"])],
                         len(encoding.ids))
    with torch.no_grad():
        ids = torch.tensor([encoding.ids])
        extra = {name: torch.from_numpy(value) for name, value in extra.items()}
        expected = model.embed(ids, **extra).last_hidden_state.mean(1)[0]  # mean pooling, the default
    np.testing.assert_allclose(vectors[1]["embedding"], expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_too_long_input_is_one_line_error(preset, artifacts):
    made = artifacts(preset)
    model = load(made.composed())[0]
    if model.feature_stack.max_positions is None and made.kind != "encoder-decoder":
        pytest.skip("the stack reads any length")
    command = {"decoder": ["generate", "--prompt"], "encoder": ["embed", "--text"],
               "encoder-decoder": ["translate", "--text"]}[made.kind]
    result = run_cli(command[0], made.composed(), command[1], LONG)
    assert result.code != 0
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err


@pytest.mark.parametrize("preset", PRESETS)
def test_export_parity_and_torch_free_run(preset, artifacts, third_party_site, tmp_path):
    import subprocess

    made = artifacts(preset)
    exported = made.exported()
    manifest = json.loads(open(os.path.join(exported, "lmkit-onnx.json")).read())
    assert manifest["validation"]["max_abs_diff"] < 1e-3  # fp32 against PyTorch, measured at export
    command = {"decoder": ["generate", "--prompt", prompt_for(made), "--max-new-tokens", "6", "--json"],
               "encoder": ["embed", "--text", "the first sentence"],
               "encoder-decoder": ["translate", "--text", "the first sentence", "--json"]}[made.kind]
    torch_run = made.cli(command[0], made.trained(), *command[1:])
    code = NO_TORCH + "from lmkit.cli import main\nmain()\n"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([third_party_site, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, command[0], exported, *command[1:]],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    if made.kind == "encoder":
        np.testing.assert_allclose(json.loads(done.stdout)[0]["embedding"], json.loads(torch_run.out)[0]["embedding"],
                                   atol=1e-4)
    else:  # greedy (or the preset's beam) search gives the same tokens on both backends
        assert [r["tokens"] for r in json.loads(done.stdout)] == [r["tokens"] for r in json.loads(torch_run.out)]
    if made.kind == "decoder":  # onnxruntime-genai runs it from genai_config.json, or the manifest says why not
        genai = manifest["genai"]
        if genai["config"] is None:
            assert genai["reason"] and "\n" not in genai["reason"]
            if manifest["dimensions"].get("cache_layout") == "buffer":  # the fast layout: genai's is an option
                assert "--layout genai" in genai["reason"]
        else:
            assert genai["config"] in manifest["files"]
            if importlib.util.find_spec("onnxruntime_genai") and manifest["generation"]["strategy"] == "greedy":
                from test_genai import genai_generate

                from lmkit.tokenizers import load_tokenizer

                # Token ids in: genai's own tokenizer does not read every tokenizer (see test_genai).
                ids = load_tokenizer(exported).encode(prompt_for(made))
                assert genai_generate(exported, [ids], 6) == [r["tokens"] for r in json.loads(done.stdout)]


# -- decoders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", by_kind("decoder"))
def test_cached_equals_uncached(preset, artifacts):
    decoder = load(artifacts(preset).trained())[0].decoder
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        full = decoder(ids)
        cache = decoder.new_cache(2, 9)
        steps = [decoder(ids[:, :5], cache)] + [decoder(ids[:, t:t + 1], cache) for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", by_kind("decoder"))
def test_left_padding_equals_one_by_one(preset, artifacts):
    from lmkit.decoding.greedy import Greedy
    from lmkit.decoding.options import GreedyOptions
    from lmkit.decoding.torch_backend import TorchBackend

    decoder = load(artifacts(preset).trained())[0].decoder
    prompts = [[5, 9, 14, 3, 7, 8], [11], [4, 4, 12]]
    search = Greedy(GreedyOptions(max_new_tokens=5))
    batched = search.generate(TorchBackend(decoder, 5), prompts, eos_id=None, pad_id=0)
    alone = [search.generate(TorchBackend(decoder, 5), [p], eos_id=None, pad_id=0)[0] for p in prompts]
    assert [g.tokens for g in batched] == [g.tokens for g in alone]


@pytest.mark.parametrize("preset", by_kind("decoder"))
def test_beam_reorder_moves_the_cache_with_its_rows(preset, artifacts):
    decoder = load(artifacts(preset).trained())[0].decoder
    ids = torch.randint(0, 300, (3, 6))
    rows = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = decoder.new_cache(3, 8)
        decoder(ids[:, :5], cache)
        cache.reorder(rows)
        moved = decoder(ids[rows, 5:6], cache)
        fresh = decoder(ids[rows])[:, 5:6]
    torch.testing.assert_close(moved, fresh, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", by_kind("decoder"))
def test_rows_merged_into_a_running_batch_are_a_prefill_of_all_rows(preset, artifacts):
    """Backend.merge (a server's continuous batch) on both backends: after 2 steps of 2 rows, a longer and a
    shorter prompt join; their logits, and those of the next step, are those of one prefill of every row."""
    from lmkit.decoding.common import left_pad
    from lmkit.opening import open_model

    made = artifacts(preset)
    running, joining = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13, 14, 15, 16, 17, 18], [19]]
    rows = [running[0] + [20, 21], running[1] + [22, 23]]
    for directory in (made.trained(), made.exported()):
        model = open_model(directory, device="cpu")
        if model.generator is not None:  # it fills blanks with positions of its own (GLM): lmkit serve refuses it
            pytest.skip("a decoder with a generator of its own is not served, so its rows never join a batch")
        backend, reference = model.backend(8), model.backend(8)
        backend.prefill(*left_pad(running, 0))
        for token in (20, 21):
            backend.step(np.array([token, token + 2]))
        merged = backend.merge(*left_pad(joining, 0))
        everything = reference.prefill(*left_pad(rows + joining, 0))
        np.testing.assert_allclose(merged, everything[2:], atol=1e-4, rtol=1e-4)
        tokens = np.array([24, 25, 26, 27])
        np.testing.assert_allclose(backend.step(tokens), reference.step(tokens), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", by_kind("decoder"))
def test_eval_reports_perplexity(preset, artifacts, data):
    made = artifacts(preset)
    result = made.cli("eval", made.trained(), "--data", data["valid.src"], "--json")
    record = json.loads(result.out)
    assert np.isfinite(record["perplexity"]) and record["perplexity"] > 1


@pytest.mark.parametrize("preset", by_kind("encoder"))
def test_eval_of_text_on_an_encoder_scores_it_or_says_why_not(preset, artifacts, data):
    """An encoder whose objectives score text (ELMo's biLM) gives a perplexity; any other a one-line refusal. A
    user's trial: `lmkit eval --data` on RoBERTa was `internal error: ZeroDivisionError` (masked LM scores only the
    tokens it masks), on BERT a demand for an end-of-text token that then led to the same crash."""
    made = artifacts(preset)
    result = run_cli("eval", made.trained(), "--data", data["valid.src"], "--json")
    if result.code == 0:
        assert preset == "elmo-tiny" and np.isfinite(json.loads(result.out)["perplexity"])
    else:
        assert "Traceback" not in result.err and "internal error" not in result.err
        assert len(result.err.strip().splitlines()) == 1 and "no decoder" in result.err, result.err


# -- encoders -------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", by_kind("encoder"))
def test_padding_changes_no_real_token(preset, artifacts):
    model = load(artifacts(preset).trained())[0]
    ids = torch.randint(5, 200, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 4)], dim=1).bool()
    with torch.no_grad():
        alone = model.embed(ids).last_hidden_state
        with_padding = model.embed(padded, mask).last_hidden_state[:, :7]
    torch.testing.assert_close(with_padding, alone, rtol=1e-4, atol=1e-4)


# -- encoder-decoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("preset", by_kind("encoder-decoder"))
def test_batched_translation_equals_one_by_one(preset, artifacts, data):
    made = artifacts(preset)
    with open(data["valid.src"], encoding="utf-8") as handle:
        sources = handle.read().splitlines()[:4]
    texts = [x for s in sources for x in ("--text", s)]
    # A 4-step model loops on near-tied tokens; 12 tokens keep float-level ties between a batched and a
    # one-row LSTM pass from deciding the comparison (they flipped once, 60 tokens in).
    beam = ["--strategy", "beam", "--num-beams", 3, "--max-new-tokens", 12, "--json"]
    batched = made.cli("translate", made.trained(), *texts, *beam)
    alone = [made.cli("translate", made.trained(), "--text", s, *beam) for s in sources]
    assert [r["tokens"] for r in json.loads(batched.out)] == [json.loads(r.out)[0]["tokens"] for r in alone]


@pytest.mark.parametrize("preset", by_kind("encoder-decoder"))
def test_decoder_state_reorder_moves_rows(preset, artifacts):
    model = load(artifacts(preset).trained())[0]
    source = torch.randint(5, 200, (3, 6))
    target = torch.randint(5, 200, (3, 4))
    rows = torch.tensor([1, 1, 0])
    with torch.no_grad():
        state = model.decoder.start(model.encoder(source))
        _, state = model.decoder(target[:, :3], state)
        moved, _ = model.decoder(target[rows, 3:], model.decoder.reorder(state, rows))
        fresh, _ = model.decoder(target[rows], model.decoder.start(model.encoder(source[rows])))
    torch.testing.assert_close(moved, fresh[:, 3:], rtol=1e-4, atol=1e-4)


def serve_three(model, sources: list[list[int]], backend=None) -> tuple[list, list]:
    """lmkit serve's engine over an encoder-decoder's backend (SourcePrompts): two sources asking 3 and 6 tokens,
    and a third asking 4 that arrives at the first prefill; (the backend's calls, the three sequences)."""
    import threading

    from lmkit.serving.engine import ContinuousBatcher, Sequence, Settings, SourcePrompts

    calls, finished, done = [], [], threading.Event()

    class Recording(SourcePrompts):
        def prefill(self, input_ids, attention_mask):
            calls.append(("prefill", len(input_ids)))
            if len(calls) == 1:
                engine.submit([late])  # arrives while the first batch runs: joins it, or waits for it to end
            return super().prefill(input_ids, attention_mask)

        def merge(self, input_ids, attention_mask):
            calls.append(("merge", len(input_ids)))
            return super().merge(input_ids, attention_mask)

        def step(self, tokens, rows=None):
            calls.append(("step", len(tokens)))
            return super().step(tokens, rows)

    def on_event(sequence, kind, detail):
        assert kind != "error", detail
        if kind == "done":
            finished.append(sequence)
            if len(finished) == 3:
                done.set()

    engine = ContinuousBatcher(Recording(backend or model.backend(8), model.decoder_start), eos_id=None, pad_id=0)
    short, long, late = (Sequence(source, Settings(max_new_tokens=n), on_event=on_event)
                         for source, n in zip(sources, (3, 6, 4)))
    engine.submit([short, long])
    engine.start()
    assert done.wait(60)
    engine.stop()
    return calls, [short, long, late]


# A late row joins the running batch: its start token decoded beside the running rows' next step (merge).
JOINS = [("prefill", 2), ("step", 2), ("merge", 1), ("step", 3), ("step", 2), ("step", 2), ("step", 1)]
# A late row waits for the running batch to end (a backend that cannot join rows).
WAITS = [("prefill", 2), ("step", 2), ("step", 2), ("step", 1), ("step", 1), ("step", 1),
         ("prefill", 1), ("step", 1), ("step", 1), ("step", 1)]


@pytest.mark.parametrize("preset", by_kind("encoder-decoder"))
def test_the_server_engine_gives_each_source_its_greedy_target(preset, artifacts, data):
    """On both backends: rows that end at different steps leave the batch, one that arrives while it runs joins
    it (a shorter source, a shorter target: both padded), and every row's tokens are those of greedy generation
    from its source alone. An export whose decoder graph reads no target padding (made before lmkit's could)
    has the late row wait for the batch to end."""
    from lmkit.opening import open_model
    from lmkit.seq2seq import Seq2SeqGenerator

    with open(data["valid.src"], encoding="utf-8") as handle:
        texts = sorted(handle.read().splitlines()[:3], key=len)
    texts = [texts[1], texts[2], texts[0]]  # the late source the shortest, so that the joined sources pad it
    for directory in (artifacts(preset).trained(), artifacts(preset).exported()):
        model = open_model(directory, device="cpu")
        sources = model.encode_sources(texts)
        generator = Seq2SeqGenerator(model.backend(8), model.decoder_start, None, 0)
        alone = [r.tokens for r in generator.generate(model.decoding("greedy", max_new_tokens=6), sources)]
        calls, served = serve_three(model, sources)
        assert calls == JOINS
        assert [s.tokens for s in served] == [alone[0][:3], alone[1], alone[2][:4]]
        backend = model.backend(8)
        if hasattr(backend, "layout"):  # an export: as one made before target_padding was written
            backend.layout = {**backend.layout, "target_padding": False}
            assert backend.joins_rows == (not preset.startswith("t5"))  # a recurrent state has no target positions
            calls, served = serve_three(model, sources, backend)
            assert calls == (JOINS if backend.joins_rows else WAITS)
            assert [s.tokens for s in served] == [alone[0][:3], alone[1], alone[2][:4]]


@pytest.mark.parametrize("preset", by_kind("encoder-decoder"))
def test_eval_reports_bleu(preset, artifacts, data):
    made = artifacts(preset)
    result = made.cli("eval", made.trained(), "--data", data["valid.src"], "--data", data["valid.tgt"], "--json")
    record = json.loads(result.out)
    assert 0 <= record["bleu"] <= 100 and record["signature"].startswith("nrefs:1")


# -- prefixes (lmkit.prefix) ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", by_kind("decoder", "encoder-decoder"))
def test_prefix_runs_token_identically_on_the_export(preset, artifacts):
    """Every model whose cache is keys/values starts from a prefix of its geometry on both backends, greedy and
    beam giving the same tokens; any other refuses a prefix in one line on both."""
    from lmkit import open_model
    from lmkit.errors import LmkitError
    from lmkit.plugins.prefixes.model import cache_geometry
    from lmkit.prefix import CachePrefix

    made = artifacts(preset)
    model = load(made.trained())[0]
    try:
        n_layers, n_heads, head_dim = cache_geometry(model)
    except LmkitError:
        n_layers, n_heads, head_dim = 1, 1, 1  # a recurrent cache: both backends must refuse
        takes = False
    else:
        takes = True
    rng = np.random.default_rng(0)
    prefix = CachePrefix(rng.standard_normal((n_layers, 2, n_heads, 3, head_dim)).astype(np.float32), "a", "test")
    outputs = []
    for directory in (made.trained(), made.exported()):
        opened = open_model(directory, device="cpu")
        text = prompt_for(made)
        texts = [text, text.replace("the first", "the")]  # two lengths: left padding in a decoder's batch
        ids = opened.encode_sources(texts) if made.kind == "encoder-decoder" else opened.tokenizer.encode_batch(texts)
        runs = []
        for strategy, options in (("greedy", {}), ("beam", {"num_beams": 3})):
            decoding = opened.decoding(strategy, max_new_tokens=6, **options)
            if not takes:
                with pytest.raises(LmkitError) as refused:
                    opened.generate_ids(ids, decoding, prefix=prefix)
                assert "\n" not in str(refused.value)
                continue
            runs.append([r.tokens for r in opened.generate_ids(ids, decoding, prefix=prefix)])
        outputs.append(runs)
    assert outputs[0] == outputs[1]


def test_a_recipe_refuses_a_stack_it_does_not_read(host, tiny_gpt2, tmp_path):
    # A trial's `--recipe cvt` on a GLM, an AWD-LSTM, a T5 or an ELMo model ended in "internal error:
    # AttributeError" from deep in the recipe: every recipe that names the stacks it reads refuses others first.
    train = tmp_path / "train.conll"
    train.write_text("the O\ncat X\n\na O\ndog X\n")
    recipes = [name for name in host.components["task-recipe"] if getattr(host.component("task-recipe", name).load(),
                                                                           "stacks", None)]
    assert {"cvt", "elmo", "elmo-bilstm"} <= set(recipes)  # ulmfit's refuses in words of its own
    for name in recipes:
        out = tmp_path / name
        result = run_cli("finetune", tiny_gpt2, "--task", "token-classification", "--recipe", name, "--train",
                         str(train), "--out", str(out), "--steps", 1)
        lines = result.err.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and "this model's decoder is gpt2" in lines[0], (name, result.err)
        assert not out.exists()
