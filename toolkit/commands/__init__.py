"""Built-in CLI commands that need more than a few lines, one module each (click only at import)."""
