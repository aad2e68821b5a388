"""ELMo's bidirectional language model (Peters et al. 2018; allenai/bilm-tf bilm/model.py) as an lmkit encoder.

    token ids (B, T) --char table--> char ids (B, T, C) --CharCNN--> x (B, T, P)
    forward:  x -> LSTM_1 -> LSTM_2 (+ residual) ...      each a ProjectedLSTM, left to right
    backward: the same over each row's real tokens reversed, then put back in word order
    layers:   h_0 = [x; x], h_k = [fwd_k; bwd_k] (2P each); features = ScalarMix(h_0 .. h_L)

The word vocabulary is the tokenizer's (a `word` tokenizer: whole words, the rest <unk>); the model
spells each word of it into bilm-tf's char ids once, into `char_table` (V, C), when it is composed
(`bind_tokenizer`) or imported, so the char CNN reads characters while the rest of lmkit passes
token ids. The softmax over the same vocabulary belongs to the `bilm` objective (objective.py).
Every call starts both directions from zero state: a sentence's vectors do not depend on what it
is batched with or what came before (the complaint about allennlp's stateful Elmo, allennlp#2516).
"""
from __future__ import annotations

import torch
from torch import nn

from lmkit.contract import EncoderOutput
from lmkit.errors import LmkitError
from lmkit.nn.char_cnn import CharCNN
from lmkit.nn.char_ids import vocabulary_char_ids
from lmkit.nn.lstm import reverse_padded
from lmkit.nn.projected_lstm import ProjectedLSTM, run_together
from lmkit.nn.scalar_mix import ScalarMix
from lmkit.nn.stack import EncoderStack

from .config import ELMoConfig
from .layers import parse_layers


