"""reid.models package."""
