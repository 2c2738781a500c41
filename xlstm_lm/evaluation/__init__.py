"""Evaluation: perplexity / bits per byte at any length."""

from .perplexity import PerplexityResult, Scorer, evaluate, load_scorer, plot_by_position

__all__ = ["PerplexityResult", "Scorer", "evaluate", "load_scorer", "plot_by_position"]
