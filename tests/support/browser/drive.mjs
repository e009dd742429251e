#!/usr/bin/env node
// Drive the system's headless Chromium through one scenario.
//
//   node tests/support/browser/drive.mjs < scenario.json
//
// stdin: {"steps":[...], "timeoutMs":25000, "stepTimeoutMs":10000}
// Steps (one key names the action; the step's result goes into "results"):
//   {"goto": url}                   -> {"status": n|null, "url": finalUrl}
//   {"eval": "js expression"}       -> {"value": ...}  (promises are awaited)
//   {"fill": selector, "value": s}  -> {}
//   {"click": selector}             -> {}
//   {"waitForURL": url-or-glob}     -> {"url": ...}   ("**" globs as in Playwright)
//   {"waitForSelector": selector}   -> {}
//   {"content": true}               -> {"value": html}
//   {"cookies": true}               -> {"value": [cookies of the context]}
//   {"sleep": ms}                   -> {}
// stdout: exactly one JSON line
//   {"ok":true,"results":[...],"console":[{type,text,url}],"cspViolations":[...],
//    "requests":[{method,url,status,failure?,resourceType}],"chromium":"<version>"}
// On any failure (bad input, launch error, a step throwing, overall timeout) the
// same object with "ok":false,"error":"...","failedStep":i is printed and the
// exit code is 1 (2 for the overall timeout). The browser is always closed.
//
// Env: CHROMIUM_PATH (default /usr/bin/chromium); DRIVE_TIMEOUT_MS (whole run,
// default and maximum 60000; exit 2 when hit).
// Profile: chromium.launch() with Playwright's default fresh temporary
// user-data-dir (created per run and deleted on close), plus a new context.

import { chromium } from 'playwright-core';

// Generous: on a loaded 2-core machine Chromium has taken over 15 s to start.
const HARD_LIMIT_MS = 60_000;
const out = { ok: false, results: [], console: [], cspViolations: [], requests: [] };
let browser = null;
let printed = false;

function finish(code) {
  if (!printed) {
    printed = true;
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  process.exitCode = code;
}

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  await Promise.race([b.close().catch(() => {}), new Promise((r) => setTimeout(r, 3000))]);
}

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, rej) => { t = setTimeout(() => rej(new Error(`${what}: timed out after ${ms} ms`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

// Runs in every document before its own scripts: record CSP violations.
const INIT_SCRIPT = `(() => {
  document.addEventListener('securitypolicyviolation', (e) => {
    try {
      window.__portcullisCsp({
        documentURI: e.documentURI, violatedDirective: e.violatedDirective,
        effectiveDirective: e.effectiveDirective, blockedURI: e.blockedURI,
        disposition: e.disposition, sourceFile: e.sourceFile,
        lineNumber: e.lineNumber, sample: e.sample,
      });
    } catch (_) {}
  }, true);
})();`;

async function runStep(page, step, stepTimeout) {
  if ('goto' in step) {
    const resp = await page.goto(step.goto, { timeout: stepTimeout, waitUntil: step.waitUntil || 'load' });
    return { status: resp ? resp.status() : null, url: page.url() };
  }
  if ('eval' in step) {
    return { value: await withTimeout(page.evaluate(step.eval), stepTimeout, 'eval') };
  }
  if ('fill' in step) { await page.fill(step.fill, String(step.value ?? ''), { timeout: stepTimeout }); return {}; }
  if ('click' in step) { await page.click(step.click, { timeout: stepTimeout }); return {}; }
  if ('waitForURL' in step) {
    await page.waitForURL(step.waitForURL, { timeout: stepTimeout, waitUntil: step.waitUntil || 'load' });
    return { url: page.url() };
  }
  if ('waitForSelector' in step) { await page.waitForSelector(step.waitForSelector, { timeout: stepTimeout }); return {}; }
  if ('content' in step) return { value: await page.content() };
  if ('cookies' in step) return { value: await page.context().cookies() };
  if ('sleep' in step) { await new Promise((r) => setTimeout(r, Math.min(Number(step.sleep) || 0, stepTimeout))); return {}; }
  throw new Error(`unknown step: ${JSON.stringify(step)}`);
}

async function main() {
  let scenario;
  try {
    scenario = JSON.parse(await withTimeout(readStdin(), 5000, 'reading stdin'));
  } catch (e) {
    throw new Error(`bad scenario on stdin: ${e.message}`);
  }
  if (!scenario || !Array.isArray(scenario.steps)) throw new Error('scenario must be an object with a "steps" array');
  const stepTimeout = Math.min(Number(scenario.stepTimeoutMs) || 10_000, HARD_LIMIT_MS);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
    timeout: 40_000,
  });
  out.chromium = browser.version();
  const context = await browser.newContext();
  context.setDefaultTimeout(stepTimeout);
  await context.exposeBinding('__portcullisCsp', (_src, v) => { out.cspViolations.push(v); });
  await context.addInitScript({ content: INIT_SCRIPT });

  const reqIndex = new Map();
  context.on('request', (r) => {
    const rec = { method: r.method(), url: r.url(), status: null, resourceType: r.resourceType() };
    reqIndex.set(r, rec);
    out.requests.push(rec);
  });
  context.on('response', (resp) => {
    const rec = reqIndex.get(resp.request());
    if (rec) rec.status = resp.status();
  });
  context.on('requestfailed', (r) => {
    const rec = reqIndex.get(r);
    if (rec) rec.failure = r.failure()?.errorText ?? 'failed';
  });

  const page = await context.newPage();
  page.on('console', (m) => out.console.push({ type: m.type(), text: m.text(), url: m.location()?.url || '' }));
  page.on('pageerror', (e) => out.console.push({ type: 'pageerror', text: String(e && e.message || e), url: page.url() }));

  for (let i = 0; i < scenario.steps.length; i++) {
    try {
      out.results.push(await runStep(page, scenario.steps[i], stepTimeout));
    } catch (e) {
      out.failedStep = i;
      throw e;
    }
  }
  // Let late securitypolicyviolation events/console messages arrive.
  await new Promise((r) => setTimeout(r, Number(scenario.settleMs ?? 100)));
  out.ok = true;
}

const overallMs = Math.min(Number(process.env.DRIVE_TIMEOUT_MS) || HARD_LIMIT_MS, HARD_LIMIT_MS);
const hard = setTimeout(async () => {
  out.ok = false;
  out.error = `overall timeout after ${overallMs} ms`;
  finish(2);
  await closeBrowser();
  process.exit(2);
}, overallMs);

try {
  await main();
  finish(0);
} catch (e) {
  out.ok = false;
  out.error = String(e && e.stack ? e.message : e);
  finish(1);
} finally {
  await closeBrowser();
  clearTimeout(hard);
}
