"""The sample texts this package ships, copied into a folder of your choice.

python -m acme_batch.samples "$BATCHAPP_DATA_DIR/texts"
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path


def sample_texts() -> dict[str, str]:
    """File name -> text of each sample."""
    folder = files("acme_batch") / "texts"
    return {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".txt")
    }


def copy_samples(destination: Path) -> list[Path]:
    """Write the samples into ``destination`` (made if missing); returns the files written."""
    destination.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(sample_texts().items()):
        path = destination / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("Error: usage: python -m acme_batch.samples DEST_FOLDER", file=sys.stderr)
        return 2
    written = copy_samples(Path(argv[0]))
    print(f"{len(written)} files in {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
