"""The extension points of lmkit, one per kind of part a model is composed of.

Every hook is a collector: it receives a `register` callable and calls it once per thing it adds.
Registering must stay cheap and must not import torch: a component is named by an import string
("package.module:Attribute") that lmkit imports only when it builds the component.

    register(name, target, *, options=None, summary="")

`options` is the dataclass that declares the component's options (its schema: field names, types,
defaults); a spec is validated against it before anything is built. Presets register a spec
dictionary instead of a target. A hook may take fewer arguments than its spec, so specs can grow.

What each registered target must be (its protocol) is written in `lmkit.contract`, beside this page.
"""
import pluggy

hookspec = pluggy.HookspecMarker("lmkit")
hookimpl = pluggy.HookimplMarker("lmkit")


@hookspec
def register_tokenizers(register):
    """Tokenizer kinds that can be trained and loaded (byte-level BPE, WordPiece, Unigram, ...)."""


@hookspec
def register_encoders(register):
    """Bidirectional stacks that turn token ids into hidden states (BERT, BiLSTM, ...)."""


@hookspec
def register_decoders(register):
    """Autoregressive stacks with a key/value or recurrent cache (GPT, LSTM decoders, ...)."""


@hookspec
def register_objectives(register):
    """Training losses with the batch transform they need (causal LM, masked LM, ...)."""


@hookspec
def register_decoding_strategies(register):
    """Search over a backend's next-token logits (greedy, beam search, sampling)."""


@hookspec
def register_presets(register):
    """Named compositions: register("gpt2-small", {"decoder": {...}, ...}, summary=...)."""


@hookspec
def register_exporters(register):
    """How an encoder or decoder becomes ONNX graphs: names, dynamic axes, cache layout."""


@hookspec
def register_export_runtimes(register):
    """onnxruntime backends by export architecture (decoder-only, encoder-only, encoder-decoder)."""


@hookspec
def register_importers(register):
    """Hugging Face checkpoint converters, by config.json model_type: register("gpt2", "pkg.hf:import_gpt2")."""


@hookspec
def register_hf_exporters(register):
    """Converters to a transformers checkpoint, by stack: register("decoder.gpt2", "pkg.hf:export_gpt2")."""


@hookspec
def register_optimizers(register):
    """Optimizers that `--optimizer NAME` picks (AdamW, SGD, ...), with their options."""


@hookspec
def register_schedules(register):
    """Learning-rate schedules that `--schedule NAME` picks (cosine, halving, slanted triangular, ...)."""


@hookspec
def register_task_recipes(register):
    """How a kind of stack reads labelled examples for `lmkit finetune` (GPT's markers, BERT's [CLS])."""


@hookspec
def register_generators(register):
    """How a decoder family generates from prompts in its own way, under the decoder type it serves (GLM fills blanks)."""


@hookspec
def register_training_recipes(register):
    """Named training settings `lmkit train --recipe NAME` starts from (ULMFiT's rates and schedule)."""


@hookspec
def register_commands(cli):
    """Extra `lmkit` subcommands, added to the click group `cli`; import torch inside them."""
