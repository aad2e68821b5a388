"""The decoder-only runtime (GPT, LSTM LMs): one graph, token ids and a cache in, logits and the cache out.

OrtBackend is lmkit.decoding's Backend over that graph, as TorchBackend is over the PyTorch decoder,
so greedy, beam search and sampling are the same code on both (registered as "decoder-only").
"""
from __future__ import annotations

import copy

import numpy as np

from lmkit.decoding.common import drop_padding_columns
from lmkit.errors import LmkitError

from .encoder_runtime import single_graph
from .graphs import DECODER_ONLY, PAST, batch_axis, empty_input
from .providers import BINDING_DEVICES, HostBinding


class DecoderOnlyRuntime:
    """lmkit.contract.ExportRuntime of a decoder-only export: generation through OrtBackend."""

    kind = "decoder"
    graphs = ("model",)

    def __init__(self, export):
        self.export = export
        self.graph = single_graph(export, DECODER_ONLY, "input_ids", "logits")
        self.session = export.session("model")
        self.max_positions = export.manifest.get("dimensions", {}).get("max_length")
        # lmkit.exports.decoder_only's buffer layout; an export without the key has the concat one.
        self.buffered = export.manifest.get("dimensions", {}).get("cache_layout") == "buffer"

    def backend(self, max_new_tokens: int | None = None, io_binding: bool | None = None,
                prefix=None) -> OrtBackend:
        """A fresh OrtBackend over the session; the cache is sized by the graph, so max_new_tokens is not needed.

        prefix: a lmkit.prefix.CachePrefix the cache starts from (see OrtBackend), or None.
        """
        return OrtBackend(self.session, self.graph, self.max_positions, io_binding, prefix, self.buffered)

    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids=None) -> dict:
        raise LmkitError(f"{self.export.directory} is a {DECODER_ONLY} export, whose graph gives logits but not "
                         "features; embed with the model directory itself")


