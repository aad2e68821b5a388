"""The encoder-decoder runtime (Seq2Seq, attentional NMT, T5): an encoder graph run once per batch of
sources and a decoder-step graph whose state is fed back step to step; registered as "encoder-decoder".

Nothing here knows a family: the manifest's "encoder_decoder" table (written from the exporter's
lmkit.exports.graphs.EncoderDecoderLayout) says which encoder outputs feed which decoder inputs, which
inputs start as zeros (a zero state; an empty key/value cache with a growing past axis) or as the
sources' mask, and whether the encoder reads a padded batch or one source at a time. The decoder
graph's cache pairs say which outputs are fed back as which inputs; each tensor's batch axis is the
one its shape names batch_size, along which beams are reordered with np.take, as the PyTorch
backend's reorder does. In the buffer cache layout (T5's fast export) every cache pair is one buffer
that onnxruntime's fused attention writes the new position into: on the CPU the runtime binds it as
both the input and the output, so nothing of the past is copied at a step, and beam search reorders
only its filled part, in place.

    model = lmkit.open_model("exp/nmt")           # or lmkit.exports.load
    model.generate(["a source sentence"])           # any lmkit.decoding strategy, as in PyTorch
"""
from __future__ import annotations

import copy

import numpy as np

from lmkit.errors import ArtifactError, LmkitError
from lmkit.parallel import pad_sources

from .graphs import (
    BATCH,
    BATCHINGS,
    CAPACITY,
    ENCODER_DECODER,
    FEED_SOURCES,
    PAST,
    SEQ2SEQ_CACHE_LAYOUTS,
    SOURCE,
    batch_axis,
    empty_input,
)
from .providers import HostBinding


def check_layout(directory: str, manifest: dict) -> dict:
    """The manifest's encoder_decoder table, checked against the graphs it wires; a one-line error if not."""
    layout = manifest.get("encoder_decoder")
    if not isinstance(layout, dict):
        raise ArtifactError(f"{directory}: the manifest has no encoder_decoder table saying how its graphs connect "
                            "(an export made before lmkit recorded it); export the model again")

    def damaged(why: str) -> ArtifactError:
        return ArtifactError(f"{directory}: the manifest's encoder_decoder table {why}; export the model again")

    graphs = manifest["graphs"]
    if layout.get("encoder") not in graphs or layout.get("decoder") not in graphs:
        raise damaged(f"names graphs {layout.get('encoder')!r} and {layout.get('decoder')!r}, but the export has "
                      f"{', '.join(graphs)}")
    if layout.get("batching") not in BATCHINGS:
        raise damaged(f"has batching {layout.get('batching')!r}, not one of {', '.join(BATCHINGS)}")
    if layout.get("cache_layout", "concat") not in SEQ2SEQ_CACHE_LAYOUTS:
        raise damaged(f"has cache layout {layout.get('cache_layout')!r}, not one of {', '.join(SEQ2SEQ_CACHE_LAYOUTS)} "
                      "(an export made by a newer lmkit: upgrade lmkit)")
    encoder, decoder = graphs[layout["encoder"]], graphs[layout["decoder"]]
    encoder_inputs = {t["name"] for t in encoder["inputs"]}
    encoder_outputs = {t["name"] for t in encoder["outputs"]}
    decoder_inputs = {t["name"] for t in decoder["inputs"]}
    wanted = {layout.get("encoder_ids")} | ({layout["encoder_mask"]} if layout.get("encoder_mask") else set())
    if layout["batching"] == "padded" and not layout.get("encoder_mask"):
        raise damaged("reads padded sources but names no encoder_mask input")
    if not wanted <= encoder_inputs:
        raise damaged(f"names encoder inputs {', '.join(sorted(wanted - encoder_inputs))} the encoder graph lacks")
    if layout.get("decoder_ids") not in decoder_inputs or layout.get("logits") not in {
            t["name"] for t in decoder["outputs"]}:
        raise damaged("names a decoder token input or logits output the decoder graph lacks")
    feeds = layout.get("feeds")
    if not isinstance(feeds, list) or not all(isinstance(feed, dict) for feed in feeds):
        raise damaged("has no list of feeds")
    for feed in feeds:
        if feed.get("input") not in decoder_inputs or feed.get("source") not in FEED_SOURCES:
            raise damaged(f"feeds {feed.get('input')!r} from {feed.get('source')!r}: each feed names a decoder input "
                          f"and one of {', '.join(FEED_SOURCES)}")
        if feed["source"] == "encoder" and feed.get("output") not in encoder_outputs:
            raise damaged(f"feeds {feed['input']!r} from encoder output {feed.get('output')!r}, which the encoder "
                          "graph lacks")
    prefix_cache = layout.get("prefix_cache")
    if prefix_cache is not None and (not isinstance(prefix_cache, list) or len(prefix_cache) != 2
                                     or not set(prefix_cache) <= decoder_inputs):
        raise damaged(f"names a prefix cache {prefix_cache!r} that is not two of the decoder graph's inputs")
    if layout.get("cache_layout") == "buffer":
        shapes = {t["name"]: t["shape"] for t in decoder["inputs"]}
        odd = [pair["input"] for pair in decoder["cache"]
               if len(shapes.get(pair["input"], ())) != 4 or shapes[pair["input"]][0::2] != [BATCH, CAPACITY]]
        if odd:
            raise damaged(f"has the buffer cache layout, but cache input(s) {', '.join(odd)} are not (batch_size, "
                          f"heads, {CAPACITY}, head_dim)")
    unfed = decoder_inputs - {layout["decoder_ids"]} - {feed["input"] for feed in feeds}
    if unfed:
        raise damaged(f"gives no first value for decoder input(s) {', '.join(sorted(unfed))}")
    return layout


