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
  let callback = null;
  // The app is not running: answer its redirect URI here and remember where the browser went.
  await page.route((url) => url.href.startsWith(redirectUri), async (route) => {
    callback = route.request().url();
    await route.fulfill({ status: 200, contentType: 'text/plain', body: 'app callback' });
  });

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
  await Promise.all([page.waitForURL((u) => u.href.startsWith(redirectUri)), page.click('#allow')]);
  if (!callback) callback = page.url();
  console.log(JSON.stringify({ callback, scopes, approvalTitle }));
} finally {
  await browser.close();
}
