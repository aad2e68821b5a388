"""Import of bilm-tf's released weights: options.json + the weights' HDF5 (allenai/bilm-tf, bilm/model.py).

The HDF5 holds TF variables in TF's layout (x @ W), read as allennlp's elmo.py reads them:

    char_embed                         (n_characters - 1, d_char)  a zero row is put first (char id 0: padding)
    CNN/W_cnn_k, CNN/b_cnn_k           (1, width, d_char, channels) -> Conv1d (channels, d_char, width)
    CNN_high_k/{W,b}_{carry,transform} (D, D), (D,): W transposed into nn.Linear
    CNN_proj/{W_proj, b_proj}          (D, P), (P,)
    RNN_{d}/RNN/MultiRNNCell/Cell{l}/LSTMCell/{W_0, B, W_P_0}
                                       (I + P, 4H), (4H,), (H, P); d = 0 forward, 1 backward

TF's LSTM gates are ordered i, j, f, o (j the candidate) and its forget_bias of 1.0 is added at run
time, not stored; torch's order is i, f, g, o, so the blocks are reordered and 1.0 is added to f.
The softmax is not in the released file: the imported model is a frozen feature extractor (no
objective). h5py is an optional dependency, imported only here.
"""
from __future__ import annotations

import json
import os

import numpy as np

from lmkit.errors import ArtifactError, MissingDependency

REQUIRED = {"lstm": ("dim", "projection_dim", "n_layers", "cell_clip", "proj_clip"),
            "char_cnn": ("filters", "n_highway", "embedding", "n_characters", "max_characters_per_token",
                         "activation")}
TF_TO_TORCH_GATES = (0, 2, 1, 3)  # torch's (i, f, g, o) from TF's blocks (i, j, f, o)
TF_FORGET_BIAS = 1.0


def read_options(path: str) -> dict:
    """The ELMoConfig fields that bilm-tf's options.json gives; ArtifactError naming a missing field."""
    try:
        with open(path, encoding="utf-8") as handle:
            options = json.load(handle)
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist; give bilm-tf's options.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path} is not readable JSON ({error}); give bilm-tf's options.json") from None
    for section, fields in REQUIRED.items():
        if not isinstance(options.get(section), dict):
            raise ArtifactError(f"{path} has no '{section}' section; it is not a bilm-tf options.json")
        for name in fields:
            if name not in options[section]:
                raise ArtifactError(f"{path} lacks the field {section}.{name}; bilm-tf's options.json has it")
    if not isinstance(options["char_cnn"]["embedding"], dict) or "dim" not in options["char_cnn"]["embedding"]:
        raise ArtifactError(f"{path} lacks the field char_cnn.embedding.dim; bilm-tf's options.json has it")
    lstm, cnn = options["lstm"], options["char_cnn"]
    return {
        "n_characters": int(cnn["n_characters"]), "max_characters_per_token": int(cnn["max_characters_per_token"]),
        "d_char": int(cnn["embedding"]["dim"]), "filters": [[int(w), int(n)] for w, n in cnn["filters"]],
        "n_highway": int(cnn["n_highway"]), "activation": str(cnn["activation"]),
        "projection_dim": int(lstm["projection_dim"]), "lstm_dim": int(lstm["dim"]), "n_layers": int(lstm["n_layers"]),
        "cell_clip": float(lstm["cell_clip"] or 0.0), "proj_clip": float(lstm["proj_clip"] or 0.0),
        "use_skip_connections": bool(lstm.get("use_skip_connections", False)), "dropout": 0.0,
    }


def _dataset(handle, name: str, shape: tuple[int, ...], path: str) -> np.ndarray:
    if name not in handle:
        raise ArtifactError(f"{path} has no dataset {name}; it is not bilm-tf weights for this options.json")
    value = np.asarray(handle[name][...], dtype=np.float32)
    if value.shape != tuple(shape):
        raise ArtifactError(f"{path}: dataset {name} has shape {tuple(value.shape)}, options.json implies "
                            f"{tuple(shape)}; the weights and the options belong to different models")
    return value


