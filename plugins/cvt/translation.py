"""CVT for translation (Clark et al. 2018 §3.3, "Machine Translation"): auxiliary decoders learn, on source
sentences without translations, what the primary decoder's beam search outputs for them.

The primary model is the attentional LSTM encoder-decoder of lmkit.plugins.seq2seq (nmt-tiny, nmt-cove),
trained on sentence pairs by the core's `seq2seq` objective. This objective, `cvt-translation`, adds the
paper's two auxiliary decoders. They share the primary decoder's embedding and LSTM (and the encoder, and
the bridge that starts the decoder from it) but each has its own attention, attentional layer and softmax:

    attention-dropout   attends with a random share of its attention weights zeroed (options.attention_dropout)
    next-word           at step t (having read y_<t) predicts y_{t+1}, the word after the primary's y_t

On an unlabelled batch (`lmkit train --unlabeled`, see UnlabeledSources) the primary model, in eval mode and
without gradient, translates each source with beam search (the paper's hard targets: there is no
reference translation to teacher-force the primary with); the hard target ŷ is held constant and each
auxiliary decoder, teacher-forced on it, is trained by cross-entropy:

    L_CVT = sum over auxiliary decoders j of  mean over target positions t of  -log p_j(ŷ_{t(+1)} | x, ŷ_<t)

Gradient reaches the encoder and the shared decoder LSTM (the representations CVT improves) and the
auxiliary heads, never the primary's attention and softmax: its output is only the ids ŷ. Labelled batches
train the primary alone (this objective gives 0 on them), as in CVT for tagging.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.errors import DataError, SpecError
from lmkit.objectives.base import ObjectiveModule

from .config import CVTTranslationOptions

SPECIAL = "target_special_ids"  # (B, 3) of an unlabelled batch: each row's decoder start, </s> and pad ids


class AuxiliaryDecoder(nn.Module):
    """An auxiliary decoder's own parts: attention, attentional layer h~ = tanh(W [c; h] + b) and softmax
    (lm_head), sized as the primary's (lmkit.plugins.seq2seq.config.LSTMDecoderConfig); it runs on the
    primary decoder's embedding and LSTM (run)."""

    def __init__(self, config, attention_dropout: float = 0.0):
        from lmkit.nn.lstm import uniform_init_
        from lmkit.plugins.seq2seq.model import Attention

        super().__init__()
        self.config = config
        self.attention_dropout = attention_dropout
        H = config.hidden_size
        self.attending = config.attention != "none"
        if self.attending:
            self.attention = Attention(config.attention, H, config.d_encoder)
            self.combine = nn.Linear(config.d_encoder + H, H)
        self.lm_head = nn.Linear(H, config.vocab_size)
        uniform_init_(self, config.init_range)

    def attention_weights(self, out: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, S): the attention weights of decoder states `out` (B, T, H), a random share attention_dropout of
        them zeroed in training (the rest scaled by 1 / (1 - p), as any dropout): this view sees part of the source."""
        return F.dropout(self.attention.weights(out, keys, mask), self.attention_dropout, self.training)

    def _attend(self, out: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor):
        context = self.attention_weights(out, keys, mask) @ memory
        return torch.tanh(self.combine(torch.cat([context, out], dim=-1)))

    def run(self, decoder, tokens: torch.Tensor, state: dict) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) of target inputs `tokens` (B, T) from the primary decoder's start
        state (decoder.start), through the primary's embedding and LSTM and this decoder's own heads. With
        input feeding the fed vector is this decoder's own h~_{t-1}."""
        x = decoder.drop(decoder.embedding(tokens))  # (B, T, E)
        h, c = state["h"], state["c"]
        if self.attending:
            memory, mask = state["memory"], state["mask"]
            keys = self.attention.keys(memory)
        if self.config.input_feeding:
            feed, outputs = x.new_zeros(x.shape[0], self.config.hidden_size), []
            for t in range(tokens.shape[1]):
                out, (h, c) = decoder.lstm.step(torch.cat([x[:, t], feed], dim=-1), (h, c))
                feed = self._attend(out[:, None], memory, keys, mask)[:, 0]
                outputs.append(feed)
            hidden = torch.stack(outputs, dim=1)
        else:
            out, _ = decoder.lstm(x, state=(h, c))
            hidden = self._attend(out, memory, keys, mask) if self.attending else out
        return self.lm_head(decoder.drop(hidden))


def next_word_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels (B, T) of y_1 .. y_T -> (B, T) of y_2 .. y_T, -100: what the next-word decoder predicts at each step."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)


