"""zcsend's version: the one place it is written (pyproject.toml reads it with
setuptools' attr:, without importing the package; zcsend.__version__ is this)."""
__version__ = "0.1.0"
