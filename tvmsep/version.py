"""The package's version, in a module that imports nothing.

Cache keys and bundle manifests record it; importing it from here rather than from
the package's `__init__` keeps imports running one way, from the package down."""

__version__ = "0.1.0"
