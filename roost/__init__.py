"""roost: synthesize and curate LLM alignment data."""
__version__ = "0.1.0"