def _decoder_class():
    from lmkit.plugins.seq2seq.model import LSTMDecoder

    return LSTMDecoder


class CVTTranslationObjective(ObjectiveModule):
    """The auxiliary decoders of CVT for translation and their loss on unlabelled sources (see the module doc)."""

    reads_unlabeled = True  # lmkit.model.ComposedModel.loss: the only objective an unlabelled batch trains

    def __init__(self, options: CVTTranslationOptions, decoder_config):
        super().__init__(options)
        # "attention-dropout" -> "attention_dropout_decoder": a module name cannot hold "-"
        self.decoders = nn.ModuleDict({
            view.replace("-", "_") + "_decoder": AuxiliaryDecoder(
                decoder_config, options.attention_dropout if view == "attention-dropout" else 0.0)
            for view in options.views})

    @classmethod
    def for_model(cls, options, model) -> CVTTranslationObjective:
        return cls(options or CVTTranslationOptions(), model.decoder.config)

    @classmethod
    def check_composition(cls, options, spec, tokenizer) -> None:
        options = options or CVTTranslationOptions()
        if spec.encoder is None or spec.decoder is None:
            raise SpecError("cvt-translation trains the auxiliary decoders of an encoder-decoder; compose an "
                            "attentional LSTM translation model (nmt-tiny, nmt-cove)")
        if not issubclass(spec.decoder.component.load(), _decoder_class()):
            raise SpecError(f"cvt-translation's auxiliary decoders share an LSTM decoder's embedding and LSTM; "
                            f"decoder '{spec.decoder.type}' is not one (use nmt-attention or seq2seq-lstm)")
        if "attention-dropout" in options.views and spec.decoder.options.attention == "none":
            raise SpecError("the attention-dropout view drops attention weights and this decoder has no attention; "
                            "set decoder.attention (e.g. general) or objectives.cvt-translation.views=[\"next-word\"]")
        if tokenizer is not None and tokenizer.eos_id is None:
            raise SpecError("the beam-search teacher ends translations at </s> and the tokenizer has none; train "
                            "one whose special tokens include </s>")

    @classmethod
    def with_unlabeled(cls, batches, context) -> UnlabeledSources:
        """lmkit train --unlabeled: the parallel text's batches alternate with batches of unlabelled sources."""
        return UnlabeledSources(batches, context)

    @torch.no_grad()
    def pseudo_targets(self, model, source_ids: torch.Tensor, source_mask: torch.Tensor,
                       special: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The primary model's translations ŷ of the sources (beam search, or greedy, in eval mode, without
        gradient), as teacher-forcing inputs target_ids (B, T) = start ŷ_1 .. ŷ_n and labels (B, T) =
        ŷ_1 .. ŷ_n </s> (no </s> when the search stopped at max_new_tokens), -100 at padding."""
        from lmkit.decoding.beam import BeamSearch
        from lmkit.decoding.greedy import Greedy
        from lmkit.decoding.options import BeamSearchOptions, GreedyOptions
        from lmkit.decoding.seq2seq_backend import Seq2SeqBackend

        start, eos, pad = special
        options = self.options
        limit = options.max_new_tokens or 2 * source_ids.shape[1] + 10
        strategy = (BeamSearch(BeamSearchOptions(max_new_tokens=limit, num_beams=options.num_beams))
                    if options.teacher == "beam" else Greedy(GreedyOptions(max_new_tokens=limit)))
        sources = [ids[mask].tolist() for ids, mask in zip(source_ids.cpu(), source_mask.cpu())]
        training = model.training
        backend = Seq2SeqBackend(model, source_ids.device)  # puts the stacks in eval mode: no dropout
        try:
            backend.set_sources(sources)
            results = strategy.generate(backend, [[start]] * len(sources), eos_id=eos, pad_id=pad)
        finally:
            model.train(training)
        targets = [r.tokens + ([eos] if r.finish_reason == "eos" else []) for r in results]
        width = max(1, max(map(len, targets)))
        target_ids = np.full((len(targets), width), pad, dtype=np.int64)
        labels = np.full((len(targets), width), -100, dtype=np.int64)
        for row, target in enumerate(targets):
            if target:
                target_ids[row, :len(target)] = [start, *target[:-1]]
                labels[row, :len(target)] = target
        device = source_ids.device
        return torch.from_numpy(target_ids).to(device), torch.from_numpy(labels).to(device)

    def auxiliary_logits(self, model, source_ids, source_mask, target_ids) -> dict[str, torch.Tensor]:
        """{view: teacher-forced logits (B, T, V)} of each auxiliary decoder, in the model's own mode."""
        encoded = model.encoder(source_ids, source_mask)
        state = model.decoder.start(encoded)
        return {key.removesuffix("_decoder").replace("_", "-"): decoder.run(model.decoder, target_ids, state)
                for key, decoder in self.decoders.items()}

    def unlabeled_loss(self, model, source_ids, source_mask, target_ids, labels) -> torch.Tensor:
        """L_CVT of pseudo-targets (target_ids, labels) from pseudo_targets: the sum over auxiliary decoders."""
        total = 0.0
        for view, logits in self.auxiliary_logits(model, source_ids, source_mask, target_ids).items():
            wanted = next_word_labels(labels) if view == "next-word" else labels
            if not (wanted != -100).any():  # one-word targets: nothing comes next
                continue
            total = total + F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), wanted.reshape(-1),
                                            ignore_index=-100)
        return total if torch.is_tensor(total) else source_ids.new_zeros((), dtype=torch.float32)

    def forward(self, model, batch: dict) -> torch.Tensor:
        if "unlabeled" not in batch:  # a labelled batch trains the primary decoder alone
            return batch["source_ids"].new_zeros((), dtype=torch.float32)
        source_ids, source_mask = batch["source_ids"], batch["source_mask"].bool()
        special = tuple(int(i) for i in batch[SPECIAL][0])
        target_ids, labels = self.pseudo_targets(model, source_ids, source_mask, special)
        return self.unlabeled_loss(model, source_ids, source_mask, target_ids, labels)


