"""An app module whose own import fails: the runner must show the real error."""

import this_dependency_is_missing  # type: ignore[import-not-found]  # noqa: F401

app = None
