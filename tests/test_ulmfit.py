"""AWD-LSTM (ULMFiT's language model): its dropouts, its decoder, and the state it carries in training."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from lmkit.nn.dropout import embedding_dropout, locked_dropout, locked_mask, weight_drop  # noqa: E402
from lmkit.nn.recurrent import RecurrentCache  # noqa: E402
from lmkit.plugins.ulmfit.config import AWDLanguageModelOptions, AWDLSTMConfig  # noqa: E402
from lmkit.plugins.ulmfit.model import AWDLSTMDecoder  # noqa: E402

NO_DROPOUT = {"embed_dropout": 0.0, "input_dropout": 0.0, "hidden_dropout": 0.0, "weight_dropout": 0.0,
              "output_dropout": 0.0}


def decoder(**options) -> AWDLSTMDecoder:
    torch.manual_seed(0)
    return AWDLSTMDecoder(AWDLSTMConfig(**{"vocab_size": 50, "d_embed": 8, "hidden_size": 12, "n_layers": 3,
                                           **options}))


# -- the dropouts ---------------------------------------------------------------------------------


def test_embedding_dropout_drops_whole_rows_and_scales_the_rest():
    weight = torch.randn(200, 6)
    torch.manual_seed(1)
    dropped = embedding_dropout(weight, 0.3, training=True)
    zero = (dropped == 0).all(1)
    assert 0.15 < zero.float().mean() < 0.45  # about p of the words
    torch.testing.assert_close(dropped[~zero], weight[~zero] / 0.7)
    assert embedding_dropout(weight, 0.3, training=False) is weight


def test_locked_dropout_mask_is_per_sequence_and_the_same_at_every_step():
    mask = locked_mask(4, 10, 0.5, torch.ones(1))
    assert mask.shape == (4, 1, 10)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    x = torch.randn(4, 7, 10)
    torch.manual_seed(2)
    out = locked_dropout(x, 0.5, training=True)
    ratio = torch.where(x != 0, out / x, torch.zeros_like(x))
    assert torch.equal(ratio, ratio[:, :1].expand_as(ratio))  # one mask over time
    assert set(ratio.unique().tolist()) <= {0.0, 2.0}
    assert locked_dropout(x, 0.5, training=False) is x


def test_weight_drop_is_dropconnect_in_training_only():
    weight = torch.randn(40, 10)
    torch.manual_seed(3)
    dropped = weight_drop(weight, 0.25, training=True)
    kept = dropped != 0
    assert 0.6 < kept.float().mean() < 0.9  # entries, not rows
    torch.testing.assert_close(dropped[kept], weight[kept] / 0.75)
    assert weight_drop(weight, 0.25, training=False) is weight


def test_weight_drop_reaches_the_hidden_to_hidden_matrices_and_leaves_the_parameters_alone():
    model = decoder(**{**NO_DROPOUT, "weight_dropout": 0.5}).train()
    before = {name: p.clone() for name, p in model.named_parameters()}
    ids = torch.randint(0, 50, (2, 6))
    torch.manual_seed(4)
    got = model(ids)
    # The same draws by hand: one DropConnect mask per layer's weight_hh, nn.LSTM run on the dropped matrix.
    torch.manual_seed(4)
    dropped = [F.dropout(layer.weight_hh_l0, 0.5, training=True) for layer in model.layers]
    x = model.embedding(ids)
    for layer, w_hh in zip(model.layers, dropped):
        x, _ = torch.func.functional_call(layer, {"weight_hh_l0": w_hh}, (x,))
    torch.testing.assert_close(got, F.linear(x, model.embedding.weight, model.lm_head_bias))
    assert not torch.allclose(got, model.eval()(ids))  # in eval nothing is dropped
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert all(isinstance(p, torch.nn.Parameter) for p in model.layers[0].parameters())


# -- the decoder ----------------------------------------------------------------------------------


def test_eval_forward_is_a_plain_lstm_stack_with_a_tied_decoder():
    model = decoder().eval()
    assert [layer.hidden_size for layer in model.layers] == [12, 12, 8]  # the last one as wide as the embedding
    assert "lm_head.weight" not in model.state_dict()  # tied: the output layer is the embedding
    ids = torch.randint(0, 50, (3, 7))
    x = model.embedding(ids)
    for layer in model.layers:
        x, _ = layer(x)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), F.linear(x, model.embedding.weight, model.lm_head_bias))
        torch.testing.assert_close(model(ids), model(ids))  # no dropout in eval


def test_training_draws_new_masks_each_call():
    model = decoder().train()
    ids = torch.randint(0, 50, (2, 5))
    assert not torch.allclose(model(ids), model(ids))


def test_untied_decoder_has_its_own_output_layer():
    model = decoder(tie_weights=False)
    assert model.lm_head.weight.data_ptr() != model.embedding.weight.data_ptr()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="weight_dropout"):
        AWDLSTMConfig(weight_dropout=1.0)
    with pytest.raises(ValueError, match="n_layers"):
        AWDLSTMConfig(n_layers=0)


def test_ar_and_tar_are_added_in_training_only():
    from lmkit.plugins.ulmfit.objectives import AWDLanguageModel

    model = decoder(**{**NO_DROPOUT, "output_dropout": 0.3})
    objective = AWDLanguageModel(AWDLanguageModelOptions(ar_alpha=2.0, tar_beta=1.0))

    class Composed:  # what an objective reads of the composed model
        pass

    composed = Composed()
    composed.decoder = model
    ids = torch.randint(0, 50, (2, 9))
    model.train(), objective.train()
    torch.manual_seed(5)
    loss = objective(composed, {"input_ids": ids})
    torch.manual_seed(5)
    dropped, raw = model.run(ids[:, :-1])
    ce = F.cross_entropy(model.logits(dropped).flatten(0, 1), ids[:, 1:].flatten())
    expected = ce + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()
    torch.testing.assert_close(loss, expected)
    model.eval(), objective.eval()
    with torch.no_grad():
        torch.testing.assert_close(objective(composed, {"input_ids": ids}),
                                   F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()))


# -- the state carried across windows -------------------------------------------------------------


def test_training_carries_the_state_of_each_stream_detached_and_evaluation_starts_clean():
    from lmkit.objectives.causal_lm import CausalLM
    from lmkit.objectives.options import CausalLMOptions

    model = decoder(**NO_DROPOUT)

    class Composed:
        pass

    composed = Composed()
    composed.decoder, composed.encoder = model, None
    objective = CausalLM(CausalLMOptions())
    text = torch.randint(0, 50, (2, 13))  # two streams; windows of 6 predicted tokens share their edge token
    first, second = text[:, :7], text[:, 6:]
    streams = torch.tensor([0, 1])
    model.train(), objective.train()
    objective(composed, {"input_ids": first, "stream": streams})
    carried = [s.clone() for s in objective.carried]
    assert not any(s.requires_grad for s in objective.carried)
    loss = objective(composed, {"input_ids": second, "stream": streams})
    whole = model(text[:, :-1])[:, 6:]  # the second window read after the first, in one pass
    torch.testing.assert_close(loss, F.cross_entropy(whole.flatten(0, 1), text[:, 7:].flatten()))
    # Rows are matched to streams by the stream column, in any order.
    objective.carried = [s.clone() for s in carried]
    swapped = objective(composed, {"input_ids": second.flip(0), "stream": streams.flip(0)})
    torch.testing.assert_close(swapped, loss)
    # Evaluation starts from zeros, and leaves the carried state alone.
    objective.carried = [s.clone() for s in carried]
    model.eval(), objective.eval()
    clean = objective(composed, {"input_ids": second, "stream": streams})
    torch.testing.assert_close(clean, F.cross_entropy(model(second[:, :-1]).flatten(0, 1), second[:, 1:].flatten()))
    assert all(torch.equal(a, b) for a, b in zip(objective.carried, carried))


def test_token_streams_continue_each_row_where_the_last_step_left_it():
    import numpy as np

    from lmkit.training.batches import TokenStreams

    streams = TokenStreams.__new__(TokenStreams)  # the sampling alone, over a known token array
    streams.train_tokens, streams.seq_len, streams.streams = np.arange(100), 4, 3
    streams.stream_length = 33
    streams.token_inputs = streams.tokenizer = streams.train_spellings = None  # a stack that reads ids alone
    streams.windows = (33 - 1) // 4
    step0, step1 = streams.train(0, 3), streams.train(3, 3)
    assert step0["stream"].tolist() == step1["stream"].tolist() == [0, 1, 2]
    assert (step1["input_ids"][:, 0] == step0["input_ids"][:, -1]).all()  # the next window starts at the last target
    assert step0["input_ids"][:, 0].tolist() == [0, 33, 66]
    wrapped = streams.train(3 * 8, 3)  # past the end of each stream: from its start again
    assert wrapped["input_ids"][:, 0].tolist() == [0, 33, 66]
    split = streams.train(4, 2)  # a micro-batch's slice of a step: the same rows as the whole step's
    assert split["stream"].tolist() == [1, 2] and (split["input_ids"] == step1["input_ids"][1:]).all()


def test_recurrent_cache_reorders_rows():
    cache = RecurrentCache([torch.arange(3.0)[:, None].expand(3, 4), torch.arange(3.0)[:, None]])
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    assert cache.batch_size == 4 and cache.states[1].flatten().tolist() == [2, 2, 0, 1]
