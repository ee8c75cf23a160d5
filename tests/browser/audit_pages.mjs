// Opens the audit pages in headless Chromium: an auditor signs in, filters the trail by partner,
// opens an event and takes the CSV link; a patient signs in and opens "Who accessed my data".
// Usage: node audit_pages.mjs ROOT_URL AUDITOR_EMAIL PATIENT_EMAIL PASSWORD PARTNER
// Prints one JSON line: {"auditorRows": [..], "eventText": "..", "csv": "..", "patientRows": [..]}.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const [root, auditorEmail, patientEmail, password, partner] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

async function signIn(browser, email) {
  // A phone-sized window: the pages must work there too.
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, acceptDownloads: true });
  const page = await context.newPage();
  await page.goto(`${root}/auth/login`);
  await page.fill('#email', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  return page;
}

const rows = (page, table) =>
  page.$$eval(`${table} tbody tr`, (trs) => trs.map((tr) => tr.innerText.replace(/\s+/g, ' ').trim()));

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const auditor = await signIn(browser, auditorEmail);
  await auditor.goto(`${root}/audit`);
  await auditor.fill('#partner', partner);
  await Promise.all([auditor.waitForNavigation(), auditor.click('#apply')]);
  const auditorRows = await rows(auditor, '#events');
  await Promise.all([auditor.waitForNavigation(), auditor.click('#events tbody tr a')]);
  const eventText = await auditor.textContent('#event');
  await auditor.goBack();
  // The CSV link downloads a file (Content-Disposition: attachment).
  const [download] = await Promise.all([auditor.waitForEvent('download'), auditor.click('#csv')]);
  const csv = readFileSync(await download.path(), 'utf8');

  const patient = await signIn(browser, patientEmail);
  await Promise.all([patient.waitForNavigation(), patient.click('#access')]);
  const patientRows = await rows(patient, '#access');
  console.log(JSON.stringify({ auditorRows, eventText, csv, patientRows }));
} finally {
  await browser.close();
}
