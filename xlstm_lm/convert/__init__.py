"""Converters between xlstm_lm models and other implementations."""
