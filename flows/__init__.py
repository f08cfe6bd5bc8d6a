"""Flows that chain llmship's stages, and the ``llmship`` command line."""
