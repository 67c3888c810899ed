"""Real code per language, for calibration (pruning), the router's trainer and the benches.

Its own package because the router and the benches need the corpus but not the pruner:
`sources` (where a language's code is: defaults and `--calib LANG=PATH`), `documents` (its
files read, cleaned and split into calib and heldout) and `windows` (seeded token windows for
calibration; the only module that imports torch, so it is not imported here).
"""

from submodel.corpora.documents import Document, documents, strip_license_header
from submodel.corpora.sources import (
    CorpusError,
    Source,
    canonical_language,
    find_source,
    newest_dir,
    parse_calib_flags,
    walk_files,
    zip_source,
)

__all__ = ["CorpusError", "Document", "Source", "canonical_language", "documents", "find_source",
           "newest_dir", "parse_calib_flags", "strip_license_header", "walk_files", "zip_source"]
