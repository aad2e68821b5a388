"""Contrastive prefixes (Qian et al. 2022): `lmkit train-prefix`, per-attribute key/value prefixes that steer
a frozen causal decoder, trained jointly so each raises its own attribute's texts and lowers the others'.

Only registration lives here, so loading the plugin does not import torch; the method is in model.py,
the command in command.py. Generating with a prefix is the core's (lmkit.prefix, `lmkit generate --prefix`),
on a model directory and on an export alike.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from .command import train_prefix_command

    cli.add_command(train_prefix_command)
