"""fhirpy (an independent Python FHIR client) against the real server.

Usage: python3 fhirpy_checks.py BASE_URL TOKEN PATIENT_ID
Prints one JSON line with what each call returned, for tests/api/clients.rs to compare.
"""
import json
import sys

from fhirpy import SyncFHIRClient

base, token, patient = sys.argv[1:4]
client = SyncFHIRClient(base, authorization=f"Bearer {token}")
observations = client.resources("Observation")
report = {
    # .count() asks with _count=0 and reads Bundle.total.
    "count_patient": observations.search(patient=patient).count(),
    "count_heart_rate": observations.search(patient=patient, code="http://loinc.org|8867-4").count(),
    "count_none": observations.search(code="http://example.org|nothing").count(),
    "fetched": len(observations.search(patient=patient).limit(100).fetch()),
}
print(json.dumps(report))
