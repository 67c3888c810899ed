"""submodel: one base code LLM, per-language Wanda sub-models, one serving process."""

__version__ = "0.1.0"
