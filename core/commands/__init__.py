"""The bodies of the commands that are not training or evaluation: ``cl-run check`` (``check``), ``components``,
``sweep`` and ``shards``. ``clrun.cli`` parses the command line and calls them; training is
``clrun.training.loop``, evaluation and export are the library modules ``clrun.evaluation`` and ``clrun.export``.
"""
