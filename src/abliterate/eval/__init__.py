"""Scoring an edit: refusal detection, KL divergence, over-refusal and the other metrics."""
