"""Loaders: the only writers of the warehouse's `raw` schema."""
