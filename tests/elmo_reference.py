"""bilm-tf's biLM in numpy, from the TF equations (allenai/bilm-tf bilm/model.py), and HDF5 weights in its layout.

Used by tests/test_elmo*.py as the reference an imported model must match: nothing here is lmkit's.
Char ids are the shifted ones bilm-tf's Batcher feeds (0 = padded token); weights are read by
their HDF5 names, in TF's layout (x @ W), gates i, j, f, o, forget_bias 1.0 added at run time.
"""
from __future__ import annotations

import json

import numpy as np

FORGET_BIAS = 1.0


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def write_bilm_tf(path_options: str, path_weights: str, *, filters=((1, 4), (2, 6), (3, 6)), d_char=5, n_highway=2,
                  projection_dim=7, lstm_dim=9, n_layers=2, cell_clip=3.0, proj_clip=3.0, max_chars=12,
                  scale=1.0, seed=0, skip=None) -> dict:
    """A random biLM written as bilm-tf's options.json and weights .hdf5; returns the arrays by dataset name.

    scale: the weights' standard deviation, large enough (1.0) that the cell and projection clips engage.
    skip: a dataset name to leave out (for error tests).
    """
    import h5py

    rng = np.random.default_rng(seed)
    n_characters = 262
    D, P, H = sum(n for _, n in filters), projection_dim, lstm_dim
    arrays = {"char_embed": rng.normal(0, scale, (n_characters - 1, d_char))}
    for k, (width, channels) in enumerate(filters):
        arrays[f"CNN/W_cnn_{k}"] = rng.normal(0, scale / np.sqrt(width * d_char), (1, width, d_char, channels))
        arrays[f"CNN/b_cnn_{k}"] = rng.normal(0, 0.1, (channels,))
    for k in range(n_highway):
        for part in ("carry", "transform"):
            arrays[f"CNN_high_{k}/W_{part}"] = rng.normal(0, scale / np.sqrt(D), (D, D))
            arrays[f"CNN_high_{k}/b_{part}"] = rng.normal(0, 0.1, (D,))
    arrays["CNN_proj/W_proj"] = rng.normal(0, scale / np.sqrt(D), (D, P))
    arrays["CNN_proj/b_proj"] = rng.normal(0, 0.1, (P,))
    for direction in (0, 1):
        for layer in range(n_layers):
            cell = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            arrays[f"{cell}/W_0"] = rng.normal(0, scale, (P + P, 4 * H))
            arrays[f"{cell}/B"] = rng.normal(0, 0.5, (4 * H,))
            arrays[f"{cell}/W_P_0"] = rng.normal(0, scale, (H, P))
    arrays = {name: value.astype(np.float32) for name, value in arrays.items()}
    with h5py.File(path_weights, "w") as handle:
        for name, value in arrays.items():
            if name != skip:
                handle.create_dataset(name, data=value)
    options = {"bidirectional": True, "dropout": 0.1,
               "lstm": {"use_skip_connections": True, "projection_dim": P, "cell_clip": cell_clip,
                        "proj_clip": proj_clip, "dim": H, "n_layers": n_layers},
               "char_cnn": {"activation": "relu", "filters": [list(f) for f in filters], "n_highway": n_highway,
                            "embedding": {"dim": d_char}, "n_characters": n_characters,
                            "max_characters_per_token": max_chars},
               "n_tokens_vocab": 10, "unroll_steps": 20}
    with open(path_options, "w", encoding="utf-8") as handle:
        json.dump(options, handle)
    return {"arrays": arrays, "options": options}


def token_layer(arrays: dict, options: dict, char_ids: np.ndarray) -> np.ndarray:
    """char ids (T, C), shifted -> the projected token representation (T, P) (_build_word_char_embeddings)."""
    cnn = options["char_cnn"]
    table = np.concatenate([np.zeros((1, arrays["char_embed"].shape[1]), np.float32), arrays["char_embed"]])
    x = table[char_ids]  # (T, C, E)
    pooled = []
    for k, (width, _) in enumerate(cnn["filters"]):
        W, b = arrays[f"CNN/W_cnn_{k}"][0], arrays[f"CNN/b_cnn_{k}"]  # (width, E, n)
        C = x.shape[1]
        conv = np.stack([np.einsum("twe,wen->tn", x[:, p:p + width], W) for p in range(C - width + 1)], axis=1) + b
        pooled.append(np.maximum(conv.max(axis=1), 0.0))  # max over positions, then relu
    h = np.concatenate(pooled, axis=-1)
    for k in range(cnn["n_highway"]):
        carry = sigmoid(h @ arrays[f"CNN_high_{k}/W_carry"] + arrays[f"CNN_high_{k}/b_carry"])
        transform = np.maximum(h @ arrays[f"CNN_high_{k}/W_transform"] + arrays[f"CNN_high_{k}/b_transform"], 0.0)
        h = carry * transform + (1.0 - carry) * h
    return h @ arrays["CNN_proj/W_proj"] + arrays["CNN_proj/b_proj"]


def lstm_cell_run(arrays: dict, cell: str, inputs: np.ndarray, cell_clip: float, proj_clip: float, clipped: dict):
    """TF1 LSTMCell(num_proj, cell_clip, proj_clip) over inputs (T, I) from zero state -> outputs (T, P).

    clipped: counts of entries the clips changed, added to (so a test can see the clips engage).
    """
    W, B, W_P = arrays[f"{cell}/W_0"], arrays[f"{cell}/B"], arrays[f"{cell}/W_P_0"]
    H, P = W_P.shape
    m, c = np.zeros(P, np.float64), np.zeros(H, np.float64)
    outputs = []
    for x in inputs:
        lstm_matrix = np.concatenate([x, m]) @ W + B
        i, j, f, o = np.split(lstm_matrix, 4)
        c = sigmoid(f + FORGET_BIAS) * c + sigmoid(i) * np.tanh(j)
        clipped["cell"] = clipped.get("cell", 0) + int((np.abs(c) > cell_clip).sum())
        c = np.clip(c, -cell_clip, cell_clip)
        m = (sigmoid(o) * np.tanh(c)) @ W_P
        clipped["proj"] = clipped.get("proj", 0) + int((np.abs(m) > proj_clip).sum())
        m = np.clip(m, -proj_clip, proj_clip)
        outputs.append(m)
    return np.stack(outputs)


def bilm_layers(arrays: dict, options: dict, char_ids: np.ndarray, clipped: dict | None = None) -> np.ndarray:
    """One sentence's char ids (T, C) -> the ELMo layers (L + 1, T, 2P): [x; x], then [fwd_k; bwd_k]."""
    clipped = {} if clipped is None else clipped
    lstm = options["lstm"]
    x = token_layer(arrays, options, char_ids).astype(np.float64)
    layers = [np.concatenate([x, x], axis=-1)]
    directions = []
    for direction in (0, 1):
        h = x if direction == 0 else x[::-1]
        outs = []
        for layer in range(lstm["n_layers"]):
            cell = f"RNN_{direction}/RNN/MultiRNNCell/Cell{layer}/LSTMCell"
            out = lstm_cell_run(arrays, cell, h, lstm["cell_clip"], lstm["proj_clip"], clipped)
            if layer and lstm["use_skip_connections"]:
                out = out + h  # ResidualWrapper
            outs.append(out if direction == 0 else out[::-1])
            h = out
        directions.append(outs)
    for forward, backward in zip(*directions):
        layers.append(np.concatenate([forward, backward], axis=-1))
    return np.stack(layers)
