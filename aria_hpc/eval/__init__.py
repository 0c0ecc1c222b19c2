"""Evaluation of distilled students (per region and per split group) and the markdown report."""
