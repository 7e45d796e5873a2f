// Drives the dashboard of a running sagahost in Debian's headless Chromium (playwright-core) the way an
// operator would, and says what it saw. Run by tests/spec/dashboard_spec.lua, which starts the host (with
// the `order` and `refund` saga types of that spec) and checks the host's side afterwards.
//
// Environment:
//   SG_URL        the host, e.g. http://127.0.0.1:41234
//   SG_MODE       "open" (no --auth) or "auth" (the host has --auth)
//   SG_TOKEN      auth: a token with role operate; SG_BAD_TOKEN: one the host does not know
//   SG_SHOTS      the directory for screenshots (created); each path is printed as "screenshot: PATH"
//   SG_PREFIX     a prefix for the business keys of this run (keys are unique per run)
//   SG_SLOW       a factor for every wait (sanitizer builds)
// Prints "ok: ..." per check, "screenshot: PATH" per screenshot, and last "RESULT {json}" (exit 0); or
// "FAIL: ..." with a screenshot of the page as it was (exit 1).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const base = process.env.SG_URL.replace(/\/$/, '');
const mode = process.env.SG_MODE || 'open';
const tok = process.env.SG_TOKEN || '';
const badTok = process.env.SG_BAD_TOKEN || 'not-a-token-of-this-host-000000';
const shots = process.env.SG_SHOTS || 'screenshots';
const prefix = process.env.SG_PREFIX || `w${Date.now()}`;
const slow = Number(process.env.SG_SLOW || 1);
const T = 15000 * slow;
fs.mkdirSync(shots, { recursive: true });

const result = { mode, sagas: {}, screenshots: [], appeared_ms: [], console_errors: [] };
const ok = (what) => console.log(`ok: ${what}`);
function check(cond, what) {
  if (!cond) throw new Error(what);
  ok(what);
}

// the API from the test's side (starting sagas is not the dashboard's job)
async function call(method, p, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (mode === 'auth') headers.Authorization = `Bearer ${tok}`;
  const res = await fetch(base + p, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await res.json();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${JSON.stringify(data)}`);
  return data;
}
const start = async (type, input) => (await call('POST', `/v1/sagas/${type}`, input)).id;

async function waitSaga(id, pred, what) {
  const until = Date.now() + T;
  let s;
  while (Date.now() < until) {
    s = await call('GET', `/v1/sagas/${id}`);
    if (pred(s)) return s;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`saga ${id} never ${what}: ${JSON.stringify(s && s.status)}`);
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
const context = await browser.newContext({ viewport: { width: 1360, height: 860 }, deviceScaleFactor: 1 });
const page = await context.newPage();
page.setDefaultTimeout(T);
page.on('pageerror', (e) => result.console_errors.push(`pageerror: ${e.message}`));
page.on('console', (m) => {
  // the 401s of the token prompt and a missing stream are expected answers, not errors of the page
  if (m.type() === 'error' && !/status of (401|404)/.test(m.text())) result.console_errors.push(m.text());
});
let n = 0;
async function shot(name, opts = {}) {
  const file = path.resolve(shots, `${mode}-${String(++n).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, ...opts });
  result.screenshots.push(file);
  console.log(`screenshot: ${file}`);
  return file;
}
const row = (id) => page.locator(`#sagas tbody tr[data-id="${id}"]`);
const statusOf = (id) => row(id).getAttribute('data-status');

async function waitLive() {
  await page.waitForSelector('#conn.live', { timeout: T });
  ok('the event stream is connected (live)');
}

