"""The BERT family: BERT (Devlin et al. 2019), ALBERT (Lan et al. 2020) and RoBERTa (Liu et al. 2019).

Encoders (`bert`, `albert`, `roberta`), pre-training objectives (`masked-lm`, `next-sentence`,
`sentence-order`) and presets. Only registration lives here, so loading the plugin does not import
torch; the encoders are in model.py, the objectives in objectives.py, their data in data.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    register("bert", "lmkit.plugins.bert.model:BertEncoder", options="lmkit.plugins.bert.config:BertConfig",
             summary="post-LN transformer encoder, token + segment + learned positions, tanh pooler (BERT)")
    register("albert", "lmkit.plugins.bert.model:AlbertEncoder", options="lmkit.plugins.bert.config:AlbertConfig",
             summary="BERT with a factorised embedding and cross-layer parameter sharing (ALBERT)")
    register("roberta", "lmkit.plugins.bert.model:RobertaEncoder",
             options="lmkit.plugins.bert.config:RobertaConfig",
             summary="BERT's encoder with positions from pad_token_id + 1, one segment, no pooler (RoBERTa)")


@hookimpl
def register_objectives(register):
    register("masked-lm", "lmkit.plugins.bert.objectives:MaskedLM",
             options="lmkit.plugins.bert.config:MaskedLMOptions",
             summary="masked LM, 15% / 80-10-10, whole words or n-grams, dynamic masking (BERT, RoBERTa, ALBERT)")
    register("next-sentence", "lmkit.plugins.bert.objectives:NextSentencePrediction",
             options="lmkit.plugins.bert.config:SentencePairOptions",
             summary="is B the next sentence or a random one, on the pooled [CLS] (BERT)")
    register("sentence-order", "lmkit.plugins.bert.objectives:SentenceOrderPrediction",
             options="lmkit.plugins.bert.config:SentencePairOptions",
             summary="are the two segments in order or swapped, on the pooled [CLS] (ALBERT)")


@hookimpl
def register_exporters(register):
    for encoder in ("bert", "albert", "roberta"):
        register(f"encoder.{encoder}", "lmkit.plugins.bert.export:export_plan",
                 summary="one encoder graph: hidden states, pooled output, pre-training head logits")


@hookimpl
def register_hf_exporters(register):
    register("encoder.bert", "lmkit.plugins.bert.hf:export_bert",
             summary="BertForPreTraining / BertForMaskedLM / BertModel, by the objectives")
    register("encoder.albert", "lmkit.plugins.bert.hf:export_albert",
             summary="AlbertForPreTraining / AlbertForMaskedLM / AlbertModel, by the objectives")
    register("encoder.roberta", "lmkit.plugins.bert.hf:export_roberta", summary="RobertaForMaskedLM / RobertaModel")


@hookimpl
def register_importers(register):
    register("bert", "lmkit.plugins.bert.hf:import_bert", summary="BertForPreTraining / BertModel checkpoints")
    register("albert", "lmkit.plugins.bert.hf:import_albert", summary="AlbertForPreTraining / AlbertModel checkpoints")
    register("roberta", "lmkit.plugins.bert.hf:import_roberta", summary="RobertaForMaskedLM / RobertaModel checkpoints")


def _preset(summary: str, encoder: str, tokenizer: str, objectives: list[str], **options) -> tuple[dict, str]:
    spec = {
        "tokenizer": {"type": tokenizer},
        "encoder": {"type": encoder, **options},
        # BERT and ALBERT aim 10% of their pairs at a shorter random length (short_seq_prob, BERT's
        # create_pretraining_data.py); RoBERTa always fills the sequence (§4.2).
        "objectives": [{"type": name, "weight": 1.0,
                        **({"short_seq_prob": 0.1} if name == "masked-lm" and len(objectives) > 1 else {})}
                       for name in objectives],
    }
    return spec, summary


BERT, ALBERT, ROBERTA = ["masked-lm", "next-sentence"], ["masked-lm", "sentence-order"], ["masked-lm"]
TINY = dict(n_layers=2, n_heads=4, d_model=64, d_ff=256)

PRESETS = {
    "bert-base": _preset("BERT-Base 110M: 12 layers x 768, 12 heads, 512 positions; MLM + NSP", "bert", "wordpiece",
                         BERT),
    "bert-large": _preset("BERT-Large 340M: 24 layers x 1024, 16 heads; MLM + NSP", "bert", "wordpiece", BERT,
                          d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "bert-tiny": _preset("a BERT for tests: 2 layers x 64, 4 heads, vocab 512, 128 positions; MLM + NSP",
                         "bert", "wordpiece", BERT, vocab_size=512, max_positions=128, **TINY),
    "albert-base": _preset("ALBERT-Base 12M: 12 layers x 768 sharing all parameters, E=128; MLM + SOP",
                           "albert", "unigram", ALBERT),
    "albert-large": _preset("ALBERT-Large 18M: 24 layers x 1024, 16 heads, E=128; MLM + SOP", "albert", "unigram",
                            ALBERT, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "albert-tiny": _preset("an ALBERT for tests: 2 shared layers x 64, E=32, vocab 512; MLM + SOP",
                           "albert", "unigram", ALBERT, vocab_size=512, max_positions=128, d_embed=32, **TINY),
    "roberta-base": _preset("RoBERTa-Base 125M: BERT-Base with byte-level BPE 50K; MLM only, full sentences",
                            "roberta", "bytelevel-bpe", ROBERTA),
    "roberta-large": _preset("RoBERTa-Large 355M: 24 layers x 1024, 16 heads; MLM only", "roberta",
                             "bytelevel-bpe", ROBERTA, d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "roberta-tiny": _preset("a RoBERTa for tests: 2 layers x 64, vocab 512, 128 positions; MLM only",
                            "roberta", "bytelevel-bpe", ROBERTA, vocab_size=512, max_positions=130, **TINY),
}


@hookimpl
def register_presets(register):
    for name, (spec, summary) in PRESETS.items():
        register(name, spec, summary=summary)
