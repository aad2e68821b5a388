"""Opening tokenizers: lmkit's own directories, and the files Hugging Face checkpoints ship.

A foreign tokenizer carries settings of its own. Each is honoured where it means what lmkit means,
or switched off deliberately, so that every command and the export runtime read text alike:

    padding, truncation      switched off (Tokenizer does it): lmkit pads with a mask and cuts
                             by --max-length / --truncate and the model's positions
    post-processor           kept: it is the checkpoint's [CLS]/<s> template
    do_lower_case, strip_accents, tokenize_chinese_chars
                             honoured, as transformers' BertTokenizer does: they set BERT's
                             normalizer, over tokenizer.json's own when both are given
    add_prefix_space         honoured for a byte-level BPE (RoBERTa, GPT-2); refused elsewhere
    model_max_length         not applied, as in transformers, which cuts to it only when asked
                             to truncate; lmkit cuts to the model's positions
    *_token, additional_special_tokens
                             the special tokens' roles, and tokens never split
"""
from __future__ import annotations

import json
import os

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers

from ..artifacts import TOKENIZER
from ..errors import ArtifactError, one_of
from .templates import apply_template
from .training import EACH_CHARACTER, set_bert_parts, set_byte_level_parts, set_word_bpe_parts
from .wrapper import KNOWN_ROLE_TOKENS, ROLES, TOKENIZER_CONFIG, Tokenizer, infer_roles

# The kinds a foreign file can be read as (a plugin's kinds are trained, not inferred from a file).
FOREIGN_KINDS = ("bytelevel-bpe", "bpe", "wordpiece", "unigram", "char")
BERT_FLAGS = {"do_lower_case": "lowercase", "strip_accents": "strip_accents",
              "tokenize_chinese_chars": "handle_chinese_chars"}


