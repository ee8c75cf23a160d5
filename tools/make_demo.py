#!/usr/bin/env python3
"""Builds the demo dataset of `fhirgate demo` (demo/) from the test fixtures.

It copies three Synthea patients and writes one batch Bundle holding only the Organizations,
Practitioners and Locations that those patients' conditional references name, taken from
Synthea's hospital and practitioner batch Bundles (which hold hundreds). Run it from the
repository root after changing the choice of patients:

    python3 tools/make_demo.py
"""

import bz2
import json
import re
import shutil
from pathlib import Path

PATIENTS = [
    "6c8f3e83-c351-ed33-c38d-6be101c275d2",  # Maximo817 Bartell116: the demo account's record
    "085e81c0-7a95-ef02-16ef-aa1b4344deed",  # Ruben688 Medhurst46
    "19625ee6-1a94-1a6a-ca95-40c4efbbdfc7",  # Sybil495 Braun514
]
PROVIDER_BUNDLES = [
    "0-hospitalInformation1625911868739.json.bz2",
    "0-practitionerInformation1625911868739.json.bz2",
]
CONDITIONAL = re.compile(r'"((?:Organization|Practitioner|Location)\?identifier=[^"]+)"')

root = Path(__file__).resolve().parent.parent
fixtures = root / "tests/fixtures/synthea"
demo = root / "demo"

wanted = set()
for p in PATIENTS:
    shutil.copyfile(fixtures / f"{p}.json.bz2", demo / "synthea" / f"{p}.json.bz2")
    wanted |= set(CONDITIONAL.findall(bz2.decompress((fixtures / f"{p}.json.bz2").read_bytes()).decode()))

entries = []
for name in PROVIDER_BUNDLES:
    bundle = json.loads(bz2.decompress((fixtures / name).read_bytes()))
    for e in bundle["entry"]:
        r = e["resource"]
        keys = {f'{r["resourceType"]}?identifier={i["system"]}|{i["value"]}' for i in r.get("identifier", [])}
        if keys & wanted:
            entries.append(e)
found = {
    f'{e["resource"]["resourceType"]}?identifier={i["system"]}|{i["value"]}'
    for e in entries
    for i in e["resource"].get("identifier", [])
}
missing = wanted - found
if missing:
    raise SystemExit(f"no provider resource for {sorted(missing)}")
# Locations name their managing Organization by a conditional reference too: keep those.
out = {"resourceType": "Bundle", "type": "batch", "entry": entries}
(demo / "synthea" / "providers.json").write_text(json.dumps(out, indent=1) + "\n")
print(f"{len(PATIENTS)} patients, {len(entries)} provider resources")
