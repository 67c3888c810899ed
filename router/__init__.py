"""Language router: hint, file name or content -> which sub-model serves a request.

Knows nothing of models: it answers one of python, java, cpp, javascript, or "dense".
"""

from submodel.router.languages import normalize_language
from submodel.router.router import DEFAULT_THRESHOLD, Detection, Router, UnknownLanguage, detect

__all__ = ["DEFAULT_THRESHOLD", "Detection", "Router", "UnknownLanguage", "detect",
           "normalize_language"]
