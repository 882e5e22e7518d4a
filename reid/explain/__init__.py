"""reid.explain package."""
