"""Subcommands of the `evalloop` CLI: one module each, with a ``register(subparsers)`` function."""
