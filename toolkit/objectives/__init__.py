"""Training objectives that belong to no single paper.

Options live in `options.py`, which does not import torch, so that specs can be checked without it.
"""