def read_weights(path: str, config) -> dict[str, np.ndarray]:
    """The encoder's state dict (names of lmkit.plugins.elmo.model.ELMoBiLM, without `char_table`) from the HDF5."""
    try:
        import h5py
    except ImportError:
        raise MissingDependency("importing bilm-tf weights reads HDF5 with h5py, not installed here; install it "
                                "with: pip install h5py") from None
    if not os.path.isfile(path):
        raise ArtifactError(f"{path} does not exist; give bilm-tf's weights (.hdf5)")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ArtifactError(f"{path} is not an HDF5 file ({error}); give bilm-tf's weights") from None
    state = {}
    with handle:
        D, P, H, E = config.n_filters, config.projection_dim, config.lstm_dim, config.d_char
        chars = _dataset(handle, "char_embed", (config.n_characters - 1, E), path)
        state["token_encoder.char_embedding.weight"] = np.concatenate([np.zeros((1, E), np.float32), chars])
        for k, (width, channels) in enumerate(config.filters):
            w = _dataset(handle, f"CNN/W_cnn_{k}", (1, width, E, channels), path)
            state[f"token_encoder.convolutions.{k}.weight"] = np.transpose(w[0], (2, 1, 0))  # (channels, E, width)
            state[f"token_encoder.convolutions.{k}.bias"] = _dataset(handle, f"CNN/b_cnn_{k}", (channels,), path)
        for k in range(config.n_highway):
            for part in ("carry", "transform"):
                w = _dataset(handle, f"CNN_high_{k}/W_{part}", (D, D), path)
                state[f"token_encoder.highway.{part}.{k}.weight"] = w.T
                state[f"token_encoder.highway.{part}.{k}.bias"] = _dataset(handle, f"CNN_high_{k}/b_{part}", (D,), path)
        state["token_encoder.projection.weight"] = _dataset(handle, "CNN_proj/W_proj", (D, P), path).T
        state["token_encoder.projection.bias"] = _dataset(handle, "CNN_proj/b_proj", (P,), path)
        for direction, name in ((0, "forward_layers"), (1, "backward_layers")):
            for layer in range(config.n_layers):
                cell = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
                kernel = _dataset(handle, f"{cell}/W_0", (P + P, 4 * H), path)  # rows: [x; h_prev]
                bias = _dataset(handle, f"{cell}/B", (4 * H,), path).copy()
                bias[2 * H:3 * H] += TF_FORGET_BIAS  # TF's f block, before reordering
                order = np.concatenate([np.arange(g * H, (g + 1) * H) for g in TF_TO_TORCH_GATES])
                kernel, bias = kernel[:, order], bias[order]
                prefix = f"{name}.{layer}"
                state[f"{prefix}.weight_ih"] = np.ascontiguousarray(kernel[:P].T)
                state[f"{prefix}.weight_hh"] = np.ascontiguousarray(kernel[P:].T)
                state[f"{prefix}.bias"] = bias
                state[f"{prefix}.weight_proj"] = np.ascontiguousarray(_dataset(handle, f"{cell}/W_P_0", (H, P), path).T)
    return {name: np.ascontiguousarray(value) for name, value in state.items()}


def vocabulary_tokenizer(vocab_path: str):
    """A `word` tokenizer over bilm-tf's vocabulary file (one token a line, <S>, </S>, <UNK> among them),
    with <pad> first, <S> $A </S> as its template, and the roles of bilm-tf's special tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from lmkit.tokenizers import Tokenizer
    from lmkit.tokenizers.templates import apply_template

    try:
        with open(vocab_path, encoding="utf-8") as handle:
            words = [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise ArtifactError(f"{vocab_path} does not exist; give bilm-tf's vocabulary file, one token a line") from None
    except UnicodeDecodeError:
        raise ArtifactError(f"{vocab_path} is not UTF-8 text; give bilm-tf's vocabulary file") from None
    missing = [token for token in ("<S>", "</S>", "<UNK>") if token not in words]
    if missing:
        raise ArtifactError(f"{vocab_path} lacks {', '.join(missing)}; bilm-tf's vocabulary files list <S>, </S> "
                            "and <UNK>")
    vocab = {"<pad>": 0}
    for word in words:
        vocab.setdefault(word, len(vocab))
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="<UNK>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["<pad>", "<S>", "</S>", "<UNK>"])
    apply_template(hf, "<S> $A </S>", "<S> $A </S> <S> $B:1 </S>:1", "none")
    return Tokenizer(hf, "word", {"bos": "<S>", "eos": "</S>", "unk": "<UNK>", "pad": "<pad>"})


def import_bilm(options_path: str, weights_path: str, vocab_path: str, out: str, *, force: bool = False,
                host=None) -> dict:
    """Write an lmkit model directory with the released biLM (encoder elmo-bilm, no objective)."""
    from lmkit.errors import require_torch

    require_torch("lmkit import-elmo")
    import torch

    from lmkit.artifacts import staged_directory
    from lmkit.model import build_model, describe_build, save_model
    from lmkit.registry import get_host
    from lmkit.spec import resolve

    host = host or get_host()
    fields = read_options(options_path)
    tokenizer = vocabulary_tokenizer(vocab_path)
    table = {"name": os.path.basename(os.path.normpath(out)) or "elmo",
             "encoder": {"type": "elmo-bilm", "vocab_size": tokenizer.vocab_size, **fields}}
    spec = resolve(table, host)
    config = spec.encoder.options
    state = read_weights(weights_path, config)
    model = build_model(spec, seed=None)
    model.encoder.bind_tokenizer(tokenizer)
    state = {f"encoder.{name}": torch.from_numpy(value) for name, value in state.items()}
    state["encoder.char_table"] = model.encoder.char_table
    for name in ("scalar_parameters", "gamma"):
        state[f"encoder.scalar_mix.{name}"] = getattr(model.encoder.scalar_mix, name).detach()
    model.load_state_dict(state, strict=True)
    with staged_directory(out, force=force, inputs=(options_path, weights_path, vocab_path)) as stage:
        save_model(stage, model, host, tokenizer)
    return describe_build(spec, host, tokenizer)
