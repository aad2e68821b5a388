"""The flags that pick a registered optimizer and learning-rate schedule, shared by `lmkit train` and
`lmkit finetune` (click only at import)."""
from __future__ import annotations

import click

OPTIMIZER_FLAGS = (
    click.option("--optimizer", metavar="NAME",
                 help="A registered optimizer (lmkit components --kind optimizer): adamw, sgd, ...  "
                      "[default: adamw]"),
    click.option("--optimizer-set", "optimizer_options", multiple=True, metavar="KEY=VALUE",
                 help="An option of the chosen optimizer, e.g. --optimizer sgd --optimizer-set momentum=0.9; "
                      "repeat for more. adamw takes none: its settings are --beta1, --beta2 and --weight-decay."),
    click.option("--schedule", metavar="NAME",
                 help="A registered learning-rate schedule (lmkit components --kind schedule): cosine, halving, "
                      "cvt, ...  [default: cosine]"),
    click.option("--schedule-set", "schedule_options", multiple=True, metavar="KEY=VALUE",
                 help="An option of the chosen schedule, e.g. --schedule cvt --schedule-set warmup_steps=100; "
                      "repeat for more. cosine takes none: its settings are --warmup and --min-lr-ratio."),
)


def optimizer_flags(command):
    """--optimizer, --optimizer-set, --schedule and --schedule-set on a command."""
    for option in reversed(OPTIMIZER_FLAGS):
        command = option(command)
    return command
