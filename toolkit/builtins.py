"""The components that belong to no single paper: tokenizers, objectives, decoding strategies,
optimizers, schedules, task recipes, and the runtimes of the three export architectures.

Registered through the `lmkit` entry-point group like any other plugin (entry point `core`).
"""
from .hookspecs import hookimpl


@hookimpl
def register_tokenizers(register):
    register("bytelevel-bpe", "lmkit.tokenizers.training:ByteLevelBPE",
             options="lmkit.tokenizers.options:ByteLevelBPEOptions",
             summary="byte-level BPE, no unknown tokens (GPT-2, RoBERTa)")
    register("bpe", "lmkit.tokenizers.training:WordBPE",
             options="lmkit.tokenizers.options:WordBPEOptions",
             summary="BPE with end-of-word markers (GPT)")
    register("wordpiece", "lmkit.tokenizers.training:WordPiece",
             options="lmkit.tokenizers.options:WordPieceOptions",
             summary="WordPiece with ## continuations (BERT)")
    register("unigram", "lmkit.tokenizers.training:Unigram",
             options="lmkit.tokenizers.options:UnigramOptions",
             summary="SentencePiece-style Unigram LM (T5, ALBERT)")
    register("char", "lmkit.tokenizers.training:Character",
             options="lmkit.tokenizers.options:CharacterOptions",
             summary="one token per character")
    register("word", "lmkit.tokenizers.training:Word", options="lmkit.tokenizers.options:WordOptions",
             summary="whole words split at whitespace, the rest <unk> (ELMo's output vocabulary)")


@hookimpl
def register_objectives(register):
    register("causal-lm", "lmkit.objectives.causal_lm:CausalLM",
             options="lmkit.objectives.options:CausalLMOptions",
             summary="next-token cross-entropy (GPT family, LSTM LMs)")
    register("seq2seq", "lmkit.objectives.seq2seq:Seq2SeqLM", options="lmkit.objectives.options:Seq2SeqOptions",
             summary="target cross-entropy given the source, teacher forcing (Seq2Seq, NMT, T5)")
    register("sequence-head", "lmkit.objectives.heads:SequenceHead",
             options="lmkit.objectives.options:SequenceHeadOptions",
             summary="a linear task head on sequence features: classification, similarity, regression, "
                     "multiple choice (lmkit finetune)")
    register("token-head", "lmkit.objectives.heads:TokenHead", options="lmkit.objectives.options:TokenHeadOptions",
             summary="a tag per token: NER, POS, chunking (lmkit finetune)")
    register("span-head", "lmkit.objectives.heads:SpanHead", options="lmkit.objectives.options:SpanHeadOptions",
             summary="answer start and end per token: extractive QA, SQuAD (lmkit finetune)")


@hookimpl
def register_decoding_strategies(register):
    register("greedy", "lmkit.decoding.greedy:Greedy", options="lmkit.decoding.options:GreedyOptions",
             summary="the most likely next token at every step")
    register("beam", "lmkit.decoding.beam:BeamSearch", options="lmkit.decoding.options:BeamSearchOptions",
             summary="beam search with transformers' hypothesis bookkeeping and length penalty")
    register("sample", "lmkit.decoding.sampling:Sampling", options="lmkit.decoding.options:SamplingOptions",
             summary="sampling with temperature, top-k and top-p (nucleus)")


@hookimpl
def register_optimizers(register):
    register("adamw", "lmkit.training.schedule:AdamW", options="lmkit.training.schedule:AdamWOptions",
             summary="AdamW, decay on matrices and embeddings only (--beta1, --beta2, --weight-decay)")


@hookimpl
def register_schedules(register):
    register("cosine", "lmkit.training.schedule:Cosine", options="lmkit.training.schedule:CosineOptions",
             summary="linear warmup, then cosine decay to --lr x --min-lr-ratio (GPT-3 §B)")


@hookimpl
def register_task_recipes(register):
    register("encoder", "lmkit.tasks.recipes:EncoderRecipe",
             summary="the tokenizer's pair template ([CLS] a [SEP] b [SEP]), features from the pooled output (BERT)")
    register("decoder", "lmkit.tasks.recipes:DecoderRecipe",
             summary="GPT's start/delimiter/extract markers, features at the extract token, auxiliary LM loss")


@hookimpl
def register_export_runtimes(register):
    register("decoder-only", "lmkit.exports.decoder_runtime:DecoderOnlyRuntime",
             summary="one graph, token ids and a cache in, logits and the cache out (GPT, LSTM LMs)")
    register("encoder-only", "lmkit.exports.encoder_runtime:EncoderRuntime",
             summary="one graph, token ids and a mask in, token states and a pooled vector out (BERT family)")
    register("encoder-decoder", "lmkit.exports.seq2seq_runtime:EncoderDecoderRuntime",
             summary="an encoder graph and a decoder-step graph, wired as the manifest's encoder_decoder table says "
                     "(Seq2Seq, NMT, T5)")
