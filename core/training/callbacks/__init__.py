"""The run's callbacks: the recipe's (``recipe_callbacks``), the built-in ones (console and metrics log in
``reporting``, run artifacts in ``artifacts``), and the per-run hook relay they are called through (``hooks``)."""
