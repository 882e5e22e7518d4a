"""Command-line tools (importable so tests can call ``main(argv)``)."""
