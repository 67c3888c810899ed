"""The project's names, each defined once: the languages served, their aliases and file
extensions, the unmasked model's name, the mask strategies, the compute dtypes and the
prunable Linears of a decoder block.

Why one module: these names were repeated in the router, the corpora, the pruner, the server
and the benches, and a copy left behind was a silent bug (a language the router serves but the
bench refuses). Adding a language is an entry in the tables below plus a calibration source
(`submodel.corpora.sources`). Plain data with no imports, so every layer may depend on it.
"""

from __future__ import annotations

LANGUAGES = ("python", "java", "cpp", "javascript")  # each has a mask; the order is the report's
DENSE = "dense"  # the unmasked model: a sub-model of its own, and where the router's doubts go
OTHER = "other"  # a language or format we know of but do not serve (the router's fifth class)

DISPLAY = {"python": "Python", "java": "Java", "cpp": "C++", "javascript": "JavaScript"}

# Names a user, an editor or a dataset may give each served language (matched lower-cased).
ALIASES = {
    "python": ("python", "py", "python3", "py3", "python2", "cpython", "pyw", "pyi", "ipython"),
    "java": ("java", "jdk", "openjdk"),
    "cpp": ("cpp", "c++", "cxx", "cc", "hpp", "h++", "hh", "hxx", "cplusplus", "cpp11", "cpp14",
            "cpp17", "cpp20", "c++11", "c++14", "c++17", "c++20"),
    "javascript": ("javascript", "js", "node", "nodejs", "node.js", "mjs", "cjs", "jsx",
                   "ecmascript", "es6"),
}
ALIAS = {alias: lang for lang, names in ALIASES.items() for alias in names}  # alias -> language
# Short names of languages we do not serve, for flags that take any language (--calib).
OTHER_ALIASES = {"ts": "typescript", "c#": "csharp", "cs": "csharp", "rs": "rust",
                 "golang": "go", "sh": "shell"}

# File extensions that name a served language (the router's file-name rule).
EXTENSIONS = {
    "python": (".py", ".pyw", ".pyi", ".py3"),
    "java": (".java",),
    "cpp": (".cpp", ".cc", ".cxx", ".c++", ".cp", ".hpp", ".hh", ".hxx", ".h++", ".ipp", ".tpp",
            ".tcc", ".inl", ".ixx", ".cppm"),
    "javascript": (".js", ".mjs", ".cjs", ".jsx", ".es6", ".jsm"),
}
# The files a calibration source directory contributes, per language (any language --calib may
# name). Not EXTENSIONS: a C++ source tree's `.h` files are C++, which a lone `.h` file name does
# not tell; and the calibration sets (so every mask built so far) were drawn with these.
CORPUS_EXTENSIONS = {
    "python": (".py",),
    "java": (".java",),
    "cpp": (".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx", ".h"),
    "javascript": (".js", ".mjs", ".cjs"),
    "typescript": (".ts", ".tsx"),
    "c": (".c", ".h"),
    "go": (".go",),
    "rust": (".rs",),
    "csharp": (".cs",),
    "php": (".php",),
    "ruby": (".rb",),
    "shell": (".sh", ".bash"),
}

STRATEGIES = ("swap", "fused", "replicas")  # how the server applies masks (server.masking)
DEFAULT_STRATEGY = "fused"
# how fused holds the weights: as stored; int8 + scales; those with the GGUF's own Q5_0/Q8_0 values
WEIGHT_FORMATS = ("full", "int8", "gguf")
WEIGHT_CHOICES = ("auto", *WEIGHT_FORMATS)  # serve's flag: auto picks one per store and CPU
DTYPES = ("float32", "bfloat16", "float16")  # store and calibration dtypes, by torch name
SERVE_DTYPES = ("float32", "bfloat16")  # what the server's CPU kernels compute in

# The Linears of a decoder block that masks cover, by their name under `model.layers.N.`, in
# the store's order; embeddings and lm_head are never pruned.
PRUNABLE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
