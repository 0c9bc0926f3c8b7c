"""Built-in callbacks (components of kind ``callback``)."""
