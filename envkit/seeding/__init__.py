"""Datasets: definitions, deterministic generation, masking, loading and subsetting."""
