"""The pinned projects the router trains on and is measured on, fetched from package registries.

Each project is one registry package at one version: npm tarballs (`npm pack`), PyPI wheels
(`pip download --only-binary`), Debian binary packages that ship sources, headers or examples
(`apt-get download`). Its files are labelled by extension (`label_of`): ours (python, java, cpp,
javascript) or an "other" kind (C, TypeScript, Go, Rust, Kotlin, C#, shell, SQL, JSON, YAML,
Markdown...). `split` says who may read it: "train" projects feed `submodel.router.train`, and
"heldout" projects feed only `submodel.bench.router`, so the bench measures projects the model
never saw (leave-projects-out). No project is in both lists; the tests check that.

Decisions the labels encode (see the router's docstring): TypeScript (.ts, .tsx, .d.ts) is
"other" and routes to dense; a `.h` file is C++ in a C++ project (`cpp_headers`) and C ("other")
elsewhere, and by file name alone a `.h` is undecided, so the content decides; JSX is JavaScript.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

REGISTRIES = ("npm", "pypi", "deb")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Project:
    registry: str  # one of REGISTRIES
    name: str
    version: str
    split: str  # one of SPLITS
    cpp_headers: bool = False  # its .h files are C++ (else C, "other")

    @property
    def key(self) -> str:
        return f"{self.registry}:{self.name}@{self.version}"


def _p(registry: str, split: str, spec: str, cpp_headers: bool = False) -> Project:
    name, version = spec.rsplit("@", 1) if registry == "npm" else spec.split("=", 1)
    return Project(registry, name, version, split, cpp_headers)


T, H = "train", "heldout"
PROJECTS: tuple[Project, ...] = (
    # python: wheels hold the sources (type hints, async, dataclasses); some hold their tests
    _p("pypi", T, "rich=15.0.0"), _p("pypi", T, "httpx=0.28.1"), _p("pypi", T, "pydantic=2.14.3"),
    _p("pypi", T, "starlette=1.10.0"), _p("pypi", T, "python-dateutil=4.0.0"),
    _p("pypi", T, "fastapi=0.163.2"), _p("pypi", T, "werkzeug=3.1.9"),
    _p("pypi", T, "jsonschema=4.26.0"), _p("pypi", T, "click=8.5.1"),
    _p("pypi", H, "requests=2.34.2"), _p("pypi", H, "marshmallow=4.4.0"),
    _p("pypi", H, "more-itertools=11.2.1"), _p("pypi", H, "toolz=1.2.0"),
    _p("pypi", H, "trio=0.35.0"),
    # java: Android plugins and runtimes on npm (the JDK's java.base is the default source too)
    _p("npm", T, "cordova-android@15.1.0"), _p("npm", T, "@capacitor/android@8.6.0"),
    _p("npm", T, "react-native-webview@16.0.0"), _p("npm", T, "cordova-plugin-camera@8.0.0"),
    _p("npm", T, "react-native-device-info@15.0.2"),
    # ... and older Cordova plugins, which also carry C# (Windows Phone) sources
    _p("npm", T, "cordova-plugin-device@1.1.7"), _p("npm", T, "cordova-plugin-media@3.0.1"),
    _p("npm", T, "cordova-plugin-geolocation@2.4.3"), _p("npm", T, "cordova-plugin-dialogs@1.3.4"),
    _p("npm", T, "cordova-plugin-inappbrowser@1.7.2"),
    _p("npm", T, "react-native-svg@15.16.1"), _p("npm", T, "react-native-maps@1.29.11"),
    _p("npm", T, "cordova-plugin-network-information@3.1.0"),
    _p("npm", T, "cordova-plugin-statusbar@4.0.0"), _p("npm", T, "react-native-image-picker@8.2.1"),
    _p("npm", H, "cordova-plugin-file@8.1.3"), _p("npm", H, "react-native-fs@2.20.0"),
    _p("npm", H, "react-native-sqlite-storage@6.0.1"),
    # cpp: header libraries (C++11 to 20), googletest's sources, node addons' sources
    _p("deb", T, "libfmt-dev=9.1.0+ds1-2", True), _p("deb", T, "googletest=1.12.1-0.2", True),
    _p("deb", T, "libabsl-dev=20220623.1-1+deb12u2", True),
    _p("deb", T, "librange-v3-dev=0.12.0-1", True), _p("deb", T, "libglm-dev=0.9.9.8+ds-6", True),
    _p("deb", T, "libcli11-dev=2.1.2+ds-1", True),
    _p("deb", T, "libmsgpack-cxx-dev=4.1.3-1", True), _p("pypi", T, "pybind11=3.1.0", True),
    _p("npm", T, "sharp@0.35.6", True), _p("npm", T, "re2@1.27.1", True),
    _p("npm", T, "node-addon-api@8.9.2", True),
    # ... more header libraries, some written C-style (bullet, box2d, tinyxml2), and addons
    _p("deb", T, "libeigen3-dev=3.4.0-4", True), _p("deb", T, "catch2=2.13.10-1", True),
    _p("deb", T, "libasio-dev=1:1.22.1-1", True), _p("deb", T, "libpugixml-dev=1.13-0.2", True),
    _p("deb", T, "libcxxopts-dev=3.1.1-1", True), _p("deb", T, "libjsoncpp-dev=1.9.5-4", True),
    _p("deb", T, "libtinyxml2-dev=9.0.0+dfsg-3.1", True),
    _p("deb", T, "libbenchmark-dev=1.7.1-1", True), _p("deb", T, "libpqxx-dev=6.4.5-2", True),
    _p("deb", T, "libbullet-dev=3.24+dfsg-2", True), _p("deb", T, "libbox2d-dev=2.4.1-3", True),
    _p("deb", T, "libsfml-dev=2.5.1+dfsg-2+b2", True),
    _p("deb", T, "libcrypto++-dev=8.7.0+git220824-1", True),
    _p("deb", T, "libtbb-dev=2021.8.0-2+deb12u1", True),
    _p("deb", T, "libxtensor-dev=0.24.3-1", True), _p("npm", T, "bcrypt@6.0.0", True),
    _p("npm", T, "better-sqlite3@13.2.0", True), _p("npm", T, "argon2@0.45.1", True),
    _p("deb", H, "nlohmann-json3-dev=3.11.2-2", True),
    _p("deb", H, "libcereal-dev=1.3.2+dfsg-4", True),
    _p("deb", H, "libyaml-cpp-dev=0.7.0+dfsg-8+b1", True), _p("npm", H, "canvas@3.2.3", True),
    _p("deb", H, "libspdlog-dev=1:1.10.0+ds-0.4", True),
    # javascript: CommonJS and ES modules, libraries, CLIs, test runners; JSX from a template
    _p("npm", T, "express@5.3.0"), _p("npm", T, "axios@1.21.1"), _p("npm", T, "lodash-es@4.18.1"),
    _p("npm", T, "commander@15.1.0"), _p("npm", T, "yargs@18.2.0"), _p("npm", T, "mocha@12.0.3"),
    _p("npm", T, "preact@11.2.0"), _p("npm", T, "d3-array@3.2.5"), _p("npm", T, "rxjs@7.8.2"),
    _p("npm", T, "eslint@10.16.0"), _p("npm", T, "cra-template@1.3.0"),
    # ... and older styles (IIFEs, prototypes, callbacks), parsers, templates, ES module trees
    _p("npm", T, "underscore@1.13.8"), _p("npm", T, "moment@2.31.0"),
    _p("npm", T, "bluebird@3.7.2"), _p("npm", T, "esprima@4.0.1"), _p("npm", T, "date-fns@4.4.0"),
    _p("npm", T, "ws@8.23.1"), _p("npm", T, "three@0.187.0"), _p("npm", T, "handlebars@4.7.10"),
    _p("npm", T, "async@3.2.6"), _p("npm", T, "socket.io@4.8.4"),
    # ... semicolon-free "standard" style, and Flow-typed JavaScript with JSX (react-native)
    _p("npm", T, "fastify@5.12.8"), _p("npm", T, "pino@10.4.0"), _p("npm", T, "undici@8.14.0"),
    _p("npm", T, "simple-peer@9.11.1"), _p("npm", T, "react-native@0.88.1"),
    _p("npm", H, "koa@3.3.0"), _p("npm", H, "semver@7.8.6"), _p("npm", H, "jquery@4.0.0"),
    _p("npm", H, "acorn@8.19.0"), _p("npm", H, "immer@11.2.14"), _p("npm", H, "ramda@0.32.0"),
    # other: C, TypeScript, Go, Rust, Kotlin, shell, SQL (JSON, YAML, Markdown come with all)
    _p("npm", T, "zod@4.6.7"), _p("npm", T, "@types/node@26.6.11"),
    _p("npm", T, "react-native-screens@4.30.1"), _p("npm", T, "utf-8-validate@6.0.6"),
    _p("deb", T, "golang-github-spf13-cobra-dev=1.6.1-1"),
    _p("deb", T, "golang-github-pkg-errors-dev=0.9.1-2"),
    _p("deb", T, "librust-anyhow-dev=1.0.69-1"), _p("deb", T, "librust-serde-dev=1.0.152-2"),
    _p("deb", T, "bash-completion=1:2.11-6"), _p("deb", T, "postgresql-15-pgtap=1.2.0-3"),
    _p("deb", T, "libuv1-dev=1.44.2-1+deb12u1"), _p("deb", T, "liblua5.4-dev=5.4.4-3+deb12u1"),
    _p("deb", T, "libglib2.0-dev=2.74.6-2+deb12u9"),
    _p("deb", T, "libzstd-dev=1.5.4+dfsg2-5+deb12u1"),
    _p("deb", T, "libcurl4-openssl-dev=7.88.1-10+deb12u15"), _p("deb", T, "libjson-c-dev=0.16-2"),
    _p("deb", T, "golang-github-google-uuid-dev=1.3.0-1"),
    _p("deb", T, "librust-regex-dev=1.7.1-1"), _p("deb", T, "ruby-rack=2.2.22-0+deb12u2"),
    _p("npm", H, "@types/react@19.3.3"), _p("npm", H, "n@10.2.0"),
    _p("npm", H, "@react-native-community/netinfo@12.0.1"),
    _p("deb", H, "golang-github-stretchr-testify-dev=1.8.1-1"),
    _p("deb", H, "librust-thiserror-dev=1.0.38-1"), _p("deb", H, "librust-itoa-dev=1.0.1-2"),
    _p("deb", H, "libjansson-dev=2.14-2"), _p("deb", H, "postgresql-15-periods=1.2.2-1+b1"),
    _p("deb", H, "postgresql-15-ip4r=2.4.1-8+b1"),
)

# extension -> label: one of LANGUAGES, or the kind of "other" text. Narrower for ours than
# vocabulary.EXTENSIONS: these labels chose the router's training and held-out files.
EXTENSIONS = {
    ".py": "python", ".pyi": "python", ".java": "java",
    **dict.fromkeys((".cpp", ".cc", ".cxx", ".hpp", ".hh", ".hxx", ".ipp", ".tcc", ".inl",
                     ".cppm", ".ixx"), "cpp"),
    **dict.fromkeys((".js", ".mjs", ".cjs", ".jsx"), "javascript"),
    ".c": "c", ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript",
    ".cts": "typescript", ".go": "go", ".rs": "rust", ".kt": "kotlin", ".kts": "kotlin",
    ".cs": "csharp", ".sh": "shell", ".bash": "shell", ".sql": "sql", ".json": "json",
    ".yaml": "yaml", ".yml": "yaml", ".md": "markdown", ".html": "markup", ".xml": "markup",
    ".css": "css", ".toml": "toml", ".gradle": "gradle", ".cmake": "cmake", ".rb": "ruby",
    ".swift": "swift", ".m": "objc", ".pl": "perl", ".pm": "perl", ".php": "php",
}


def label_of(path: str, project: Project) -> str | None:
    """The label of a file of `project`: one of LANGUAGES, an "other" kind, or None (skip it)."""
    name = os.path.basename(path).lower()
    if name.endswith((".min.js", ".map", ".d.ts.map")) or name == "package-lock.json":
        return None
    if name.endswith(".h"):
        return "cpp" if project.cpp_headers else "c_header"
    if "/bash-completion/completions/" in path and "." not in name:
        return "shell"
    return EXTENSIONS.get(os.path.splitext(name)[1])


def _path_markers(project: Project) -> tuple[str, ...]:
    """How a path on this machine shows that a file belongs to `project`."""
    if project.registry == "npm":
        return (f"node_modules/{project.name}/",)
    if project.registry == "pypi":
        name = project.name.lower().replace("-", "_")
        return (f"site-packages/{name}/", f"site-packages/{name}-", f"site-packages/{name}.py")
    return (f"/share/doc/{project.name}/",)


def is_heldout_path(path: str) -> bool:
    """Does a file of this machine (a default corpus's, an "other" file) belong to a held-out
    project? npm's own tree bundles semver, for one: the trainer must skip such files."""
    lower = path.replace("\\", "/").lower()
    return any(m.lower() in lower for p in projects("heldout") for m in _path_markers(p))


def projects(split: str) -> list[Project]:
    """The pinned projects of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return [p for p in PROJECTS if p.split == split]
