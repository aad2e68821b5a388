"""The flags that pick a registered optimizer and learning-rate schedule, shared by `lmkit train` and
`lmkit finetune` (click only at import)."""
from __future__ import annotations

import click

OPTIMIZER_FLAGS = (
    click.option("--optimizer", metavar="NAME",
                 help="A registered optimizer (lmkit components --kind optimizer): adamw, sgd, ...  "
                      "[default: adamw]"),
    click.option("--optimizer-set", "optimizer_options", multiple=True, metavar="KEY=VALUE",
                 help="An option of the optimizer, e.g. momentum=0.9; repeat for more."),
    click.option("--schedule", metavar="NAME",
                 help="A registered learning-rate schedule (lmkit components --kind schedule): cosine, halving, "
                      "cvt, ...  [default: cosine]"),
    click.option("--schedule-set", "schedule_options", multiple=True, metavar="KEY=VALUE",
                 help="An option of the schedule, e.g. warmup_steps=100; repeat for more."),
)


def optimizer_flags(command):
    """--optimizer, --optimizer-set, --schedule and --schedule-set on a command."""
    for option in reversed(OPTIMIZER_FLAGS):
        command = option(command)
    return command
