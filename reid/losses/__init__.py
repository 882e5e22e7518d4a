"""reid.losses package."""
