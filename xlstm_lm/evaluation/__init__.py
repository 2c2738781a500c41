"""Evaluation: perplexity / bits per byte at any length, exact-match accuracy of fine-tuned models."""

from .perplexity import LoadedModel, PerplexityResult, Scorer, evaluate, load_model, load_scorer, plot_by_position

__all__ = ["LoadedModel", "PerplexityResult", "Scorer", "evaluate", "load_model", "load_scorer", "plot_by_position"]
