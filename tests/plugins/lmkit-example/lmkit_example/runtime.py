"""The export runtime of "last-token" graphs (lmkit.contract.ExportRuntime), torch-free like lmkit's own.

Its Backend feeds each row's last token and nothing else: a bigram's next token depends on no more.
"""
import numpy as np

from lmkit.errors import LmkitError


class LastTokenRuntime:
    kind = "decoder"
    max_positions = None

    def __init__(self, export):
        self.export = export
        self.session = export.session("model")

    def backend(self, max_new_tokens=None):
        return LastTokenBackend(self.session)

    def features(self, input_ids, attention_mask, token_type_ids=None):
        raise LmkitError(f"{self.export.directory} is a last-token export: it generates, it does not embed")


class LastTokenBackend:
    max_length = None

    def __init__(self, session):
        self.session = session

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.step(input_ids[:, -1])  # left padding: the last column is every row's last real token

    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.prefill(input_ids, attention_mask)  # no state: the new rows need nothing of the others'

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        (logits,) = self.session.run(["logits"], {"input_ids": np.asarray(tokens, dtype=np.int64)[:, None]})
        return np.array(logits[:, -1], dtype=np.float32)
