"""The version, in a module of its own so that modules inside datagen can read it without importing the package
facade (datagen/__init__.py, which looks the API up)."""

__version__ = "0.1.0"
