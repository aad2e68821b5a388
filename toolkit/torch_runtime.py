"""The PyTorch runtime of lmkit.opening: a model directory's ComposedModel behind lmkit.contract.ModelRuntime.

Generation goes through TorchBackend (decoder-only) or Seq2SeqBackend (encoder-decoder), features
through the feature stack's features(); everything crosses as numpy arrays, as it does from an
export's runtime, so OpenedModel's decoding and embedding code is the same for both.
"""
from __future__ import annotations

import numpy as np

from .errors import ArtifactError, LmkitError, require_torch

torch = require_torch("running a model directory")


class TorchRuntime:
    """A ComposedModel on `device`, in eval mode: kind, max_positions, backend(), features()."""

    def __init__(self, model, device, directory: str, source_pad_id: int = 0):
        self.model, self.device, self.directory = model, torch.device(device), directory
        self.kind = model.kind
        self.source_pad_id = source_pad_id
        # An encoder-decoder's limit is its source's; a decoder's its context; an encoder's its input's.
        self.max_positions = model.feature_stack.max_positions

    def backend(self, max_new_tokens: int | None = None, prefix=None):
        """TorchBackend (its cache sized for max_new_tokens more, started from `prefix`, a lmkit.prefix.CachePrefix,
        when given), or Seq2SeqBackend for an encoder-decoder (its decoder's self-attention cache started from it)."""
        if self.kind == "encoder":
            raise ArtifactError(f"{self.directory} has no decoder to generate with (it is an encoder-only model)")
        if self.kind == "encoder-decoder":
            from .decoding.seq2seq_backend import Seq2SeqBackend

            return Seq2SeqBackend(self.model, self.device, pad_id=self.source_pad_id, prefix=prefix)
        from .decoding.torch_backend import TorchBackend

        if max_new_tokens is None:
            raise LmkitError("a PyTorch decoder's backend sizes its cache: give max_new_tokens")
        return TorchBackend(self.model.decoder, max_new_tokens, device=self.device, prefix=prefix)

    @torch.no_grad()
    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids=None,
                 **options) -> dict[str, np.ndarray | None]:
        """last_hidden_state (B, T, D) and pooler_output (B, D) or None of the feature stack, on the host.

        options that are arrays are per-token inputs (lmkit.token_inputs), moved to the device beside the ids."""
        ids = torch.from_numpy(input_ids).to(self.device)
        mask = torch.from_numpy(attention_mask).to(self.device)
        options = {name: torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
                   if isinstance(value, np.ndarray) else value for name, value in options.items()}
        features = self.model.embed(ids, mask, **options)
        pooled = features.pooler_output
        return {"last_hidden_state": features.last_hidden_state.float().cpu().numpy(),
                "pooler_output": None if pooled is None else pooled.float().cpu().numpy()}


def open_model_directory(directory: str, device: str = "auto"):
    """The OpenedModel of a model directory, its model on `device` (auto: CUDA when torch has it)."""
    from .model import load_model, load_target_tokenizer
    from .nn import decoding_layout
    from .opening import OpenedModel, generation_settings
    from .parallel import source_pad_id
    from .training.distributed import resolve_device

    resolved = resolve_device(device)
    model, tokenizer, config = load_model(directory, device=str(resolved))
    # An opened model runs inference (generate, embed, eval, serve): its linear weights get the memory
    # order in which the CPU's kernels read them fastest at a few rows (lmkit.nn.layout).
    decoding_layout(model)
    target_tokenizer = load_target_tokenizer(directory) if model.kind == "encoder-decoder" else None
    start, suffix = None, []
    if model.kind == "encoder-decoder" and (target_tokenizer or tokenizer) is not None:
        start = model.decoder.decoder_start_token_id(target_tokenizer or tokenizer)
    if model.kind == "encoder-decoder" and tokenizer is not None:
        from .seq2seq import source_suffix_ids

        suffix = source_suffix_ids(model.encoder, tokenizer)
    runtime = TorchRuntime(model, resolved, directory, source_pad_id(tokenizer) if tokenizer is not None else 0)
    opened = OpenedModel(directory, runtime, tokenizer=tokenizer, target_tokenizer=target_tokenizer,
                         generation=generation_settings(config["spec"]), decoder_start=start, model=model,
                         decoder_type=(config["spec"].get("decoder") or {}).get("type"),
                         token_inputs=None if tokenizer is None else model.feature_stack.token_inputs(tokenizer),
                         source_suffix=suffix, spec=config["spec"])
    return opened
