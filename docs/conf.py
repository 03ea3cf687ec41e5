"""Sphinx configuration of the flask-sse-stream documentation (``make docs``)."""

from __future__ import annotations

import flask_sse_stream

project = "flask-sse-stream"
copyright = "flask-sse-stream contributors"
release = flask_sse_stream.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",
    "pallets_sphinx_themes",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "examples"]
root_doc = "index"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autoclass_content = "both"

# The Markdown pages (deployment, design, benchmarks) link to their own
# headings; give every heading down to ### an anchor.
myst_heading_anchors = 4
# benchmarks.md jumps from ## to #### in its tables of figures, on purpose.
suppress_warnings = ["myst.header"]

html_theme = "flask"
html_title = f"flask-sse-stream {release}"
html_context = {"project_links": []}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
html_static_path: list[str] = []
