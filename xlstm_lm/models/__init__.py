"""Whole language models."""

from .lm import LMOutput, XLSTMLM

__all__ = ["LMOutput", "XLSTMLM"]
