"""Rewards: explicit ratings and their fusion into one reward per turn."""
from .fusion import SOURCE_PRIORITY, Rating, fuse

__all__ = ["SOURCE_PRIORITY", "Rating", "fuse"]
