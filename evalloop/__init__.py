"""evalloop: the CLI and glue that sits on top of schemas, judges, workers and streams."""

__version__ = "0.1.0"
