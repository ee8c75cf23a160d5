// Drives the SMART standalone launch through the fhirgate pages in headless Chromium:
// authorize → sign-in page → sign-up → approval page → Allow → redirect to the app with a code.
// Usage: node smart_login.mjs AUTHORIZE_URL REDIRECT_URI EMAIL PASSWORD
// Prints one JSON line: {"callback": URL, "scopes": [..], "approvalTitle": ".."}.
import { chromium } from 'playwright-core';

const [authorizeUrl, redirectUri, email, password] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage();
  await page.goto(authorizeUrl);
  // Not signed in: the server sent us to the sign-in page, which links to sign-up.
  await page.waitForSelector('#sign-in');
  await page.click('text=Create one');
  await page.waitForSelector('#sign-up');
  await page.fill('#given', 'Ada');
  await page.fill('#family', 'Browser');
  await page.fill('#email', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('#sign-up')]);

  // Back at the authorization request: the approval page names the app and the data.
  await page.waitForSelector('#allow');
  const approvalTitle = await page.textContent('h1');
  const scopes = await page.$$eval('#scopes li', (items) => items.map((li) => li.textContent));
  // Allow: the browser is sent to the app's redirect URI (a stub app served by the test).
  await Promise.all([page.waitForURL((u) => u.href.startsWith(redirectUri)), page.click('#allow')]);
  const callback = page.url();
  console.log(JSON.stringify({ callback, scopes, approvalTitle }));
} finally {
  await browser.close();
}
