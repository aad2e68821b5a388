"""An lmkit plugin as a third party writes one: hook implementations and import strings only.

It adds one thing through every kind of hook: a decoder with its preset, its exporter and the export
runtime of that exporter's architecture, an importer, an optimizer, a schedule, a task recipe and a
command. Nothing here imports torch; lmkit imports
`lmkit_example.model` when a spec builds the decoder.
"""
import click

from lmkit.hookspecs import hookimpl


@hookimpl
def register_decoders(register):
    register("bigram", "lmkit_example.model:BigramDecoder", options="lmkit_example.options:BigramOptions",
             summary="next token from the current token only (a lookup table of logits)")


@hookimpl
def register_exporters(register):
    register("decoder.bigram", "lmkit_example.export:export_plan",
             summary="one graph of this plugin's own architecture, last-token")


@hookimpl
def register_export_runtimes(register):
    register("last-token", "lmkit_example.runtime:LastTokenRuntime",
             summary="serves last-token graphs: each row's last token in, logits out, no cache")


@hookimpl
def register_importers(register):
    register("bigram", "lmkit_example.hf:import_bigram", summary="a made-up Hugging Face model_type")


@hookimpl
def register_optimizers(register):
    register("adagrad", "lmkit_example.training:Adagrad", options="lmkit_example.training:AdagradOptions",
             summary="torch's Adagrad")


@hookimpl
def register_schedules(register):
    register("constant", "lmkit_example.training:Constant", options="lmkit_example.training:ConstantOptions",
             summary="warmup, then a constant rate")


@hookimpl
def register_task_recipes(register):
    register("mean-pool", "lmkit_example.training:MeanPoolRecipe",
             summary="GPT's markers, features averaged over the tokens")


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
