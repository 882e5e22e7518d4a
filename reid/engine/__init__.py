"""reid.engine package."""