class UnlabeledSources:
    """The trainer's Batches for CVT on translation: a batch of sentence pairs (lmkit.parallel.ParallelText) at
    even passes, one of unlabelled sources (source_ids, source_mask, unlabeled, target_special_ids) at odd ones.

    Both go through their own seeded order, so a resumed run reads the same batches. The sources are
    the lines of --unlabeled, tokenized as the training sources are (with the encoder's source suffix);
    those longer than --seq-len tokens are left out, with a line saying how many.
    """

    def __init__(self, labelled, context):
        from lmkit.data import SeededOrder
        from lmkit.parallel import source_pad_id, special_ids
        from lmkit.seq2seq import source_suffix_ids
        from lmkit.tasks.unlabeled import read_unlabeled

        args = context.args
        self.labelled, self.batch_size = labelled, args.batch_size
        texts = [" ".join(words) for path in args.unlabeled for words in read_unlabeled(path)]
        suffix = source_suffix_ids(context.model.encoder, context.tokenizer)
        encoded = [ids + suffix for ids in context.tokenizer.encode_batch(texts) if ids]
        self.sources = [ids for ids in encoded if len(ids) <= args.seq_len]
        if not self.sources:
            raise DataError(f"--unlabeled: none of its {len(texts):,} sentences fits in --seq-len {args.seq_len} "
                            "tokens; raise --seq-len or give shorter sentences")
        dropped = len(texts) - len(self.sources)
        context.say(f"unlabeled sources: {len(self.sources):,} sentences"
                    + (f" ({dropped:,} longer than --seq-len {args.seq_len} or empty, left out)" if dropped else ""))
        target = context.target_tokenizer or context.tokenizer
        _, eos, pad = special_ids(target)
        self.special = (context.model.decoder.decoder_start_token_id(target), eos, pad)
        self.source_pad = source_pad_id(context.tokenizer)
        self.order = SeededOrder(len(self.sources), args.seed + 1)

    def train(self, first: int, count: int) -> dict[str, np.ndarray]:
        from lmkit.parallel import pad_sources

        step, offset = divmod(first, self.batch_size)
        start = (step // 2) * self.batch_size + offset
        if step % 2 == 0:
            return self.labelled.train(start, count)
        rows = [self.sources[i] for i in self.order.indices(start, count)]
        source_ids, source_mask = pad_sources(rows, self.source_pad)
        return {"source_ids": source_ids, "source_mask": source_mask, "unlabeled": np.ones(len(rows), dtype=bool),
                SPECIAL: np.tile(np.array(self.special, dtype=np.int64), (len(rows), 1))}

    def validation(self):
        return self.labelled.validation()

    def tokens(self, batch) -> int:
        return int(batch["source_mask"].sum()) if "unlabeled" in batch else self.labelled.tokens(batch)

    def describe(self) -> dict:
        return {**self.labelled.describe(), "unlabeled_sentences": len(self.sources)}
