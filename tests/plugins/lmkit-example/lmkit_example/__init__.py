"""An lmkit plugin as a third party writes one: hook implementations and import strings only.

Nothing here imports torch; lmkit imports `lmkit_example.model` when a spec builds the decoder.
"""
import click

from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("bigram", "lmkit_example.model:BigramDecoder", options="lmkit_example.options:BigramOptions",
             summary="next token from the current token only (a lookup table of logits)")


@hookimpl
def register_presets(register):
    register("bigram-tiny", {"decoder": {"type": "bigram", "vocab_size": 64},
                             "objectives": [{"type": "causal-lm"}]},
             summary="a 64-token bigram model")


@hookimpl
def register_commands(cli):
    @cli.command("bigram-top")
    @click.argument("directory")
    @click.option("--token-id", type=int, required=True, help="The current token.")
    @click.option("-k", default=3, show_default=True, help="How many next tokens to list.")
    def bigram_top(directory, token_id, k):
        """The k most likely next tokens of a bigram model."""
        from lmkit.model import load_model

        model, _, _ = load_model(directory)
        table = model.decoder.next_token_logits.weight[token_id]
        for token in table.topk(k).indices.tolist():
            click.echo(token)
