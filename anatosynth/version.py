"""The package version, in a module of its own so that any layer can read it without importing the package's
public API (``anatosynth/__init__.py`` re-exports it; pyproject.toml states the same number)."""

__version__ = "0.1.0"
