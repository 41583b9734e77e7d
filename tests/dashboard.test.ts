// The live dashboard in a real headless Chromium (Debian's chromium, driven by playwright-core): the KPIs equal
// the database's numbers, the charts are drawn, the page moves by itself when rows load (no reload), two open
// pages cost the database one snapshot per change, and an unreachable Kafka or PostgreSQL shows as such.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { readConfig } from "../scripts/lib/config.ts";
import {
  createTestDatabase,
  freePorts,
  pipelineEnv,
  runOk,
  startScript,
  tempDir,
  uniqueName,
  waitFor,
  type Running,
  type TestDatabase,
} from "./helpers.ts";

const CHROMIUM = Bun.which("chromium") ?? Bun.which("chromium-browser");
if (!CHROMIUM && readConfig().requireAllTests) throw new Error("the dashboard's browser tests need chromium (apt-get install chromium)");
if (!CHROMIUM) console.warn("skipping the dashboard's browser tests: no chromium on PATH (apt-get install chromium)");

/** Chromium as root in a container: no sandbox, and none of the background traffic a closed network refuses. */
function launch(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM!,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

async function startDashboard(env: Record<string, string>): Promise<{ url: string; server: Running }> {
  const [port] = freePorts(1) as [number];
  const server = startScript("dashboard.ts", ["--port", String(port)], { ...env, LOG_LEVEL: "info" });
  await server.waitForOutput(/dashboard at http:\/\/127\.0\.0\.1:\d+\//);
  return { url: `http://127.0.0.1:${port}/`, server };
}

const kpi = (page: Page, name: string) => page.getAttribute(`[data-kpi="${name}"]`, "data-value");

describe.skipIf(!CHROMIUM)("the live dashboard", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let env: Record<string, string>;
  let browser: Browser;
  let dashboard: { url: string; server: Running };
  let batches: string[];
  const watched = join(tmp.path, "loaded");

  /** The KPIs as the database computes them from v_sales. */
  async function expected(): Promise<Record<string, string | null>> {
    const [row] = await db.sql`
      select count(distinct order_id)::text as orders, count(*)::text as lines, sum(sales)::text as sales, sum(profit)::text as profit,
             (sum(profit) / nullif(sum(sales), 0))::text as margin, (sum(sales) / nullif(count(distinct order_id), 0))::text as aov
      from v_sales
    `;
    return { ...row } as Record<string, string | null>;
  }

  async function shown(page: Page): Promise<Record<string, string | null>> {
    const out: Record<string, string | null> = {};
    for (const name of ["orders", "lines", "sales", "profit", "margin", "aov"]) out[name] = await kpi(page, name);
    return out;
  }

  /** Loads these batch files with one run of the loader. */
  async function load(names: string[]): Promise<void> {
    for (const name of names) copyFileSync(join(env.BATCHES_DIR!, name), join(watched, name));
    await runOk("load.ts", ["--dir", watched], env);
  }

  beforeAll(async () => {
    db = await createTestDatabase();
    env = pipelineEnv({ topic: uniqueName("dash"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    const file = join(tmp.path, "data.csv");
    await runOk("make_data.ts", ["--out", file, "--rows", "2000"], {});
    await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
    batches = readdirSync(env.BATCHES_DIR!).filter((f) => f.endsWith(".csv")).sort();
    mkdirSync(watched);
    await load(batches.slice(0, 10));
    dashboard = await startDashboard({ ...env, BATCHES_DIR: watched });
    browser = await launch();
  });
  afterAll(async () => {
    await browser?.close();
    dashboard?.server.child.kill("SIGTERM");
    await dashboard?.server.finish();
    await db?.drop();
    tmp.remove();
  });

  test("shows each KPI exactly as the database computes it, unrounded in data-value", async () => {
    const page = await browser.newPage();
    await page.goto(dashboard.url);
    const want = await expected();
    await waitFor("the KPIs on the page", async () => (await kpi(page, "orders")) === want.orders);
    expect(await shown(page)).toEqual(want);
    // The visible text is for people: rounded and formatted.
    expect(await page.textContent('[data-kpi="sales"]')).toMatch(/^\$[\d,]+$/);
    await page.close();
  });

  test("draws the four charts with data", async () => {
    const page = await browser.newPage();
    await page.goto(dashboard.url);
    // Runs in the page: each chart element's ECharts instance, its first series' length, and a drawn canvas.
    const charts = `[...document.querySelectorAll("[data-chart]")].map((el) => [
      el.dataset.chart,
      echarts.getInstanceByDom(el)?.getOption().series[0]?.data.length ?? 0,
      el.querySelector("canvas") !== null,
    ])`;
    await waitFor("the charts", async () => ((await page.evaluate(charts)) as [string, number, boolean][]).every(([, n, canvas]) => n > 0 && canvas));
    const points = ((await page.evaluate(charts)) as [string, number, boolean][]).map(([name, n]) => [name, n]);
    expect(Object.fromEntries(points)).toMatchObject({ products: 10, segments: 3, regions: 4 });
    await page.close();
  });

  test("moves by itself as rows load, and two pages cost the database one snapshot per change", async () => {
    const pages = [await browser.newPage(), await browser.newPage()];
    for (const page of pages) {
      await page.goto(dashboard.url);
      // A mark that a reload would wipe out.
      await page.evaluate(() => ((globalThis as unknown as { mark: number }).mark = 42));
    }
    const before = await expected();
    for (const page of pages) await waitFor("the current numbers", async () => (await kpi(page, "orders")) === before.orders);
    const gathered = async () => Number(((await (await fetch(`${dashboard.url}api/snapshot`)).json()) as { gathered: number }).gathered);
    const g0 = await gathered();
    const [commits0] = await db.sql`select count(distinct loaded_at)::int as n from loaded_files`;

    await load(batches.slice(10));
    const after = await expected();
    expect(after.orders).not.toBe(before.orders);
    for (const page of pages) {
      await waitFor("the new numbers without a reload", async () => (await kpi(page, "lines")) === after.lines);
      expect(await shown(page)).toEqual(after);
      expect(await page.evaluate(() => (globalThis as unknown as { mark: number }).mark)).toBe(42);
    }
    // Each commit is one NOTIFY; each NOTIFY at most one snapshot for all pages together (bursts share one).
    const [commits1] = await db.sql`select count(distinct loaded_at)::int as n from loaded_files`;
    const snapshots = (await gathered()) - g0;
    expect(snapshots).toBeGreaterThanOrEqual(1);
    expect(snapshots).toBeLessThanOrEqual(commits1!.n - commits0!.n);
    const health = await pages[0]!.getAttribute('[data-health="rows"]', "data-value");
    expect(health).toBe(after.lines ?? null);
    for (const page of pages) await page.close();
  });

  test("says how fresh the numbers are", async () => {
    const page = await browser.newPage();
    await page.goto(dashboard.url);
    const snapshot = (await (await fetch(`${dashboard.url}api/snapshot`)).json()) as { at: string };
    await waitFor("the freshness line", async () => (await page.getAttribute("#freshness", "data-at")) === snapshot.at);
    expect(await page.textContent("#freshness")).toMatch(/^numbers as of .+ \(\d+ s ago\)$/);
    await page.close();
  });

  test("shows a clear state, not a blank page, when Kafka and PostgreSQL cannot be reached", async () => {
    const down = await startDashboard({ ...env, KAFKA_BROKERS: "127.0.0.1:1", DATABASE_URL: "postgres://postgres@127.0.0.1:1/sales" });
    const page = await browser.newPage();
    try {
      await page.goto(down.url);
      await waitFor("both banners", async () => (await page.locator('.banner[data-state="postgres"]').count()) === 1 && (await page.locator('.banner[data-state="kafka"]').count()) === 1);
      expect(await page.textContent('.banner[data-state="postgres"]')).toContain("PostgreSQL at 127.0.0.1:1/sales is unreachable");
      expect(await page.getAttribute('[data-health="postgres"]', "data-state")).toBe("down");
      expect(await page.getAttribute('[data-health="kafka"]', "data-state")).toBe("down");
      expect(await page.textContent('[data-kpi="orders"]')).toBe("–");
    } finally {
      await page.close();
      down.server.child.kill("SIGTERM");
      await down.server.finish();
    }
  });
});
