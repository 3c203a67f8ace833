"""Evaluation: BABILong scoring, perplexity, tables and plots."""
