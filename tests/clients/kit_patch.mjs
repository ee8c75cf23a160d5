// fhir-kit-client's patch() (JSON Patch) against the real server.
// Usage: node kit_patch.mjs BASE_URL TOKEN PATIENT_ID
// Prints one JSON line: the patched resource as the server returned it and as read back.
import Client from 'fhir-kit-client';

const [baseUrl, token, patient] = process.argv.slice(2);
const client = new Client({ baseUrl });
client.bearerToken = token;

const patched = await client.patch({
  resourceType: 'Patient',
  id: patient,
  JSONPatch: [
    { op: 'replace', path: '/active', value: false },
    { op: 'add', path: '/gender', value: 'female' },
  ],
});
const read = await client.read({ resourceType: 'Patient', id: patient });
console.log(JSON.stringify({ patched, read }));
