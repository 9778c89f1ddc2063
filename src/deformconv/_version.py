"""The package version, the single source: setuptools reads it for the metadata, and
``deformconv.__version__`` and ``deformconv --version`` report it."""

__version__ = "0.1.0"
