"""Running an encoder-decoder export (Seq2Seq, attentional NMT) without PyTorch.

    translator = lmkit.exports.seq2seq_runtime.load_translator("exp/nmt")
    translator.backend.set_sources([[12, 40, 7]])     # then any lmkit.decoding strategy, as in PyTorch

The encoder graph runs once per source sentence (unpadded: the ONNX LSTM op would read padding),
its states are padded into one batch with a mask, and the decoder-step graph runs one token per row
with the recurrent state fed back; beams are rows, reordered with np.take like the PyTorch backend's.
"""
from __future__ import annotations

import numpy as np

from lmkit.errors import ArtifactError

from .graphs import ENCODER_DECODER
from .manifest import check_graphs, read_manifest, safe_path, verify_files
from .runtime import ExportedModel, _onnxruntime, providers_for


class OrtSeq2SeqBackend:
    """lmkit.decoding.backend.Backend over the two sessions; call set_sources before each generate()."""

    max_length = None

    def __init__(self, encoder, decoder, graphs: dict, pad_id: int = 0):
        self.encoder, self.decoder = encoder, decoder
        self.encoder_outputs = [t["name"] for t in graphs["encoder"]["outputs"]]
        self.decoder_inputs = {t["name"]: t for t in graphs["decoder"]["inputs"]}
        self.decoder_outputs = [t["name"] for t in graphs["decoder"]["outputs"]]
        self.pad_id = pad_id
        self.sources: list[list[int]] | None = None
        self.state: dict[str, np.ndarray] = {}

    def set_sources(self, sources: list[list[int]]) -> None:
        self.sources = [list(map(int, s)) for s in sources]

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.sources is None or len(self.sources) != len(input_ids):
            raise ValueError("set_sources() must give one source per prompt before prefill")
        if not attention_mask.all():
            raise ValueError("every target prefix must have the same length (the start token)")
        encoded = [dict(zip(self.encoder_outputs, self.encoder.run(self.encoder_outputs,
                                                                   {"input_ids": np.asarray([s], np.int64)})))
                   for s in self.sources]
        state = {"state.h": np.concatenate([e["state.h"] for e in encoded], axis=1),
                 "state.c": np.concatenate([e["state.c"] for e in encoded], axis=1)}
        B, H = state["state.h"].shape[1], state["state.h"].shape[2]
        if "state.feed" in self.decoder_inputs:
            state["state.feed"] = np.zeros((B, H), dtype=np.float32)
        if "encoder_states" in self.decoder_inputs:
            width = max(len(s) for s in self.sources)
            for name in ("encoder_states", "encoder_keys"):
                padded = np.zeros((B, width, encoded[0][name].shape[-1]), dtype=np.float32)
                for row, e in enumerate(encoded):
                    padded[row, :e[name].shape[1]] = e[name][0]
                state[name] = padded
            mask = np.zeros((B, width), dtype=np.bool_)
            for row, source in enumerate(self.sources):
                mask[row, :len(source)] = True
            state["encoder_mask"] = mask
        self.state = state
        return self._run(np.ascontiguousarray(input_ids[:, -1:], dtype=np.int64))

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            self.state = {name: np.take(value, rows, axis=1 if name in ("state.h", "state.c") else 0)
                          for name, value in self.state.items()}
        return self._run(np.asarray(tokens, dtype=np.int64)[:, None])

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        outputs = dict(zip(self.decoder_outputs, self.decoder.run(self.decoder_outputs,
                                                                  {"input_ids": input_ids, **self.state})))
        for name, value in outputs.items():
            if name.startswith("present."):
                self.state["state." + name[len("present."):]] = value
        return np.array(outputs["logits"], dtype=np.float32)


def load_translator(directory: str, device: str = "auto", provider: str | None = None):
    """The lmkit.translation.Translator of an encoder-decoder export directory (hashes checked first)."""
    from lmkit.parallel import source_pad_id
    from lmkit.translation import Translator

    manifest = read_manifest(directory)
    ort = _onnxruntime()
    wanted = providers_for(device, provider)
    if manifest.get("architecture") != ENCODER_DECODER:
        raise ArtifactError(f"{directory} is a '{manifest.get('architecture')}' export, not an {ENCODER_DECODER} "
                            "one; use lmkit generate on it")
    verify_files(directory, manifest)
    check_graphs(directory, manifest)
    graphs = manifest["graphs"]
    if set(graphs) != {"encoder", "decoder"}:
        raise ArtifactError(f"{directory}: an {ENCODER_DECODER} export has graphs 'encoder' and 'decoder'; this "
                            f"one has {', '.join(graphs)}")
    tokenizer = ExportedModel._tokenizer(directory, manifest)
    if tokenizer is None:
        raise ArtifactError(f"{directory} has no tokenizer to read sources with")
    target_tokenizer = None
    if manifest.get("target_tokenizer"):
        if manifest["target_tokenizer"] not in manifest["files"]:
            raise ArtifactError(f"{directory}: the target tokenizer {manifest['target_tokenizer']!r} is not listed "
                                "with a hash in the manifest; refusing to load it")
        target_tokenizer = ExportedModel._tokenizer(directory, {"tokenizer": manifest["target_tokenizer"],
                                                                "files": manifest["files"]})
    sessions = {name: ort.InferenceSession(safe_path(directory, graph["file"], "graph file"), providers=wanted)
                for name, graph in graphs.items()}
    backend = OrtSeq2SeqBackend(sessions["encoder"], sessions["decoder"], graphs, pad_id=source_pad_id(tokenizer))
    generation = manifest["generation"]
    return Translator(tokenizer, backend, (generation["strategy"], generation.get("options", {})),
                      manifest.get("dimensions", {}).get("max_positions"), target_tokenizer=target_tokenizer)
