import lmkit_missing_dependency  # noqa: F401 - not installed, on purpose
