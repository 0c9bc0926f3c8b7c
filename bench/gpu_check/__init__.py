"""The parts of ``bench/gpu_check.py``, one concern per module.

The script and this folder share a name on purpose: ``python bench/gpu_check.py`` puts ``bench/`` first on
``sys.path``, and a package folder wins over a module of the same name, so ``import gpu_check.record`` there
reads this folder. Nothing here imports torch or cl-run at import time except the sections themselves, which
the script imports only after ``gpu_check.bootstrap`` has made both importable.
"""
