"""The sample texts and stock count this package ships, copied into a folder of your choice.

python -m acme_batch.samples "$BATCHAPP_DATA_DIR/texts"   # also writes stock.csv beside them
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


STOCK_CSV = """\
sku,warehouse,units,unit_cost,counted_at,active
SKU-0001,ICN-1,40,12.50,2026-12-01T09:00:00,yes
SKU-0002,ICN-1,3,999.99,2026-12-01T09:05:00+09:00,
SKU-0003,PUS-2,0,4.00,2026-12-01T10:00:00,no
SKU-0004,PUS-2,-5,4.00,2026-12-01T10:00:00,yes
SKU-0005,PUS-2,12,3.5,2026-12-01T10:01:00,true
SKU-0001,PUS-2,7,12.50,2026-12-01T10:02:00,yes
SKU-0006,ICN-1,100,0.99,yesterday,yes
"""
"""A stock count: 4 good lines, 3 rejected (negative units, a repeated SKU, a bad time)."""


def write_stock(path: Path) -> Path:
    """The sample stock count as ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STOCK_CSV, encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("Error: usage: python -m acme_batch.samples DEST_FOLDER", file=sys.stderr)
        return 2
    written = copy_samples(Path(argv[0]))
    stock = write_stock(Path(argv[0]).parent / "stock.csv")
    print(f"{len(written)} files in {argv[0]}; {stock}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
