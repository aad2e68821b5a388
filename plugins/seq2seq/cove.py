"""CoVe (McCann et al. 2017): the encoder of a trained NMT model as a frozen feature extractor.

CoVe(w) is the top layer of the MT-LSTM over a sentence; downstream models read [GloVe(w); CoVe(w)].
Here the word vectors are the NMT model's own embeddings, or GloVe-format vectors the user gives
(one "word v_1 ... v_G" line per word; a token whose word is not in the file gets zeros, as in
salesforce/cove). `CoVeEncoder` is the `cove` encoder other compositions build on:

    [encoder]
    type = "cove"
    model = "runs/nmt"          # a model directory with an nmt-bilstm (or seq2seq-lstm) encoder
    vectors = "glove.840B.300d.txt"   # optional
    [tokenizer]
    path = "runs/nmt"           # the NMT model's tokenizer: CoVe reads its token ids
"""
from __future__ import annotations

import torch

from lmkit.contract import EncoderOutput
from lmkit.errors import SpecError
from lmkit.nn.stack import EncoderStack
from lmkit.word_vectors import load_word_vectors

from .config import CoVeConfig
from .model import LSTMEncoder


def load_nmt_encoder(directory: str):
    """The (frozen, eval-mode) encoder and tokenizer of an NMT model directory."""
    from lmkit.model import load_model

    model, tokenizer, _ = load_model(directory)
    if not isinstance(model.encoder, LSTMEncoder):
        raise SpecError(f"{directory} has no recurrent encoder to take CoVe features from; give an NMT model "
                        "(e.g. composed from nmt-tiny or nmt-cove)")
    encoder = model.encoder
    encoder.requires_grad_(False)
    return encoder.eval(), tokenizer


class CoVeEncoder(EncoderStack):
    """A frozen NMT encoder: forward gives [word vector; CoVe] (B, S, G + D) per token as its states."""

    def __init__(self, config: CoVeConfig):
        super().__init__()
        if not config.model:
            raise SpecError("encoder.model: give the NMT model directory whose encoder CoVe uses")
        self.config = config
        self.mt_lstm, tokenizer = load_nmt_encoder(config.model)
        vectors = load_word_vectors(config.vectors, tokenizer) if config.vectors else None
        # Not saved with the model: it is the user's file, read again when the model is loaded.
        self.register_buffer("word_vectors", None if vectors is None else torch.from_numpy(vectors),
                             persistent=False)
        words = vectors.shape[1] if vectors is not None else self.mt_lstm.config.d_embed
        self.d_model = words + self.mt_lstm.d_model  # [word vector; CoVe] per token
        self.max_positions = self.mt_lstm.max_positions

    def train(self, mode: bool = True):
        super().train(mode)
        self.mt_lstm.eval()  # frozen: no dropout, whatever the model around it does
        return self

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> EncoderOutput:
        with torch.no_grad():
            return self.mt_lstm.features(input_ids, attention_mask, word_vectors=self.word_vectors)

