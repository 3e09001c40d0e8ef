"""Training recipes, one self-contained module per method."""
