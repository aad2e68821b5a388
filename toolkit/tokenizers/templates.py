"""What a tokenizer adds around one text and around a pair: the post-processing template.

A template is an option of every trainable kind (`template`), not a property of the kind: the
same WordPiece vocabulary serves BERT (`[CLS] $A [SEP]`) and a T5-style model (`$A </s>`). The
presets are the ones the families lmkit covers use; any other is written in `tokenizers`'
TemplateProcessing syntax (`$A`, `$B`, a `:1` suffix for segment id 1), as `template` (one
text) and `template_pair` (two).
"""
from __future__ import annotations

import re

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

from ..errors import SpecError, one_of

# name -> (one text, two texts). RoBERTa's goes through RobertaProcessing so that byte-level
# offsets are kept as GPT-2's tokenizer.json keeps them; the ids are those of the template shown.
PRESETS = {
    "bert": ("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
    "roberta": ("<s> $A </s>", "<s> $A </s> </s> $B </s>"),
    "t5": ("$A </s>", "$A </s> $B </s>"),
    "none": ("$A", "$A $B:1"),
}
AUTO = "auto"  # the kind's family preset when the vocabulary has its tokens, else none
TEMPLATE_NAMES = (AUTO, *PRESETS)


def check_template(template: str, pair: str) -> None:
    """ValueError (shown by build_options with the kind's name) unless the two fields make a template."""
    if not isinstance(template, str) or not template.strip():
        raise ValueError(f"template must be one of {one_of(TEMPLATE_NAMES)} or a template such as "
                         "'[CLS] $A [SEP]'")
    custom = template not in TEMPLATE_NAMES
    if custom and "$A" not in template.split() and not any(p.startswith("$A:") for p in template.split()):
        raise ValueError(f"template {template!r} is neither a preset ({one_of(TEMPLATE_NAMES)}) nor a template "
                         "with $A for the text, such as '[CLS] $A [SEP]'")
    if pair and not custom:
        raise ValueError(f"template_pair is for a custom template; the preset {template!r} has its own pair form")
    if custom and not pair:
        raise ValueError(f"template {template!r} is custom: give template_pair too, the form for two texts "
                         "with $A and $B, such as '[CLS] $A [SEP] $B:1 [SEP]:1'")
    if pair and not {"$A", "$B"} <= {p.split(":")[0] for p in pair.split()}:
        raise ValueError(f"template_pair {pair!r} must name both texts, $A and $B")


def special_tokens_of(single: str, pair: str) -> list[str]:
    """The tokens a template adds, in order of first appearance (not $A, $B)."""
    tokens = []
    for piece in (single + " " + pair).split():
        token = piece.rsplit(":", 1)[0] if re.search(r":\d+$", piece) else piece
        if not token.startswith("$") and token not in tokens:
            tokens.append(token)
    return tokens


def apply_template(hf_tokenizer: HFTokenizer, template: str, pair: str, family: str) -> None:
    """Set hf_tokenizer's post-processor from a template option (`family`: the preset `auto` means).

    Raises SpecError when a preset or custom template names a token the vocabulary lacks; `auto`
    then falls back to none, as a GPT-2 style byte-level BPE without <s> and </s> adds nothing.
    """
    name = family if template == AUTO else template
    single, pair = PRESETS[name] if name in PRESETS else (template, pair)
    tokens = special_tokens_of(single, pair)
    missing = [token for token in tokens if hf_tokenizer.token_to_id(token) is None]
    if missing:
        if template == AUTO:
            name, single, pair, tokens = "none", *PRESETS["none"], []
        else:
            raise SpecError(f"template {template!r} adds {', '.join(missing)}, which special_tokens lacks; add "
                            "them to special_tokens or choose another template")
    if name == "roberta":
        cls_id, sep_id = hf_tokenizer.token_to_id("<s>"), hf_tokenizer.token_to_id("</s>")
        hf_tokenizer.post_processor = processors.RobertaProcessing(
            ("</s>", sep_id), ("<s>", cls_id), trim_offsets=False, add_prefix_space=False)
        return
    if name == "none":
        return  # the kind's own post-processor (byte-level offsets) or none
    hf_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(token, hf_tokenizer.token_to_id(token)) for token in tokens])
