"""Validates every JSON file in a directory as a FHIR R4 resource with an independent
implementation: the Python `fhir.resources` 6.4.0 models (pydantic 1). Exit status 1 on any failure.

Usage: python3 tests/validate_r4.py DIR
"""
import json
import pathlib
import sys

from fhir.resources import construct_fhir_element

failures = 0
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    doc = json.loads(path.read_text())
    try:
        construct_fhir_element(doc["resourceType"], doc)
    except Exception as e:  # pydantic's ValidationError and anything else
        failures += 1
        print(f"INVALID {path.name}: {e}")
print(f"validated {len(list(pathlib.Path(sys.argv[1]).glob('*.json')))} resources, {failures} invalid")
sys.exit(1 if failures else 0)