// --- without auth ---------------------------------------------------------------------------------
async function openRun() {
  await page.goto(base + '/');
  await page.waitForSelector('#sagas');
  await waitLive();
  // counts before, to see them move
  const before = Number(await page.locator('#count-running .n').textContent()) || 0;

  // started after the page is open: they must show up without a reload
  const keys = ['1', '2', '3', '4'].map((i) => `${prefix}-${i}`);
  const ids = [];
  for (const k of keys) {
    const t0 = Date.now();
    const id = await start('order', { order_id: k, amount: 42, wait: '60s' });
    ids.push(id);
    await row(id).waitFor({ timeout: T });
    result.appeared_ms.push(Date.now() - t0);
  }
  check(true, `4 sagas started through the API appeared in the list without a reload (in ${result.appeared_ms.join(', ')} ms)`);
  await page.waitForFunction(([sel, min]) => Number(document.querySelector(sel).textContent) >= min,
    ['#count-running .n', before + 4], { timeout: T });
  ok('the running count went up by at least 4');
  result.sagas.listed = ids;

  // a few more in other statuses, for the screenshots and the operator buttons
  const done = await start('order', { order_id: `${prefix}-done`, amount: 7, wait: '10ms' });
  const declined = await start('order', { order_id: `${prefix}-declined`, amount: 9, card: 'declined' });
  const stuck = await start('refund', { order_id: `${prefix}-stuck`, amount: 13 });
  for (const [id, st] of [[done, 'completed'], [declined, 'compensated'], [stuck, 'compensation_failed']]) {
    await page.waitForFunction(([sel, want]) => document.querySelector(sel)?.dataset.status === want,
      [`#sagas tbody tr[data-id="${id}"]`, st], { timeout: T });
  }
  ok('rows change status live: completed, compensated and compensation_failed sagas show as such');
  Object.assign(result.sagas, { done, declined, stuck });
  await page.waitForTimeout(600); // let the "new row" highlight fade
  await shot('list');

  // search by business key
  const target = ids[1];
  await page.fill('#search', keys[1]);
  await page.press('#search', 'Enter');
  await page.waitForFunction(([id]) => {
    const trs = document.querySelectorAll('#sagas tbody tr');
    return trs.length === 1 && trs[0].dataset.id === id;
  }, [target], { timeout: T });
  check((await row(target).locator('td.key').textContent()) === keys[1], `the search for key ${keys[1]} finds that saga alone`);
  await shot('search-by-key');
  // and by saga id
  await page.fill('#search', ids[2]);
  await page.press('#search', 'Enter');
  await page.waitForFunction(([id]) => {
    const trs = document.querySelectorAll('#sagas tbody tr');
    return trs.length === 1 && trs[0].dataset.id === id;
  }, [ids[2]], { timeout: T });
  ok('the search by saga id finds that saga alone');
  await page.fill('#search', keys[1]);
  await page.press('#search', 'Enter');
  await row(target).waitFor();

  // open it: steps, input, data
  await row(target).click();
  await page.waitForSelector(`#saga[data-id="${target}"] #timeline`);
  await page.waitForSelector('#timeline li[data-phase="action"][data-status="running"]');
  const stepNames = await page.locator('#timeline li[data-phase="action"] .ev-title').allTextContents();
  check(stepNames.some((t) => t.includes('ReserveStock')) && stepNames.some((t) => t.includes('ChargeCard'))
    && stepNames.some((t) => t.includes('AwaitShipment')), `the saga page shows its steps (${stepNames.length} attempts)`);
  check((await page.locator('#saga-status .badge').getAttribute('data-status')) === 'running', 'the saga is running');
  check((await page.locator('.saga-key').textContent()) === keys[1], 'the saga page shows its business key');
  check((await page.locator('.side pre.json').first().textContent()).includes(keys[1]), 'the input is shown as JSON');
  await shot('saga-running');

  // compensate: the plan first, then a reason, then confirm
  await page.click('#btn-compensate');
  await page.waitForSelector('#compensate-dialog #plan');
  const plan = await page.locator('#plan li').allTextContents();
  check(plan.length === 2 && plan[0].includes('ChargeCard') && plan[1].includes('ReserveStock'),
    `the plan lists the compensations to run, last step first: ${plan.join(' | ')}`);
  check(await page.locator('#dlg-confirm').isDisabled(), 'confirm is disabled until a reason is given');
  const reason = 'customer cancelled the order (browser test)';
  await page.fill('#dlg-reason', reason);
  if (await page.locator('#dlg-by').count()) await page.fill('#dlg-by', 'webtester');
  await shot('compensate-plan');
  await page.click('#dlg-confirm');
  await page.waitForSelector('#compensate-dialog', { state: 'detached' });
  await page.waitForSelector('#saga-status .badge[data-status="compensated"]', { timeout: T });
  ok('after confirming, the saga page turned compensated by itself');
  const op = page.locator('#timeline li[data-event="operator_compensate"]');
  await op.waitFor();
  const opText = await op.textContent();
  check(opText.includes(reason) && opText.includes('webtester'), 'the timeline shows the operator action with who and why');
  const comps = await page.locator('#timeline li[data-phase="compensate"][data-status="completed"]').count();
  check(comps === 2, 'both compensations are in the timeline as completed');
  check(await page.locator('#btn-compensate').isDisabled(), 'compensate is disabled on a finished saga');
  await shot('saga-compensated');
  result.sagas.compensated = target;
  result.reason = reason;

  // resolve a compensation_failed one: a note, then confirm
  await page.goto(`${base}/#/saga/${stuck}`);
  await page.waitForSelector('#saga-status .badge[data-status="compensation_failed"]');
  check(!(await page.locator('#btn-retry').isDisabled()) && !(await page.locator('#btn-resolve').isDisabled()),
    'retry and resolve are offered on a compensation_failed saga');
  await page.waitForSelector('#timeline li[data-phase="compensate"][data-status="failed"] .ev-error');
  ok('the failed compensation attempt shows its error');
  await shot('saga-compensation-failed');
  await page.click('#btn-resolve');
  const note = 'refunded by hand in the payment console (browser test)';
  await page.fill('#dlg-note', note);
  if (await page.locator('#dlg-by').count()) await page.fill('#dlg-by', 'webtester');
  await page.click('#dlg-confirm');
  await page.waitForSelector('#saga-status .badge[data-status="resolved"]');
  check((await page.locator('#timeline li[data-event="operator_resolve"]').textContent()).includes(note),
    'resolve with a note: the saga is resolved and the note is in its history');
  result.sagas.resolved = stuck;
  result.note = note;

  // back to the list: the compensated one says so there too
  await page.click('a.back');
  await page.click('#filter-clear');
  await page.waitForFunction(([sel]) => document.querySelector(sel)?.dataset.status === 'compensated',
    [`#sagas tbody tr[data-id="${target}"]`], { timeout: T });
  ok('back in the list the saga is compensated');

  // definitions and breakers
  await page.click('[data-nav="definitions"]');
  await page.waitForSelector('#types tr[data-type="order"]');
  await page.waitForSelector('#files tr.bad .load-error');
  ok('definitions list the types with versions and the file that failed to load, with its error');
  await shot('definitions');
  await page.click('[data-nav="breakers"]');
  await page.waitForSelector('#view h1');
  await page.waitForSelector('#view .card');
  ok('breakers page shows');
  await page.click('[data-nav="sagas"]');
  await row(ids[0]).waitFor();
  await page.waitForTimeout(300);
  await shot('overview');

  // a host without the event stream (as before it had one): the page polls every 2 s instead
  const other = await context.newPage();
  await other.route(/\/v1\/events/, (r) => r.fulfill({ status: 404, contentType: 'application/json',
    body: '{"error":"no route for /v1/events"}' }));
  other.on('pageerror', (e) => result.console_errors.push(`pageerror: ${e.message}`));
  await other.goto(base + '/');
  await other.waitForSelector('#conn.polling', { timeout: T });
  const t0 = Date.now();
  const polled = await start('order', { order_id: `${prefix}-polled`, amount: 3, wait: '10ms' });
  await other.waitForFunction(([sel]) => document.querySelector(sel)?.dataset.status === 'completed',
    [`#sagas tbody tr[data-id="${polled}"]`], { timeout: T });
  check(Date.now() - t0 < 5000 * slow, `without the stream (404) the page polls: a new saga showed up in ${Date.now() - t0} ms`);
  await other.close();

  // a stream that ends: the page connects again, with Last-Event-ID, and is live again
  const third = await context.newPage();
  const lastIds = [];
  await third.route(/\/v1\/events/, (r) => {
    lastIds.push(r.request().headers()['last-event-id'] || null);
    if (lastIds.length > 1) return r.continue();
    return r.fulfill({ status: 200, headers: { 'Content-Type': 'text/event-stream' },
      body: ': keep-alive\n\nid: 1\ndata: {"event_id":"1","kind":"noop"}\n\n' });
  });
  third.on('pageerror', (e) => result.console_errors.push(`pageerror: ${e.message}`));
  await third.goto(base + '/');
  const until = Date.now() + T;
  while (lastIds.length < 2 && Date.now() < until) await third.waitForTimeout(100);
  await third.waitForSelector('#conn.live');
  check(lastIds.length >= 2 && lastIds[0] === null && lastIds[1] === '1',
    `the page reconnects after the stream ended, sending Last-Event-ID (${JSON.stringify(lastIds)})`);
  const again = await start('order', { order_id: `${prefix}-again`, amount: 5, wait: '60s' });
  await third.locator(`#sagas tbody tr[data-id="${again}"]`).waitFor();
  ok('after the reconnect new sagas appear live again');
  await third.close();
}

