"""Canary analysis: the candidate against the stable model, with gates; promote or roll back."""
