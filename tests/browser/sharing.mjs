// The patient's sharing page in headless Chromium, on a phone-sized screen: sign in, then grant
// or revoke a partner's access to vital signs with the switch on the page.
// Usage: node sharing.mjs ROOT_URL EMAIL PASSWORD PARTNER_SLUG grant|revoke
// Prints one JSON line: {"checked": [ids of checked switches], "history": [..]}.
import { chromium } from 'playwright-core';

const [root, email, password, partner, mode] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  await page.goto(`${root}/auth/login`);
  await page.fill('#email', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  await Promise.all([page.waitForNavigation(), page.click('#sharing')]);
  const form = `#partner-${partner}`;
  await page.waitForSelector(form);
  if (mode === 'grant') {
    await page.check(`#${partner}-vital-signs`);
  } else {
    for (const box of await page.$$(`${form} input[type=checkbox]`)) {
      await box.uncheck();
    }
  }
  await Promise.all([page.waitForNavigation(), page.click(`#save-${partner}`)]);
  const checked = await page.$$eval(`${form} input[type=checkbox]:checked`, (els) => els.map((e) => e.id));
  const history = await page.$$eval('#history li', (items) => items.map((li) => li.textContent));
  console.log(JSON.stringify({ checked, history }));
} finally {
  await browser.close();
}
