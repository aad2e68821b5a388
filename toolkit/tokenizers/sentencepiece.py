"""A SentencePiece model file (spiece.model, what T5's and other Google checkpoints ship) as a `tokenizers`
Tokenizer, converted once when a checkpoint is imported.

Why convert rather than run SentencePiece: lmkit's tokenizer is tokenizer.json everywhere (training,
the model directory, the export's torch-free runtime), so a checkpoint that ships only spiece.model is
turned into one at `lmkit import-hf` time and sentencepiece is never needed afterwards. Reading the file
needs sentencepiece's protobuf schema (the `spiece` extra: sentencepiece and protobuf); nothing else
in lmkit imports this module.

The conversion is transformers' (convert_slow_tokenizer.T5Converter and T5Tokenizer in 5.x): the
unigram pieces with their scores, the model's precompiled normalisation (NFKC by default), text split
on whitespace with "▁" put before every word, the control pieces (<pad>, </s>) as special tokens,
then `extra_ids` sentinels <extra_id_{n-1}> .. <extra_id_0> after the pieces (T5 has 100), and the
template that ends every text with </s> when special tokens are asked for. tests/test_t5_hf.py checks
the ids against SentencePiece's own encoder and transformers' T5Tokenizer.
"""
from __future__ import annotations

from ..errors import ArtifactError, MissingDependency

SPIECE = "spiece.model"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4  # ModelProto.SentencePiece.Type
UNIGRAM = 1  # TrainerSpec.ModelType


def read_proto(path: str):
    """The ModelProto of a SentencePiece model file; one-line errors for a missing dependency or a bad file."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise MissingDependency(f"reading {path} needs sentencepiece and protobuf; install them with: "
                                "pip install -c constraints.txt 'lmkit-toolkit[spiece]' (or save the tokenizer "
                                "with transformers, which writes tokenizer.json)") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(path, "rb") as handle:
            proto.ParseFromString(handle.read())
    except OSError as error:
        raise ArtifactError(f"{path} cannot be read ({error.strerror}); restore it from the checkpoint") from None
    except Exception:  # protobuf's DecodeError, or what a truncated file raises
        raise ArtifactError(f"{path} is not a SentencePiece model; restore it from the checkpoint") from None
    if not proto.pieces:
        raise ArtifactError(f"{path} is not a SentencePiece model (it has no pieces); restore it from the checkpoint")
    return proto


def convert_spiece(path: str, extra_ids: int = 0, template: str = "none"):
    """lmkit's Tokenizer (kind unigram) of a SentencePiece unigram model file, `extra_ids` sentinels appended
    and `template` (a lmkit.tokenizers.templates preset: t5 for "$A </s>") as its post-processor.

    ArtifactError for a BPE model or an unreadable file; MissingDependency without sentencepiece/protobuf.
    """
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    from .templates import apply_template
    from .wrapper import Tokenizer, infer_roles

    proto = read_proto(path)
    if proto.trainer_spec.model_type != UNIGRAM:
        raise ArtifactError(f"{path} is a SentencePiece model of type {proto.trainer_spec.model_type} (not unigram), "
                            "which lmkit does not convert; save the tokenizer with transformers (tokenizer.json)")
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(extra_ids - 1, -1, -1)]
    hf_tokenizer = HFTokenizer(models.Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        hf_tokenizer.normalizer = normalizers.Precompiled(charsmap)
    hf_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    hf_tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # Control pieces (<pad>, </s>), <unk> and the sentinels are special, as transformers marks them: whole tokens
    # in text, and what their names say (lmkit.tokenizers.wrapper.infer_roles reads pad, eos and unk from them).
    special = [piece.piece for piece in proto.pieces if piece.type in (CONTROL, UNKNOWN)]
    special += [f"<extra_id_{i}>" for i in range(extra_ids - 1, -1, -1)]
    hf_tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in special])
    hf_tokenizer.add_tokens([AddedToken(piece.piece, normalized=False) for piece in proto.pieces
                             if piece.type == USER_DEFINED])
    if template != "none":
        apply_template(hf_tokenizer, template, "", template)
    return Tokenizer(hf_tokenizer, "unigram", infer_roles(hf_tokenizer, "unigram"))
