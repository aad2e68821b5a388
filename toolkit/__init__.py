"""lmkit: the classic pretraining-era language models as plugins.

Importing lmkit is cheap: it does not import torch. The parts that need torch import it when a
model is built, trained or run.
"""
__version__ = "0.1.0"

from .errors import LmkitError  # noqa: E402
from .opening import open_model  # noqa: E402 - torch-free: it imports torch or onnxruntime when it opens

__all__ = ["LmkitError", "__version__", "open_model"]
