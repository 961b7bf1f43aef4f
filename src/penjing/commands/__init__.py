"""One module per ``penjing`` sub-command, each with ``register(subparsers)``."""
