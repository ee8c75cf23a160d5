// The demo patient's pages in headless Chromium, on a phone-sized screen: sign in with the
// account `fhirgate demo` printed, then read the account, sharing and access-log pages.
// Usage: node demo_pages.mjs ROOT_URL EMAIL PASSWORD
// Prints one JSON line: {"record": [..], "sharing": "...", "access_rows": N}.
import { chromium } from 'playwright-core';

const [root, email, password] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const context = await browser.newContext({ viewport: { width: 420, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${root}/`);
  await Promise.all([page.waitForNavigation(), page.click('a[href="/auth/login"]')]);
  await page.fill('#email', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  const record = await page.$$eval('#record li', (items) => items.map((li) => li.textContent.trim()));
  await Promise.all([page.waitForNavigation(), page.click('#sharing')]);
  const sharing = await page.textContent('main, body');
  await page.goBack();
  await Promise.all([page.waitForNavigation(), page.click('#access')]);
  const accessRows = await page.$$eval('table tbody tr', (rows) => rows.length);
  console.log(JSON.stringify({ record, sharing, access_rows: accessRows }));
} finally {
  await browser.close();
}
