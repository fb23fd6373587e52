"""Reliability and security checks that are run as scripts (``python -m reliability.<name>``)."""
