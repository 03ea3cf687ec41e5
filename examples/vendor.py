"""Fetch the browser libraries the examples serve from the npm registry (no CDN).

``make vendor`` runs this: it packs each pinned package with ``npm pack``
and copies the files the pages load, with the package's license, into
``examples/static/vendor/<package>/``. The result is committed, so the
examples run without npm; run it again after changing a pin.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).parent / "static" / "vendor"

PACKAGES = {
    # package@version: the files to copy from the package (besides LICENSE)
    "htmx.org@2.0.11": ["dist/htmx.min.js"],
    "htmx-ext-sse@2.2.4": ["dist/sse.js"],
    "eventsource-parser@3.1.1": ["dist/index.js", "dist/stream.js"],
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run(
            ["npm", "pack", "--json", *PACKAGES],
            cwd=tmp,
            check=True,
            capture_output=True,
            text=True,
        )
        for spec, info in zip(PACKAGES, json.loads(packed.stdout), strict=True):
            name = spec.rpartition("@")[0]
            target = VENDOR / name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            with tarfile.open(Path(tmp) / info["filename"]) as tar:
                for path in [*PACKAGES[spec], "LICENSE"]:
                    member = tar.extractfile(f"package/{path}")
                    assert member is not None, path
                    (target / Path(path).name).write_bytes(member.read())
            (target / "VERSION").write_text(f"{info['id']}\n{info['integrity']}\n")
            print(f"{info['id']} -> {target}")


if __name__ == "__main__":
    main()