// --- with --auth ----------------------------------------------------------------------------------
async function authRun() {
  await page.goto(base + '/');
  await page.waitForSelector('#token-dialog', { timeout: T });
  ok('the host answered 401: the page asks for a token');
  await shot('token-prompt');
  await page.fill('#dlg-token', badTok);
  await page.click('#dlg-confirm');
  await page.waitForSelector('#token-dialog .refused', { timeout: T });
  check((await page.locator('#token-dialog .refused').textContent()).includes('refused'), 'a wrong token is refused and asked again');
  await shot('token-refused');
  await page.fill('#dlg-token', tok);
  await page.click('#dlg-confirm');
  await page.waitForSelector('#token-dialog', { state: 'detached' });
  await waitLive();
  check(await page.evaluate(() => sessionStorage.getItem('sagahost.token')) === tok, 'the right token is kept in sessionStorage');
  const id = await start('order', { order_id: `${prefix}-auth`, amount: 1, wait: '60s' });
  await row(id).waitFor();
  ok('with the token the list loads and a new saga appears live');
  await page.reload();
  await row(id).waitFor();
  check(await page.locator('#token-dialog').count() === 0, 'after a reload the token is still there (no prompt)');
  await row(id).click();
  await page.waitForSelector('#timeline li[data-status="running"]');
  await page.click('#btn-compensate');
  await page.waitForSelector('#compensate-dialog #plan');
  check(await page.locator('#dlg-by').count() === 0, 'with a token the dialog does not ask who you are (the token says)');
  await page.fill('#dlg-reason', 'auth run');
  await page.click('#dlg-confirm');
  await page.waitForSelector('#saga-status .badge[data-status="compensated"]');
  ok('compensate with the token: the saga became compensated');
  await shot('auth-compensated');
  result.sagas.auth_compensated = id;
  await page.click('#signout');
  await page.waitForSelector('#token-dialog', { timeout: T });
  ok('sign out forgets the token: the prompt is back');
}

let code = 0;
try {
  if (mode === 'auth') await authRun();
  else await openRun();
  check(result.console_errors.length === 0, `no errors in the page's console${result.console_errors.length ? `: ${result.console_errors.join(' / ')}` : ''}`);
} catch (e) {
  code = 1;
  console.log(`FAIL: ${e.message.split('\n')[0]}`);
  if (result.console_errors.length) console.log(`console: ${result.console_errors.join(' / ')}`);
  try { await shot('failure', { fullPage: true }); } catch { /* the page is gone */ }
}
console.log(`RESULT ${JSON.stringify(result)}`);
await browser.close();
process.exit(code);