class OrtSeq2SeqBackend:
    """lmkit.decoding's Backend over an encoder-decoder export; call set_sources before each generate().

    As lmkit.decoding.seq2seq_backend.Seq2SeqBackend: every prompt is the target side's start token,
    prefill runs the encoder over the sources and the decoder over the prompts, each step feeds one
    token per row. The state (every decoder input but the tokens and the target mask) is a dict of
    numpy arrays.

    capacity: in the buffer layout, the target positions the buffers hold at first after a prefix's (the
    start token's included); they double when a step needs more. share_buffers: bind each buffer as its
    layer's input and output (None: on the CPU); else the outputs are fed back as inputs, the operator
    copying the buffers.
    """

    max_length = None  # the decoder reads its state, not a window of positions; max_new_tokens bounds it

    def __init__(self, encoder, decoder, graphs: dict, layout: dict, pad_id: int = 0, prefix=None,
                 capacity: int = 64, share_buffers: bool | None = None):
        self.encoder, self.decoder = encoder, decoder
        self.layout = layout
        self.encoder_outputs = {t["name"]: t for t in graphs[layout["encoder"]]["outputs"]}
        self.encoder_inputs = {t["name"]: t for t in graphs[layout["encoder"]]["inputs"]}
        self.decoder_inputs = {t["name"]: t for t in graphs[layout["decoder"]]["inputs"]}
        self.logits_shape = next(t["shape"] for t in graphs[layout["decoder"]]["outputs"] if t["name"] == layout["logits"])
        self.cache = [(pair["input"], pair["output"]) for pair in graphs[layout["decoder"]]["cache"]]
        self.output_names = [layout["logits"], *(output for _, output in self.cache)]
        self.pad_id = pad_id
        self.sources: list[list[int]] | None = None
        self.state: dict[str, np.ndarray] = {}
        self.target_masks = [feed["input"] for feed in layout["feeds"] if feed["source"] == "target_mask"]
        self.positions = 0  # target positions in the self-attention cache so far, a prefix's included
        # (B, positions) bool, False at the left padding of rows that joined a running batch (merge); None: none.
        self.target_mask: np.ndarray | None = None
        self.buffered = layout.get("cache_layout") == "buffer"
        self.capacity = capacity
        # Each buffer is its layer's input and output, the same numpy memory bound to both (on the CPU: elsewhere
        # the outputs come back as new arrays, fed in at the next step).
        on_cpu = decoder.get_providers()[0] == "CPUExecutionProvider"
        self.shared = self.buffered and (on_cpu if share_buffers is None else share_buffers)
        self.binding = HostBinding(decoder) if self.shared else None
        # Inputs made from the source alone (fed from the encoder or the source mask, never a cache the decoder
        # updates): alike in every row of one source, so a reorder among a source's own rows (beams) keeps them.
        updated = {name for name, _ in self.cache}
        self.source_inputs = {feed["input"] for feed in layout["feeds"]
                              if feed["source"] in ("encoder", "source_mask") and feed["input"] not in updated}
        self.row_sources: np.ndarray | None = None  # (B',): the source each row decodes, by index
        self.prefix: dict[str, np.ndarray] = {}  # decoder input -> (L, 1, nh, P, hs)
        if prefix is not None:
            self._take_prefix(prefix)

    def _take_prefix(self, prefix) -> None:
        """Check `prefix` (a lmkit.prefix.CachePrefix) against the self-attention cache inputs the layout names
        (prefix_cache) and keep it: every row's cache starts from it, as lmkit's Seq2SeqBackend does."""
        names = self.layout.get("prefix_cache")
        if not names:
            raise LmkitError("a prefix starts a decoder's self-attention cache, and this export names none "
                             "(a recurrent decoder, or an export made before lmkit took prefixes there: export it "
                             "again)")
        if self.buffered:  # per layer: keys then values, layer by layer (the cache pairs' order)
            shape = self.decoder_inputs[names[0]]["shape"]  # (batch, heads, max_sequence_length, head_dim)
            prefix.check_fits(len(self.cache) // 2, shape[1], shape[3], "this export")
            for index, (name, _) in enumerate(self.cache):
                layer, part = divmod(index, 2)
                self.prefix[name] = prefix.keys_values[layer, part][None]  # (1, nh, P, hs)
            return
        shape = self.decoder_inputs[names[0]]["shape"]  # (layers, batch, heads, past, head_dim)
        prefix.check_fits(shape[0], shape[2], shape[4], "this export")
        for part, name in enumerate(names):
            self.prefix[name] = prefix.keys_values[:, part, None]

    def set_sources(self, sources: list[list[int]]) -> None:
        """The source token ids of the prompts the next generate() will get, one per prompt, in order."""
        self.sources = [list(map(int, s)) for s in sources]

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.sources is None or len(self.sources) != len(input_ids):
            raise ValueError(f"set_sources() gave {0 if self.sources is None else len(self.sources)} sources for "
                             f"{len(input_ids)} prompts; give one source per prompt")
        if not attention_mask.all():
            raise ValueError("every target prefix must have the same length (the start token)")
        encoded, mask = self._encode()
        batch = len(self.sources)
        P = next((value.shape[-2] for value in self.prefix.values()), 0)
        self.positions = P
        state = {}
        for feed in self.layout["feeds"]:
            tensor = self.decoder_inputs[feed["input"]]
            if feed["source"] == "target_mask":  # made anew at every step
                continue
            if feed["source"] == "encoder":
                value = encoded[feed["output"]]
            elif feed["source"] == "source_mask":
                value = mask
            elif CAPACITY in tensor["shape"]:  # a buffer of the whole target, the prefix's positions first
                value = np.zeros(self._buffer_shape(tensor, batch, P + max(self.capacity, input_ids.shape[1])),
                                 dtype=tensor["dtype"])
                if feed["input"] in self.prefix:
                    value[:, :, :P] = self.prefix[feed["input"]]
            elif feed["input"] in self.prefix:  # the prefix's P positions before the start token
                value = np.repeat(self.prefix[feed["input"]], batch, axis=batch_axis(tensor))
            else:  # zeros: a zero state, or an empty cache whose past axis grows
                value = empty_input(tensor, batch)
            state[feed["input"]] = np.ascontiguousarray(value, dtype=tensor["dtype"])
        self.state = state
        self.target_mask = None
        self.row_sources = np.arange(len(self.sources))
        ids = np.asarray(input_ids, dtype=np.int64)
        for column in range(ids.shape[1]):  # the decoder-step graph reads one token per row
            logits = self._run(ids[:, column:column + 1])
        return logits

    def step(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is not None:
            stay = len(rows) == len(self.row_sources) and np.array_equal(self.row_sources[rows], self.row_sources)
            self.row_sources = self.row_sources[rows]
            self.state = {name: self._reordered(name, value, rows, stay) for name, value in self.state.items()}
            if self.target_mask is not None:
                self.target_mask = self.target_mask[rows]
        return self._run(np.asarray(tokens, dtype=np.int64)[:, None])

    @property
    def joins_rows(self) -> bool:
        """Whether `merge` can take rows into a running batch: no prefix, and a decoder whose state has no target
        positions (a recurrent state) or whose graph hides a row's padding (the layout's target_padding)."""
        positional = any(PAST in self.decoder_inputs[name]["shape"] or CAPACITY in self.decoder_inputs[name]["shape"]
                         for name, _ in self.cache)
        return not self.prefix and (not positional or bool(self.layout.get("target_padding")))

    def merge(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Backend.merge for sources given to set_sources since the running rows' prefill: those sources are
        encoded and their start tokens decoded alone, then their rows join the running ones, which are not
        computed again (as lmkit.nn.stack.Seq2SeqDecoderStack.join does in PyTorch): inputs along the source
        padded at the end to the longer source, the shorter side's target positions right-aligned to the longer
        side's, the padding before them masked (target_mask). ValueError where `joins_rows` is False."""
        if not self.state:
            return self.prefill(input_ids, attention_mask)
        if not self.joins_rows:
            raise ValueError("this export cannot take rows into a running batch" + (
                " after a prefix" if self.prefix else " (its decoder graph reads no target padding: export it again)"))
        joining = copy.copy(self)  # the sessions and layout, with a state of its own after its prefill
        if self.shared:
            joining.binding = HostBinding(self.decoder)
        logits = joining.prefill(input_ids, attention_mask)
        self._append_rows(joining)
        return logits

    def _append_rows(self, other: OrtSeq2SeqBackend) -> None:
        sides = (self, other)
        width = max(side.positions for side in sides)
        state = {}
        for name, value in self.state.items():
            tensor = self.decoder_inputs[name]
            shape, rows = tensor["shape"], batch_axis(tensor)
            values = [value, other.state[name]]
            if CAPACITY in shape:  # (B, nh, capacity, hs): each side's filled positions end at `width`
                capacity = max(width + 1, *(v.shape[2] for v in values))
                joined = np.zeros((len(values[0]) + len(values[1]), shape[1], capacity, shape[3]), dtype=value.dtype)
                row = 0
                for side, v in zip(sides, values):
                    joined[row:row + len(v), :, width - side.positions:width] = v[:, :, :side.positions]
                    row += len(v)
                state[name] = joined
                continue
            if SOURCE in shape:  # padded at the end, masked by the source mask
                values = _padded(values, shape.index(SOURCE), at_end=True)
            elif PAST in shape:  # left-padded, masked by the target mask
                values = _padded(values, shape.index(PAST), at_end=False)
            state[name] = np.ascontiguousarray(np.concatenate(values, axis=rows))
        if self.target_masks and (width != min(side.positions for side in sides)
                                  or any(side.target_mask is not None for side in sides)):
            masks = [np.ones((len(side.row_sources), side.positions), np.bool_) if side.target_mask is None
                     else side.target_mask for side in sides]
            self.target_mask = np.concatenate(_padded(masks, 1, at_end=False))
        self.state, self.positions = state, width
        self.row_sources = np.concatenate([self.row_sources, other.row_sources + self.row_sources.max(initial=-1) + 1])

    def _reordered(self, name: str, value: np.ndarray, rows: np.ndarray, stay: bool) -> np.ndarray:
        """`value` with its rows in the order `rows` gives. stay: every row keeps its source (beams among
        themselves), so an input made from the source alone is left as it is."""
        if stay and name in self.source_inputs:
            return value
        if self.shared and len(rows) == len(value) and CAPACITY in self.decoder_inputs[name]["shape"]:
            moved = np.flatnonzero(rows != np.arange(len(rows)))  # a beam that stays keeps its row as it is
            value[moved, :, :self.positions] = value[rows[moved], :, :self.positions]  # the filled part, in place
            return value
        return np.take(value, rows, axis=batch_axis(self.decoder_inputs[name]))

    def _buffer_shape(self, tensor: dict, batch: int, capacity: int) -> tuple[int, ...]:
        return tuple(batch if size == BATCH else capacity if size == CAPACITY else size for size in tensor["shape"])

    def _encode(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The encoder's outputs for the sources as one batch, and the sources' mask (B, S), True at tokens."""
        layout, sources = self.layout, self.sources
        ids, mask = pad_sources(sources, self.pad_id)
        names = list(self.encoder_outputs)
        if layout["batching"] == "padded":
            feeds = {layout["encoder_ids"]: ids, layout["encoder_mask"]: mask}
            feeds = {name: np.ascontiguousarray(value, dtype=self.encoder_inputs[name]["dtype"])
                     for name, value in feeds.items()}
            return dict(zip(names, self.encoder.run(names, feeds))), mask
        # One source at a time: an op that would read the padding (the ONNX LSTM) never sees any; each
        # output is padded with zeros along its source axis (masked out) and the rows joined on the batch axis.
        rows = [dict(zip(names, self.encoder.run(names, self._one_source(source)))) for source in sources]
        encoded = {}
        for name, tensor in self.encoder_outputs.items():
            axis = batch_axis(tensor)
            values = [row[name] for row in rows]
            if SOURCE in tensor["shape"]:
                along = tensor["shape"].index(SOURCE)
                values = [np.pad(value, [(0, ids.shape[1] - value.shape[along]) if i == along else (0, 0)
                                         for i in range(value.ndim)]) for value in values]
            encoded[name] = np.concatenate(values, axis=axis)
        return encoded, mask

    def _one_source(self, source: list[int]) -> dict[str, np.ndarray]:
        layout = self.layout
        feeds = {layout["encoder_ids"]: np.asarray([source], dtype=self.encoder_inputs[layout["encoder_ids"]]["dtype"])}
        if layout.get("encoder_mask"):
            feeds[layout["encoder_mask"]] = np.ones((1, len(source)),
                                                    dtype=self.encoder_inputs[layout["encoder_mask"]]["dtype"])
        return feeds

    def _run(self, input_ids: np.ndarray) -> np.ndarray:
        batch, new = input_ids.shape
        if self.buffered:
            self._make_room(self.positions + new)
        feeds = {self.layout["decoder_ids"]: input_ids, **self.state}
        if self.target_mask is not None:
            self.target_mask = np.concatenate([self.target_mask, np.ones((batch, new), np.bool_)], axis=1)
        for name in self.target_masks:
            feeds[name] = (np.ones((batch, self.positions + new), dtype=self.decoder_inputs[name]["dtype"])
                           if self.target_mask is None else self.target_mask.astype(self.decoder_inputs[name]["dtype"]))
        if self.shared:
            logits = self._run_shared(feeds)
        else:
            outputs = dict(zip(self.output_names, self.decoder.run(self.output_names, feeds)))
            for name, output in self.cache:
                self.state[name] = outputs[output]
            # A copy: the strategies may change the logits in place, and they are onnxruntime's buffer.
            logits = np.array(outputs[self.layout["logits"]], dtype=np.float32)
        self.positions += new
        return logits[:, -1] if logits.ndim == 3 else logits

    def _make_room(self, needed: int) -> None:
        """Buffers of at least `needed` positions: twice as many, their filled part copied, when they are short."""
        for name, _ in self.cache:
            buffer = self.state[name]
            if buffer.shape[2] < needed:
                tensor = self.decoder_inputs[name]
                grown = np.zeros(self._buffer_shape(tensor, len(buffer), max(needed, 2 * buffer.shape[2])),
                                 dtype=buffer.dtype)
                grown[:, :, :self.positions] = buffer[:, :, :self.positions]
                self.state[name] = grown

    def _run_shared(self, feeds: dict) -> np.ndarray:
        """One run with each cache buffer bound as both its input and its output; the logits, in an array of ours.

        Values are bound as OrtValues over numpy memory, so nothing is copied on the way in or out, and stay
        bound from step to step: a step binds its tokens, its target mask and the logits, and an input only
        when its array changed (a reorder or a buffer's growth).
        """
        binding = self.binding
        batch = len(feeds[self.layout["decoder_ids"]])
        logits = np.empty([batch if size == BATCH else 1 if isinstance(size, str) else size
                           for size in self.logits_shape], dtype=np.float32)
        binding.output(self.layout["logits"], logits)
        cache = dict(self.cache)
        for name, value in feeds.items():
            if name in cache:
                binding.shared(name, cache[name], value)  # the buffer's own memory, written in place
            else:
                binding.input(name, np.ascontiguousarray(value))
        binding.run()
        return logits


class EncoderDecoderRuntime:
    """lmkit.contract.ExportRuntime of an encoder-decoder export: sequence-to-sequence generation."""

    kind = "encoder-decoder"

    def __init__(self, export):
        self.export = export
        self.layout = check_layout(export.directory, export.manifest)
        self.encoder = export.session(self.layout["encoder"])
        self.decoder = export.session(self.layout["decoder"])
        self.max_positions = export.manifest.get("dimensions", {}).get("max_positions")  # of a source

    def backend(self, max_new_tokens: int | None = None, prefix=None) -> OrtSeq2SeqBackend:
        """A fresh backend over the two sessions. max_new_tokens sizes the buffer layout's cache buffers (they double
        when a generation outlasts them; None: room for 64 positions first); the concat layout's state grows as it
        needs. prefix: a lmkit.prefix.CachePrefix the decoder's self-attention cache starts from (the layout's
        prefix_cache)."""
        pad = self.export.manifest.get("special_tokens", {}).get("pad")
        # Buffers for the start token and max_new_tokens after it (a prefix's positions are added to it).
        capacity = 1 + max_new_tokens if max_new_tokens else 64
        return OrtSeq2SeqBackend(self.encoder, self.decoder, self.export.manifest["graphs"], self.layout,
                                 pad_id=pad if pad is not None else 0,  # masked out, so any source id will do
                                 prefix=prefix, capacity=capacity)

    def features(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids=None) -> dict:
        raise LmkitError(f"{self.export.directory} is an {ENCODER_DECODER} export, whose encoder graph gives the "
                         "decoder's starting state, not features; embed with the model directory itself")


def _padded(values: list[np.ndarray], axis: int, *, at_end: bool) -> list[np.ndarray]:
    """Each of `values` padded with zeros along `axis` to the longest's size, after its entries or before."""
    longest = max(value.shape[axis] for value in values)
    return [np.pad(value, [((0, longest - value.shape[axis]) if at_end else (longest - value.shape[axis], 0))
                           if i == axis else (0, 0) for i in range(value.ndim)]) for value in values]
