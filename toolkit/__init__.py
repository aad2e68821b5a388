"""lmkit: the classic pretraining-era language models as plugins.

Importing lmkit is cheap: it does not import torch. The parts that need torch import it when a
model is built, trained or run.
"""
__version__ = "0.1.0"

from .errors import LmkitError  # noqa: E402

__all__ = ["LmkitError", "__version__"]
