// fhir-kit-client (an independent JavaScript FHIR client) against the real server.
// Usage: node kit.mjs BASE_URL TOKEN PATIENT_ID
// Prints one JSON line with what each call returned, for tests/api/clients.rs to compare.
import Client from 'fhir-kit-client';

const [baseUrl, token, patient] = process.argv.slice(2);
const client = new Client({ baseUrl });
client.bearerToken = token;

const ids = (bundle) => (bundle.entry || []).map((e) => `${e.resource.resourceType}/${e.resource.id}`);
const params = (pairs) => ({
  resourceType: 'Parameters',
  parameter: pairs.map(([name, value]) => ({ name, ...value })),
});

const report = {};
// operation() POSTs by default.
report.everything_post = ids(await client.operation({ resourceType: 'Patient', id: patient, name: '$everything' }));
report.everything_get = ids(await client.operation({ resourceType: 'Patient', id: patient, name: '$everything', method: 'GET' }));
const lastn = [
  ['patient', { valueReference: { reference: `Patient/${patient}` } }],
  ['code', { valueCoding: { system: 'http://loinc.org', code: '8867-4' } }],
  ['max', { valueInteger: 2 }],
];
report.lastn_post = ids(await client.operation({ resourceType: 'Observation', name: '$lastn', input: params(lastn) }));
report.lastn_get = ids(await client.operation({
  resourceType: 'Observation', name: '$lastn', method: 'GET',
  input: { patient, code: 'http://loinc.org|8867-4', max: 2 },
}));
const stats = [
  ['patient', { valueString: patient }],
  ['code', { valueString: '8867-4' }],
  ['statistic', { valueCode: 'count,minimum,maximum,average' }],
];
report.stats_post = await client.operation({ resourceType: 'Observation', name: '$stats', input: params(stats) });
report.stats_get = await client.operation({
  resourceType: 'Observation', name: '$stats', method: 'GET',
  input: { patient, code: '8867-4', statistic: 'count,minimum,maximum,average' },
});
// A batch with a read and a search: each entry answers with its resource.
const batch = await client.batch({
  body: {
    resourceType: 'Bundle',
    type: 'batch',
    entry: [
      { request: { method: 'GET', url: `Patient/${patient}` } },
      { request: { method: 'GET', url: `Observation?patient=${patient}&code=http://loinc.org|8867-4` } },
    ],
  },
});
report.batch = batch.entry.map((e) => ({ status: e.response.status, resource: e.resource }));
console.log(JSON.stringify(report));
