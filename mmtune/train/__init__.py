"""Shared training helpers: the step arithmetic, checkpoints, logging, evaluation."""
