"""Reasoning data: math problems, answer checking, step splitting (for step-wise pairs)."""