class ELMoBiLM(EncoderStack):
    """Token ids (B, T) -> the 2L+1 layers (B, T, 2P) and their scalar mix, which is last_hidden_state."""

    task_recipe = "elmo"  # lmkit finetune: the biLM frozen, the scalar mix learned (plugins/elmo/recipe.py)
    embed_options = ("layers",)  # features(layers="all" | "mix" | INDEX): lmkit embed --layers

    def __init__(self, config: ELMoConfig):
        super().__init__()
        self.config = config
        P = config.projection_dim
        self.register_buffer("char_table", torch.zeros(config.vocab_size, config.max_characters_per_token,
                                                       dtype=torch.long))
        self.token_encoder = CharCNN(config.n_characters, config.d_char, config.filters, config.n_highway, P,
                                     activation=config.activation)
        layer = lambda: ProjectedLSTM(P, config.lstm_dim, P, config.cell_clip, config.proj_clip)  # noqa: E731
        self.forward_layers = nn.ModuleList(layer() for _ in range(config.n_layers))
        self.backward_layers = nn.ModuleList(layer() for _ in range(config.n_layers))
        self.scalar_mix = ScalarMix(config.n_layers + 1, layer_norm=config.mix_layer_norm)
        self.drop = nn.Dropout(config.dropout)
        if config.init_range:
            for name, parameter in self.named_parameters():
                if not name.startswith("scalar_mix"):
                    nn.init.uniform_(parameter, -config.init_range, config.init_range)
            with torch.no_grad():
                self.token_encoder.char_embedding.weight[0].zero_()  # char id 0 pads; it stays zero

    d_model = property(lambda self: 2 * self.config.projection_dim)
    max_positions = None  # recurrent: any length
    n_layers = property(lambda self: self.config.n_layers + 1)  # the layers features(layers=...) indexes

    def bind_tokenizer(self, tokenizer) -> None:
        """Spell the tokenizer's vocabulary into char ids (lmkit.nn.char_ids): <s> and </s> as bilm-tf's
        sentence boundaries, the pad token as a padded token, every other token by its bytes."""
        roles = tokenizer.special_tokens
        tokens = [tokenizer.id_to_token(i) for i in range(min(tokenizer.vocab_size, self.config.vocab_size))]
        tokens += [None] * (self.config.vocab_size - len(tokens))
        table = vocabulary_char_ids(tokens, self.config.max_characters_per_token, bos=roles.get("bos"),
                                    eos=roles.get("eos"), pad=roles.get("pad"))
        self.char_table.copy_(torch.from_numpy(table))

    def token_inputs(self, tokenizer) -> dict:
        """Every token's char ids from its spelling (lmkit.token_inputs), so a word outside the vocabulary reaches
        the char CNN as its own characters, not those of <unk>: char_ids (B, T, max_characters_per_token)."""
        roles = tokenizer.special_tokens
        return {"type": "char-ids", "max_characters_per_token": self.config.max_characters_per_token,
                **{role: roles[role] for role in ("bos", "eos", "pad") if role in roles}}

    # -- the biLM ---------------------------------------------------------------------------------

    def token_states(self, input_ids: torch.Tensor, char_ids: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, P): the char CNN's token representation (layer 0 before it is duplicated), of char_ids
        (B, T, C) when given (every word's own characters), else of the vocabulary's spelling of input_ids."""
        if char_ids is None:
            char_ids = self.char_table[input_ids]
        elif char_ids.shape[:2] != input_ids.shape or char_ids.shape[2] != self.config.max_characters_per_token:
            raise LmkitError(f"char_ids has shape {tuple(char_ids.shape)}; the biLM reads (batch, tokens, "
                             f"{self.config.max_characters_per_token}) beside input_ids {tuple(input_ids.shape)}")
        return self.token_encoder(char_ids)

    def directions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   char_ids: torch.Tensor | None = None):
        """(x (B, T, P), forward outputs, backward outputs): L tensors (B, T, P) each, in word order.

        The backward LSTMs read each row's real tokens from its last to its first: the row is
        reversed in place, so its padding stays after every real token and is never read.
        """
        B, T = input_ids.shape
        if T == 0:
            raise LmkitError("the text has no tokens for the biLM to read; give text with at least one word")
        x = self.token_states(input_ids, char_ids)
        lengths = None if attention_mask is None else attention_mask.long().sum(1)
        P = self.config.projection_dim
        if lengths is None:
            flipped = x.flip(1)
        else:
            flipped = reverse_padded(x, lengths, P)
        forward, backward = [], []
        h_f, h_b = x, flipped
        for k, (lstm_f, lstm_b) in enumerate(zip(self.forward_layers, self.backward_layers)):
            out_f, out_b = run_together([lstm_f, lstm_b], [self.drop(h_f), self.drop(h_b)])
            if k and self.config.use_skip_connections:  # bilm-tf's ResidualWrapper around every layer but the first
                out_f, out_b = out_f + h_f, out_b + h_b
            forward.append(out_f)
            backward.append(out_b)
            h_f, h_b = out_f, out_b
        backward = [s.flip(1) if lengths is None else reverse_padded(s, lengths, P) for s in backward]
        return x, forward, backward

    def layers(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               char_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The 2L+1 ELMo layers as L+1 tensors (B, T, 2P): [x; x], then [fwd_k; bwd_k] (Peters et al. §3.2)."""
        x, forward, backward = self.directions(input_ids, attention_mask, char_ids)
        return [torch.cat([x, x], dim=-1)] + [torch.cat([f, b], dim=-1) for f, b in zip(forward, backward)]

    # -- the encoder contract ---------------------------------------------------------------------

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, char_ids=None) -> EncoderOutput:
        """last_hidden_state: the scalar mix (B, T, 2P), zero at padding; pooler_output: its mean over real
        tokens (B, 2P); hidden_states: every layer. char_ids (B, T, C): see token_states."""
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool())
        layers = self.layers(input_ids, None if attention_mask is None else mask, char_ids)
        return self._mixed(layers, mask)

    def frozen_mix(self, input_ids, attention_mask=None, char_ids=None) -> EncoderOutput:
        """forward's output with the biLM frozen (no gradient, no dropout): only the scalar mix learns, as a task
        model trains it over a fixed biLM (Peters et al. §3.3; lmkit.plugins.elmo.recipe)."""
        mask = (torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool())
        training = self.training
        with torch.no_grad():
            self.eval()
            layers = self.layers(input_ids, None if attention_mask is None else mask, char_ids)
            self.train(training)
        return self._mixed([h.detach() for h in layers], mask)

    def _mixed(self, layers, mask) -> EncoderOutput:
        keep = mask[..., None].to(layers[0].dtype)
        mixed = self.scalar_mix(layers, mask) * keep
        pooled = mixed.sum(1) / keep.sum(1).clamp(min=1)
        return EncoderOutput(mixed, mask, pooler_output=pooled, hidden_states=tuple(h * keep for h in layers))

    def features(self, input_ids, attention_mask=None, layers=None, char_ids=None, **options) -> EncoderOutput:
        """layers: "mix" (default), "all" (the L+1 layers concatenated: (B, T, (L+1) * 2P)) or a layer index;
        char_ids: see token_states."""
        if options:
            raise LmkitError(f"the elmo-bilm encoder takes no embedding options {', '.join(options)}; "
                             "it takes: layers")
        output = self(input_ids, attention_mask, char_ids=char_ids)
        which = parse_layers(layers, self.n_layers)
        if which == "mix":
            return output
        states = torch.cat(output.hidden_states, dim=-1) if which == "all" else output.hidden_states[which]
        return EncoderOutput(states, output.attention_mask, hidden_states=output.hidden_states)
