"""reid.vis package."""
