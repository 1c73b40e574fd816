"""Reduction steps (pure functions on a Frame container) and the recipes that chain them."""