class OrtBackend:
    """The Backend of lmkit.decoding over a decoder-only export, its cache kept where the session runs.

    Each step feeds the graph's cache outputs back as its cache inputs (the keys/values grow by the
    new positions; a recurrent state would be replaced), and reordering rows for beam search is a
    take along each cache tensor's batch axis.

    io_binding: on CUDA (the default there), the cache goes from step to step through onnxruntime's
    IO binding as its own values on the GPU, and only the logits come to the host. On the CPU
    (default: off) session.run already hands its outputs over as numpy arrays without a copy and takes
    them back the same way, and measured no slower than IO binding, so the simpler path is used.

    prefix: a lmkit.prefix.CachePrefix (keys/values of P positions per layer) fed as every row's
    past at the prefill, with P columns of ones before the attention mask and the prompt's positions
    starting at P, as the PyTorch backend does; max_length is then the graph's less P. It needs the
    graph's cache to be keys/values (past_key_values.{i}.key/.value) of the prefix's geometry; a layer
    whose cache is a fixed window (GPT-3's banded layers) starts from the prefix's last positions.

    buffered: the graph has lmkit.exports.decoder_only's buffer layout: each cache input and output
    is a buffer of the whole context, (B, heads, max_length, head_dim), the first positions filled.
    On the CPU each buffer is a numpy array bound through IO binding as both the input and the output
    of its layer, so onnxruntime's fused attention writes the new positions into it and nothing of
    the past is copied; beam search reorders the filled part of the rows in place. (On another
    device, or with share_buffers=False, the buffers go from output to input as above: the operator
    then copies them.) The
    operator takes one row at a time for a prompt after a prefix, so such a batch is prefilled row
    by row, each into its own rows of the buffers.
    """

    def __init__(self, session, graph: dict, max_length: int | None, io_binding: bool | None = None,
                 prefix=None, buffered: bool = False, share_buffers: bool | None = None):
        self.session = session
        self.max_length = max_length
        self.inputs = {tensor["name"]: tensor for tensor in graph["inputs"]}
        self.cache = [(pair["input"], pair["output"]) for pair in graph["cache"]]
        self.prefix: dict[str, np.ndarray] = {}  # cache input name -> (1, nh, P, hs)
        self.prefix_length = 0
        self.buffered = buffered
        if prefix is not None:
            self._take_prefix(prefix)
        self.output_names = ["logits", *(output for _, output in self.cache)]
        self.vocab_size = next(t["shape"][-1] for t in graph["outputs"] if t["name"] == "logits")
        provider = session.get_providers()[0]
        self.device = BINDING_DEVICES.get(provider, "cpu")
        self.device_id = int(session.get_provider_options().get(provider, {}).get("device_id", 0) or 0)
        if io_binding is None:
            io_binding = self.device != "cpu"
        # One numpy buffer is each cache input and output (share_buffers None: on the CPU).
        self.shared = buffered and (self.device == "cpu" if share_buffers is None else share_buffers)
        self.binding = (HostBinding(session) if self.shared else session.io_binding() if io_binding else None)
        self.past: dict = {}  # cache input name -> numpy array, or OrtValue on self.device with IO binding
        self.attention_mask = np.zeros((0, 0), dtype=np.int64)  # (B, positions so far), 0 at padding
        # The tokens fed so far (B, positions so far), to run the rows again without the padding they
        # share once the graph's max_length is reached (see Backend.step).
        self.fed = np.zeros((0, 0), dtype=np.int64)
        self.positions = np.zeros(0, dtype=np.int64)  # (B,) or (B, K), the position of each row's next token
        self.fed_positions = np.zeros((0, 0), dtype=np.int64)  # (B, [K,] positions so far): the positions fed
        self.step_positions = np.int64(1)  # what each new token adds to the last position, (K,) for K components

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray | None = None,
                position_step: np.ndarray | None = None) -> np.ndarray:
        batch = input_ids.shape[0]
        mask = attention_mask.astype(np.int64)
        if position_ids is None:
            # As transformers does for left padding: every row's first real token is at position 0
            # (at P after a prefix).
            positions = self.prefix_length + np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        else:  # the model's own (GLM's pos1 and pos2), each new token `position_step` after the last
            positions = np.asarray(position_ids, dtype=np.int64)
        self.step_positions = np.int64(1) if position_step is None else np.asarray(position_step, dtype=np.int64)
        if self.buffered:  # zeros of the whole context, the prefix's positions first
            past = {name: self._empty(name, batch) for name, _ in self.cache}
            for name, value in self.prefix.items():
                past[name][:, :, :self.prefix_length] = value
            self.past = past if self.shared else {name: self._cache_value(value) for name, value in past.items()}
        else:
            self.past = {name: self._cache_value(np.repeat(self.prefix[name], batch, axis=0) if self.prefix
                                                 else self._empty(name, batch)) for name, _ in self.cache}
        self.attention_mask = np.zeros((batch, 0), dtype=np.int64)
        self.fed = np.zeros((batch, 0), dtype=np.int64)
        self.fed_positions = np.zeros((*positions.shape[:-1], 0), dtype=np.int64)
        return self._run(input_ids, mask, positions)

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None and self.shared:
            filled = self.prefix_length + self.attention_mask.shape[1]
            if len(rows) == len(self.attention_mask):  # the same rows, reordered: only their filled part moves
                for value in self.past.values():
                    value[:, :, :filled] = value[rows, :, :filled]
            else:  # more rows (a prompt's beams) or fewer: new buffers
                self.past = {name: np.ascontiguousarray(value[rows]) for name, value in self.past.items()}
        elif rows is not None:
            self.past = {name: self._cache_value(np.take(self._host(value), rows, axis=self._batch_axis(name)))
                         for name, value in self.past.items()}
        if rows is not None:
            self.attention_mask = self.attention_mask[rows]
            self.positions = self.positions[rows]
            self.fed = self.fed[rows]
            self.fed_positions = self.fed_positions[rows]
        batch = tokens.shape[0]
        if self.max_length is not None and self.attention_mask.shape[1] == self.max_length:
            mask = np.concatenate([self.attention_mask, np.ones((batch, 1), np.int64)], axis=1)
            first = int(mask.any(axis=0).argmax())  # the columns every row pads, dropped (see Backend.step)
            ids, mask = drop_padding_columns(np.concatenate([self.fed, tokens.reshape(batch, 1)], axis=1), mask)
            if mask.shape[1] <= self.max_length:
                positions = np.concatenate([self.fed_positions, self.positions[..., None]], axis=-1)[..., first:]
                return self.prefill(ids, mask.astype(np.bool_), positions, self.step_positions)
        return self._run(tokens.reshape(batch, 1), np.ones((batch, 1), dtype=np.int64), self.positions[..., None])

    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Backend.merge: the new rows are prefilled alone, then their cache joins the running rows' (below)."""
        if not self.attention_mask.shape[0]:
            return self.prefill(input_ids, attention_mask)
        joining = copy.copy(self)  # the session and prefix, with a batch state of its own after its prefill
        logits = joining.prefill(input_ids, attention_mask)
        if joining.positions.shape[1:] != self.positions.shape[1:] or np.any(
                joining.step_positions != self.step_positions):
            raise LmkitError("rows join a batch whose positions are counted from the mask; this one was "
                             "prefilled with the model's own position_ids")
        self._append_rows(joining)
        return logits

    def _append_rows(self, other: OrtBackend) -> None:
        """Take `other`'s rows after this backend's own, right-aligned: a cache tensor with a past axis gets
        zeros (masked as padding) after the prefix's P positions of the shorter side; a state or a fixed
        window (the last positions, whose columns keep their place from the right) joins as it is."""
        sides = (self, other)
        columns = [side.attention_mask.shape[1] for side in sides]  # after the prefix
        width = max(columns)

        def padded(array: np.ndarray, missing: int, axis: int, at: int = 0) -> np.ndarray:
            """`array` with `missing` zeros inserted at index `at` of `axis`."""
            shape = list(array.shape)
            shape[axis] = missing
            before, after = np.split(array, [at], axis=axis)
            return np.concatenate([before, np.zeros(shape, array.dtype), after], axis=axis)

        def joined(values, axis: int, at: int = 0, rows: int = 0) -> np.ndarray:
            return np.concatenate([padded(value, width - n, axis, at) for value, n in zip(values, columns)], axis=rows)

        past = {}
        for name, _ in self.cache:
            shape, values = self.inputs[name]["shape"], [self._host(side.past[name]) for side in sides]
            if self.buffered:  # buffers of the whole context, (B, nh, max_length, hs): each side's filled part
                past[name] = self._buffers_joined(values, columns, width)  # moves right within it
                continue
            rows = self._batch_axis(name)
            past[name] = self._cache_value(joined(values, shape.index(PAST), self.prefix_length, rows) if PAST in shape
                                           else np.concatenate(values, axis=rows))
        self.past = past
        self.attention_mask, self.fed, self.fed_positions, self.positions = (
            joined([side.attention_mask for side in sides], 1), joined([side.fed for side in sides], 1),
            joined([side.fed_positions for side in sides], -1), np.concatenate([side.positions for side in sides]))

    def _buffers_joined(self, values: list[np.ndarray], columns: list[int], width: int):
        """The buffered layout's _append_rows: the prefix's P positions stay first; each side's n filled
        positions after them end at P + width, zeros (masked as padding) before them."""
        P = self.prefix_length
        merged = np.zeros((sum(len(value) for value in values), *values[0].shape[1:]), dtype=values[0].dtype)
        row = 0
        for value, n in zip(values, columns):
            merged[row:row + len(value), :, :P] = value[:, :, :P]
            merged[row:row + len(value), :, P + width - n:P + width] = value[:, :, P:P + n]
            row += len(value)
        return merged if self.shared else self._cache_value(merged)

    def _run(self, input_ids: np.ndarray, new_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        mask = np.concatenate([self.attention_mask, new_mask], axis=1)
        if self.max_length is not None and mask.shape[1] > self.max_length:
            raise LmkitError(f"the model reads at most {self.max_length} positions and this step would make "
                             f"{mask.shape[1]}; generate fewer tokens or shorten the prompt")
        # The prefix's positions are in the cache, never padding: ones before the mask the graph sees.
        seen = np.concatenate([np.ones((mask.shape[0], self.prefix_length), np.int64), mask], axis=1)
        feeds = {name: np.ascontiguousarray(value, dtype=self.inputs[name]["dtype"])
                 for name, value in (("input_ids", input_ids), ("attention_mask", seen), ("position_ids", positions))
                 if name in self.inputs}
        if self.shared:
            if self.prefix_length and input_ids.shape[1] > 1 and len(input_ids) > 1:
                # The fused attention takes one row when a prompt follows a past: each row into its own
                # rows of the buffers (a contiguous view, which onnxruntime writes into).
                logits = np.concatenate([self._run_shared({name: value[b:b + 1] for name, value in feeds.items()},
                                                          slice(b, b + 1)) for b in range(len(input_ids))])
            else:
                logits = self._run_shared(feeds, slice(None))
            cache = list(self.past.values())
        elif self.binding is None:
            logits, *cache = self.session.run(self.output_names, {**feeds, **self.past})
        else:
            logits, *cache = self._run_bound(feeds)
            logits = logits.numpy()
        self.past = {name: value for (name, _), value in zip(self.cache, cache)}
        self.attention_mask = mask
        self.fed = np.concatenate([self.fed, input_ids], axis=1)
        self.fed_positions = np.concatenate([self.fed_positions, positions], axis=-1)
        self.positions = positions[..., -1] + self.step_positions  # (B,) or (B, K): the next token's
        # A copy: the strategies may change the logits in place, and they are onnxruntime's buffer.
        return np.array(logits[:, -1], dtype=np.float32)

    def _run_shared(self, feeds: dict, rows: slice) -> np.ndarray:
        """One run with each cache buffer's `rows` bound as both its input and its output; the logits.

        Everything is bound as OrtValues over numpy memory, the logits included (allocated here), so
        nothing is copied on the way in or out (get_outputs would wrap every output again); a buffer
        stays bound from step to step while it is the same array (lmkit.exports.providers.HostBinding).
        """
        binding = self.binding
        for name, value in feeds.items():
            binding.input(name, value)
        input_ids = feeds["input_ids"]
        logits = np.empty((*input_ids.shape, self.vocab_size), dtype=np.float32)
        binding.output("logits", logits)
        whole = rows == slice(None)
        for name, output in self.cache:
            # The buffer itself, or a view of its rows (a contiguous view: onnxruntime writes into its memory).
            binding.shared(name, output, self.past[name] if whole else self.past[name][rows])
        binding.run()
        return logits

    def _run_bound(self, feeds: dict) -> list:
        """One step through IO binding: the cache in and out as OrtValues on the device, the logits to the host."""
        binding = self.binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in self.past.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for _, output in self.cache:
            binding.bind_output(output, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()

    def _take_prefix(self, prefix) -> None:
        """Check `prefix` against the graph's key/value inputs and keep it by input name, (1, nh, P, hs)."""
        n_layers = len(self.cache) // 2
        names = [f"past_key_values.{layer}.{part}" for layer in range(n_layers) for part in ("key", "value")]
        if not names or [name for name, _ in self.cache] != names:
            raise LmkitError("a prefix starts a key/value cache, and this export's cache is not keys/values "
                             "(past_key_values.{i}.key/.value); prefixes work with attention decoders (GPT, GPT-2)")
        shape = self.inputs["past_key_values.0.key"]["shape"]  # (batch, heads, past, head_dim)
        prefix.check_fits(n_layers, shape[1], shape[3], "this export")
        self.prefix_length = prefix.length
        self.max_length = prefix.positions_left(self.max_length)
        P = prefix.length
        for index, name in enumerate(names):
            layer, part = divmod(index, 2)
            value = prefix.keys_values[layer, part][None]  # (1, nh, P, hs)
            window = self.inputs[name]["shape"][2]
            if not isinstance(window, str) and not self.buffered:  # (a buffer's fixed axis is the whole context)
                # A layer whose cache is a window of its last w positions (GPT-3's banded layers) holds what it
                # would after P tokens: their last min(P, w), right-aligned after zeros (lmkit.nn.BandedKVCache).
                kept = min(P, window)
                held = np.zeros((1, value.shape[1], window, value.shape[3]), dtype=value.dtype)
                held[:, :, window - kept:] = value[:, :, P - kept:]
                value = held
            self.prefix[name] = np.ascontiguousarray(value, dtype=self.inputs[name]["dtype"])

    def _cache_value(self, array: np.ndarray):
        """A cache tensor as this backend keeps it: numpy, or an OrtValue on the device with IO binding."""
        if self.binding is None:
            return array
        from onnxruntime import OrtValue

        return OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    @staticmethod
    def _host(value) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def _batch_axis(self, name: str) -> int:
        return batch_axis(self.inputs[name])

    def _empty(self, name: str, batch: int) -> np.ndarray:
        """The cache input before the first token: no past positions (zeros of any other shape)."""
        return empty_input(self.inputs[name], batch)
