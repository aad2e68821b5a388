"""The bigram as a decoder-only ONNX graph with no cache, through lmkit's shared decoder-only plan."""
from lmkit.exports.decoder_only import decoder_only_plan


def export_plan(model):
    V = model.decoder.config.vocab_size
    return decoder_only_plan(model, n_layers=0, n_heads=1, head_dim=1, vocab_size=V, max_length=None)
