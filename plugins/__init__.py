"""The built-in model families, one package per paper family, each registered as an `lmkit` plugin."""
