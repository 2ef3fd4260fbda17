"""Command-line examples for aimesh clients (run from the repository root with `python -m examples.<name>`)."""
