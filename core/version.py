"""cl-run's version, in a module of its own: the plugin manager (which names it as the built-ins'
provider) and ``clrun/__init__`` both read it, and neither has to import the other for it."""

__version__ = "0.1.0"  # keep equal to [project] version in pyproject.toml (tests/unit/test_packaging.py)
