"""reid.metrics package."""
