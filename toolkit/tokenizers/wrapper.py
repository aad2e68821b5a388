"""The Tokenizer wrapper: a Hugging Face `tokenizers.Tokenizer` with its lmkit kind and special-token roles."""
from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer as HFTokenizer

from ..artifacts import TOKENIZER, atomic_write, atomic_write_json
from ..errors import ArtifactError, did_you_mean

TOKENIZER_CONFIG = "tokenizer_config.json"
ROLES = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")

# The special-token names of the families lmkit covers, by the role each plays; when a tokenizer
# does not say which token plays which role, the first of these that it has gets the role.
KNOWN_ROLE_TOKENS = {
    "bos": ("<s>",),
    "eos": ("</s>", "<|endoftext|>"),
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
    "cls": ("[CLS]",),
    "sep": ("[SEP]",),
    "mask": ("<mask>", "[MASK]"),
}



class Tokenizer:
    """A Hugging Face `tokenizers.Tokenizer`, with its lmkit kind and its special tokens' roles.

    encode() gives one list of ids per text, never padded or cut: many tokenizer.json files are
    saved with padding and truncation switched on (to 128 or 512 tokens, say), and obeying them
    would attend to pads and cut texts whatever lmkit's --max-length or --truncate says. The
    wrapper switches both off on the Hugging Face tokenizer it is given; lmkit's callers pad
    (with pad_id, masked) and cut (to the model's positions) by their own rules.
    reverse: the ids of each text come out last token first, and decode() reads them back in that
    order, so a language model trained through this tokenizer reads text right to left (a backward
    LM: ULMFiT §3.4, ELMo's backward direction). Recorded in tokenizer_config.json ("reverse"), so a
    model directory or export made with it reverses wherever it tokenizes. `forward()` is the same
    tokenizer without the reversal. Raises ValueError for an unknown role or a role token the
    vocabulary lacks.
    """

    def __init__(self, hf_tokenizer: HFTokenizer, kind: str, special_tokens: dict[str, str], reverse: bool = False):
        for role, token in special_tokens.items():
            if role not in ROLES:
                raise ValueError(f"unknown special-token role '{role}'{did_you_mean(role, ROLES)}; "
                                 f"roles: {', '.join(ROLES)}")
            if not isinstance(token, str) or hf_tokenizer.token_to_id(token) is None:
                raise ValueError(f"the {role} token {token!r} is not in the vocabulary")
        hf_tokenizer.no_padding()
        hf_tokenizer.no_truncation()
        self.hf_tokenizer = hf_tokenizer
        self.kind = kind
        self._special_tokens = {role: special_tokens[role] for role in ROLES if role in special_tokens}
        self.reverse = bool(reverse)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}{', reverse=True' if self.reverse else ''})"

    def forward(self) -> Tokenizer:
        """This tokenizer reading left to right (itself when it does not reverse)."""
        return Tokenizer(self.hf_tokenizer, self.kind, self._special_tokens) if self.reverse else self

    def reversed(self) -> Tokenizer:
        """This tokenizer reading right to left (see the class docstring)."""
        return Tokenizer(self.hf_tokenizer, self.kind, self._special_tokens, reverse=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.hf_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids[::-1] if self.reverse else ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
        encodings = self.hf_tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [encoding.ids[::-1] if self.reverse else encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = list(ids)
        # `tokenizers` skips special tokens unless told otherwise; lmkit shows them unless told.
        return self.hf_tokenizer.decode(ids[::-1] if self.reverse else ids, skip_special_tokens=skip_special_tokens)

    def continuation(self, prompt: Iterable[int], ids: Iterable[int]) -> str:
        """The text `ids` add after `prompt`: decode(prompt + ids) less decode(prompt)'s text. Decoded alone, ids
        lose what their first token owes to the one before: the space after a word-end BPE's `</w>` (GPT,
        ULMFiT's "the red" + "the" read "the redthe"), a WordPiece "##" join, a Metaspace word start.
        Byte-level BPE decodes the same either way."""
        prompt, ids = list(prompt), list(ids)
        head, whole = self.decode(prompt), self.decode(prompt + ids)
        return whole[len(head):] if whole.startswith(head) else self.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self.hf_tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf_tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf_tokenizer.id_to_token(token_id)

    @property
    def special_tokens(self) -> dict[str, str]:
        """role -> token string, for the roles this tokenizer has."""
        return dict(self._special_tokens)

    def special_ids(self) -> set[int]:
        """The ids of every token registered as special, whatever its role (GLM's blanks, T5's sentinels)."""
        return {i for i, token in self.hf_tokenizer.get_added_tokens_decoder().items() if token.special}

    def _role_id(self, role: str) -> int | None:
        token = self._special_tokens.get(role)
        return None if token is None else self.hf_tokenizer.token_to_id(token)

    @property
    def bos_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def pad_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_id(self) -> int | None:
        return self._role_id("unk")

    @property
    def cls_id(self) -> int | None:
        return self._role_id("cls")

    @property
    def sep_id(self) -> int | None:
        return self._role_id("sep")

    @property
    def mask_id(self) -> int | None:
        return self._role_id("mask")

    def to_config(self) -> dict:
        """What a model spec records about its tokenizer."""
        return {"type": self.kind, "vocab_size": self.vocab_size, "special_tokens": self.special_tokens,
                **({"reverse": True} if self.reverse else {})}

    def save(self, directory: str) -> None:
        """Write tokenizer.json and tokenizer_config.json into `directory`, each atomically."""
        directory = os.fspath(directory)
        if os.path.isfile(directory):
            raise ArtifactError(f"{directory} is a file; give a directory to save the tokenizer in")
        os.makedirs(directory, exist_ok=True)
        with atomic_write(os.path.join(directory, TOKENIZER)) as out:
            out.write(self.hf_tokenizer.to_str(pretty=True))
        # The lmkit keys come first; the `*_token` keys and `tokenizer_class` are what Hugging Face
        # readers (AutoTokenizer) look for, so they open the directory too.
        config = {"lmkit_type": self.kind, "special_tokens": self.special_tokens,
                  "tokenizer_class": "PreTrainedTokenizerFast"}
        if self.reverse:
            config["reverse"] = True
        config.update({f"{role}_token": token for role, token in self._special_tokens.items()})
        atomic_write_json(os.path.join(directory, TOKENIZER_CONFIG), config)


def infer_roles(hf_tokenizer: HFTokenizer, kind: str) -> dict[str, str]:
    """role -> token for the special tokens whose names say what they are for."""
    # Only tokens registered as special count: a learned merge can spell "</s>" in HTML-heavy text.
    special = {token.content for token in hf_tokenizer.get_added_tokens_decoder().values() if token.special}
    roles = {}
    for role, names in KNOWN_ROLE_TOKENS.items():
        found = next((name for name in names if name in special), None)
        if found is not None:
            roles[role] = found
    if "cls" not in roles and roles.get("bos") == "<s>" and roles.get("eos") == "</s>":
        roles["cls"], roles["sep"] = "<s>", "</s>"  # RoBERTa and BART: <s> A </s></s> B </s>
    if kind == "bytelevel-bpe" and roles.get("eos") == "<|endoftext|>":
        # GPT-2 has this one special token: it starts, ends and pads every sequence.
        roles.setdefault("bos", "<|endoftext|>")
        roles.setdefault("pad", "<|endoftext|>")
    return roles