def load_tokenizer(path: str) -> Tokenizer:
    """Open a tokenizer directory (ours or Hugging Face's) or a tokenizer.json file.

    A directory may hold tokenizer.json, a GPT-2 style vocab.json + merges.txt, or a BERT vocab.txt,
    looked for in that order, with an optional tokenizer_config.json beside them whose fields are
    honoured as this module's docstring lists. Raises ArtifactError, one line, for a missing or
    unreadable file or a setting lmkit cannot honour.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ArtifactError(f"{path} does not exist; give a tokenizer directory or a tokenizer.json file "
                            "(make one with lmkit tokenizer train)")
    if os.path.isfile(path):
        beside = os.path.join(os.path.dirname(path), TOKENIZER_CONFIG)
        # A config beside some other .json file need not describe it; beside tokenizer.json it does.
        config_path = beside if os.path.basename(path) == TOKENIZER and os.path.isfile(beside) else None
        return _load_tokenizer_json(path, config_path)
    config_path = os.path.join(path, TOKENIZER_CONFIG)
    config_path = config_path if os.path.isfile(config_path) else None
    tokenizer_json = os.path.join(path, TOKENIZER)
    vocab_json, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.isfile(tokenizer_json):
        return _load_tokenizer_json(tokenizer_json, config_path)
    if os.path.isfile(vocab_json) and os.path.isfile(merges):
        return _load_gpt2_files(vocab_json, merges, config_path)
    if os.path.isfile(vocab_txt):
        return _load_bert_vocab(vocab_txt, config_path)
    raise ArtifactError(f"{path} has no tokenizer files (looked for tokenizer.json, vocab.json with "
                        "merges.txt, and vocab.txt); train one with lmkit tokenizer train or point at "
                        "another directory")


def _read_config(config_path: str | None) -> dict:
    if config_path is None:
        return {}
    try:
        with open(config_path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{config_path} cannot be read as JSON ({_short(error)}); fix it or delete "
                            "it to use the tokenizer's own settings") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{config_path} is not a JSON object; fix it or delete it to use the "
                            "tokenizer's own settings")
    for key in (*BERT_FLAGS, "add_prefix_space"):
        value = config.get(key)
        # strip_accents null is BertTokenizer's default: follow do_lower_case.
        if value is not None and not isinstance(value, bool):
            raise ArtifactError(f"{config_path}: {key} is {value!r}, not true or false; fix it or delete the key")
    return config


def _load_tokenizer_json(path: str, config_path: str | None) -> Tokenizer:
    config = _read_config(config_path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        description = json.loads(text)
        hf_tokenizer = HFTokenizer.from_str(text)
    except Exception as error:  # `tokenizers` raises plain Exception for a file it cannot parse
        raise ArtifactError(f"{path} is not a valid tokenizer file: {_short(error)}; retrain it with "
                            "lmkit tokenizer train or point at another file") from None
    if "lmkit_type" in config:
        return _with_recorded_roles(hf_tokenizer, config, config_path)
    kind = _infer_kind(hf_tokenizer, description, path)
    if _honour_prefix_space(description, config, config_path):
        hf_tokenizer = HFTokenizer.from_str(json.dumps(description))
    _honour_normalizer_flags(hf_tokenizer, description, config, config_path)
    _mark_special(hf_tokenizer, config)
    return Tokenizer(hf_tokenizer, kind, _roles(hf_tokenizer, kind, config))


def _honour_normalizer_flags(hf_tokenizer: HFTokenizer, description: dict, config: dict, config_path) -> None:
    """do_lower_case / strip_accents / tokenize_chinese_chars over a tokenizer.json's BertNormalizer.

    transformers' BertTokenizer rebuilds the normalizer from these flags when they differ from the
    file's, so the config wins; a file without a BertNormalizer cannot take them, and is refused.
    """
    given = {BERT_FLAGS[key]: config[key] for key in BERT_FLAGS if key in config}
    if not given:
        return
    normalizer = description.get("normalizer")
    if not (isinstance(normalizer, dict) and normalizer.get("type") == "BertNormalizer"):
        # Another normalizer (ALBERT's Sequence with Lowercase, say) cannot be rebuilt from BERT's
        # flags: flags that say what it already does are honoured as they are, others refused.
        does = {"lowercase": _mentions_type(normalizer, "Lowercase"),
                "strip_accents": _mentions_type(normalizer, "StripAccents"), "handle_chinese_chars": False}
        differ = [key for key, flag in BERT_FLAGS.items() if key in config and config[key] is not None
                  and config[key] != does[flag]]
        if differ:
            raise ArtifactError(f"{config_path} sets {', '.join(f'{k}={config[k]}' for k in differ).lower()}, which "
                                "the normalizer in its tokenizer.json does not do and only BERT's normalizer "
                                "takes; delete them from the config or fix the normalizer")
        return
    state = {key: normalizer.get(key) for key in ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase")}
    state.update(given)
    hf_tokenizer.normalizer = normalizers.BertNormalizer(**state)


def _honour_prefix_space(description: dict, config: dict, config_path) -> bool:
    """add_prefix_space over a tokenizer.json's ByteLevel or Metaspace parts (in a Sequence too), as
    RobertaTokenizer and AlbertTokenizer read it; True when `description` was changed to follow it."""
    if config.get("add_prefix_space") is None:
        return False
    wanted = config["add_prefix_space"]
    parts = [node for key in ("pre_tokenizer", "decoder", "post_processor")
             for node in _nodes(description.get(key)) if node.get("type") in ("ByteLevel", "Metaspace")]
    if not any(node in parts for node in _nodes(description.get("pre_tokenizer"))):
        if not wanted:
            return False  # nothing adds a space, as asked
        raise ArtifactError(f"{config_path} sets add_prefix_space, which only a byte-level or Metaspace "
                            "pre-tokenizer takes; delete it from the config or fix tokenizer.json")
    changed = False
    for node in parts:
        key, value = (("add_prefix_space", wanted) if node["type"] == "ByteLevel"
                      else ("prepend_scheme", "always" if wanted else "never"))
        changed |= node.get(key) != value
        node[key] = value
    return changed


def _nodes(node) -> list[dict]:
    """A serialized component and the ones inside it (a Sequence's)."""
    if isinstance(node, dict):
        inner = [n for value in node.values() if isinstance(value, list) for item in value for n in _nodes(item)]
        return [node, *inner]
    return []


def _load_gpt2_files(vocab_json: str, merges: str, config_path: str | None) -> Tokenizer:
    """vocab.json + merges.txt: GPT-2's byte-level BPE, or GPT's BPE when its merges end words in `</w>`."""
    config = _read_config(config_path)
    word_level = _merges_mark_word_ends(merges)
    unk = _configured_roles(config).get("unk", "<unk>")
    try:
        if word_level:
            model = models.BPE.from_file(vocab_json, merges, unk_token=unk, end_of_word_suffix="</w>")
        else:
            model = models.BPE.from_file(vocab_json, merges)
        hf_tokenizer = HFTokenizer(model)
    except Exception as error:
        raise ArtifactError(f"{vocab_json} and {merges} are not a valid BPE vocabulary: {_short(error)}; "
                            "point at another tokenizer") from None
    if word_level:
        if config.get("add_prefix_space"):
            raise ArtifactError(f"{config_path} sets add_prefix_space, which GPT's word-level BPE does not take; "
                                "delete it from the config")
        if config.get("strip_accents") is not None or config.get("tokenize_chinese_chars") is not None:
            raise ArtifactError(f"{config_path} sets strip_accents or tokenize_chinese_chars, which GPT's BPE "
                                "tokenizer does not take; delete them from the config")
        set_word_bpe_parts(hf_tokenizer, lowercase=config.get("do_lower_case", True))
        kind = "bpe"
    else:
        if any(config.get(key) is not None for key in ("strip_accents", "tokenize_chinese_chars")) \
                or config.get("do_lower_case"):
            raise ArtifactError(f"{config_path} sets {', '.join(k for k in BERT_FLAGS if config.get(k) is not None)}, "
                                "which a byte-level BPE (GPT-2, RoBERTa) does not take; delete them from the config")
        set_byte_level_parts(hf_tokenizer, add_prefix_space=bool(config.get("add_prefix_space", False)))
        kind = "bytelevel-bpe"
    _mark_special(hf_tokenizer, config)
    if not word_level:
        # RoBERTa's vocab.json has <s> and </s>, GPT-2's neither (auto: no template then).
        _apply_configured_template(hf_tokenizer, config, "roberta", ("<s>", "</s>"), ("bos", "eos"))
    return Tokenizer(hf_tokenizer, kind, _roles(hf_tokenizer, kind, config))


def _apply_configured_template(hf_tokenizer, config: dict, family: str, tokens: tuple[str, str],
                               roles: tuple[str, str]) -> None:
    """The family's template, with the config's own names for its two tokens (cls/sep, or bos/eos)."""
    configured = _configured_roles(config)
    first, last = (configured.get(role, token) for role, token in zip(roles, tokens))
    if (first, last) == tokens:
        apply_template(hf_tokenizer, "auto", "", family)
    elif hf_tokenizer.token_to_id(first) is not None and hf_tokenizer.token_to_id(last) is not None:
        pair = f"{first} $A {last} $B:1 {last}:1" if family == "bert" else f"{first} $A {last} {last} $B {last}"
        apply_template(hf_tokenizer, f"{first} $A {last}", pair, family)


def _merges_mark_word_ends(merges: str, lines: int = 2000) -> bool:
    """Whether a merges.txt is GPT's (pieces that end a word carry `</w>`) rather than GPT-2's."""
    try:
        with open(merges, encoding="utf-8") as handle:
            return any("</w>" in line for _, line in zip(range(lines), handle))
    except (OSError, UnicodeDecodeError):
        return False  # reported by from_file, with the file's name


def _load_bert_vocab(vocab_txt: str, config_path: str | None) -> Tokenizer:
    """vocab.txt: BERT's WordPiece, its normalizer from the config's flags as BertTokenizer reads them."""
    config = _read_config(config_path)
    unk = _configured_roles(config).get("unk", "[UNK]")
    try:
        hf_tokenizer = HFTokenizer(models.WordPiece.from_file(vocab_txt, unk_token=unk))
    except Exception as error:
        raise ArtifactError(f"{vocab_txt} is not a valid WordPiece vocabulary: {_short(error)}; "
                            "point at another tokenizer") from None
    if hf_tokenizer.token_to_id(unk) is None:
        raise ArtifactError(f"{vocab_txt} has no {unk} token, which a BERT vocabulary needs; add it as "
                            "a line or point at another tokenizer")
    if config.get("add_prefix_space"):
        raise ArtifactError(f"{config_path} sets add_prefix_space, which BERT's WordPiece does not take; "
                            "delete it from the config")
    set_bert_parts(hf_tokenizer, lowercase=config.get("do_lower_case", True),
                   strip_accents=config.get("strip_accents"),
                   handle_chinese_chars=config.get("tokenize_chinese_chars", True))
    _mark_special(hf_tokenizer, config)
    _apply_configured_template(hf_tokenizer, config, "bert", ("[CLS]", "[SEP]"), ("cls", "sep"))
    return Tokenizer(hf_tokenizer, "wordpiece", _roles(hf_tokenizer, "wordpiece", config))


def _mark_special(hf_tokenizer: HFTokenizer, config: dict) -> None:
    """Make the vocabulary's special tokens whole tokens, as Hugging Face does when it loads these files."""
    names = {name for names in KNOWN_ROLE_TOKENS.values() for name in names}
    names |= set(_configured_roles(config).values())
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    names |= {token.get("content") if isinstance(token, dict) else token for token in extra
              if isinstance(token, (str, dict))}
    present = [name for name in names if isinstance(name, str) and hf_tokenizer.token_to_id(name) is not None]
    hf_tokenizer.add_special_tokens(sorted(present, key=hf_tokenizer.token_to_id))


def _with_recorded_roles(hf_tokenizer: HFTokenizer, config: dict, config_path: str) -> Tokenizer:
    kind, roles = config["lmkit_type"], config.get("special_tokens", {})
    if not isinstance(kind, str) or not kind:
        raise ArtifactError(f"{config_path}: lmkit_type {kind!r} is not a tokenizer kind; fix it or delete "
                            "the file")
    if not isinstance(roles, dict):
        raise ArtifactError(f"{config_path}: special_tokens is not a table of role to token; fix it or "
                            "delete the file")
    reverse = config.get("reverse", False)
    if not isinstance(reverse, bool):
        raise ArtifactError(f"{config_path}: reverse is {reverse!r}, not true or false; fix it or delete the key")
    try:
        return Tokenizer(hf_tokenizer, kind, roles, reverse=reverse)
    except ValueError as error:
        raise ArtifactError(f"{config_path}: {error}; fix it or delete the file") from None


def _configured_roles(config: dict) -> dict[str, str]:
    """role -> token from Hugging Face's `bos_token`, `eos_token`, ... keys."""
    roles = {}
    for role in ROLES:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken, as transformers writes it
            value = value.get("content")
        if isinstance(value, str) and value:
            roles[role] = value
    return roles


def _roles(hf_tokenizer: HFTokenizer, kind: str, config: dict) -> dict[str, str]:
    """The roles the config names, filled in from the tokens' names."""
    roles = infer_roles(hf_tokenizer, kind)
    # A third-party config may name tokens its vocabulary lacks; those roles stay unset.
    roles.update({role: token for role, token in _configured_roles(config).items()
                  if hf_tokenizer.token_to_id(token) is not None})
    return roles


def _infer_kind(hf_tokenizer: HFTokenizer, description: dict, path: str) -> str:
    model = type(hf_tokenizer.model).__name__
    pre_tokenizer = description.get("pre_tokenizer")
    if model == "BPE":
        return "bytelevel-bpe" if _mentions_type(pre_tokenizer, "ByteLevel") else "bpe"
    if model in ("WordPiece", "Unigram"):
        return model.lower()
    if model == "WordLevel" and isinstance(pre_tokenizer, dict) \
            and pre_tokenizer.get("pattern") == {"Regex": EACH_CHARACTER}:
        return "char"
    raise ArtifactError(f"{path} holds a {model} tokenizer, which matches no lmkit tokenizer kind "
                        f"({one_of(FOREIGN_KINDS)}); train one with lmkit tokenizer train")


def _mentions_type(node, name: str) -> bool:
    """Whether a serialized component, or one inside it (a Sequence), has type `name`."""
    if isinstance(node, dict):
        return node.get("type") == name or any(_mentions_type(value, name) for value in node.values())
    if isinstance(node, list):
        return any(_mentions_type(value, name) for value in node)
    return False


def _short(error: BaseException) -> str:
    """The first line of an error's message, short enough for a one-line report."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 text (invalid byte at offset {error.start})"
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= 160 else text[:157] + "..."
