"""Rewards beyond explicit ratings: the LLM judge (`judge`). Ratings and their fusion are in `ratings`."""
