"""Heads, fine-tuning systems, few-shot data, metrics and evaluation."""
