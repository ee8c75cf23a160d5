"""fhirpy's patch() against the real server: the client's and the resource's forms.

Usage: python3 fhirpy_patch.py BASE_URL TOKEN PATIENT_ID
Prints one JSON line with the resource after each patch.
"""
import json
import sys

from fhirpy import SyncFHIRClient

base, token, patient = sys.argv[1:4]
client = SyncFHIRClient(base, authorization=f"Bearer {token}")
after_client = client.patch(f"Patient/{patient}", birthDate="1980-02-03")
resource = client.reference("Patient", patient).to_resource()
after_resource = resource.patch(gender="other")
print(json.dumps({
    "after_client": dict(after_client),
    "after_resource": after_resource.serialize(),
    "read": client.reference("Patient", patient).to_resource().serialize(),
}))
