"""Knowledge neurons (Dai et al. 2022): `lmkit neurons`, which FFN units of a BERT- or GPT-family model
hold a fact, found by integrated gradients, and what suppressing or amplifying them does.

Only registration lives here, so loading the plugin does not import torch; the method is in
attribution.py, the command in command.py.
"""
from lmkit.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    from .command import neurons_command

    cli.add_command(neurons_command)
