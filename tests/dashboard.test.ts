// The live dashboard in a real headless Chromium (Debian's chromium, driven by playwright-core): the KPIs equal
// the database's numbers, the charts are drawn, the page moves by itself when rows load (no reload), two open
// pages cost the database one snapshot per change, and an unreachable Kafka or PostgreSQL shows as such. make
// stream right after make demo moves an open page within 15 s, in a database of its own, and leaves the demo's
// totals as they were. Then
// slow and hostile clients: a page that stops reading gets the newest snapshot, never a queue; a DNS-rebinding
// page and other origins are refused (curl and Chromium, beside the same requests by the dashboard's own names);
// a flood of NOTIFY from bi_reader costs at most one read of the views a second. Filters: each slice (region,
// segment, order-date range, and all three) shows PostgreSQL's own numbers for the same rows of v_sales, from
// the controls or from a shared address, and keeps them through a live load; pages on one filter share one read
// per change; bad parameters get a 400 naming them; at most MAX_FILTERS filters are followed at once.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readdirSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { BEHIND_LIMIT_MS, createFanOut, filterQuery, MAX_FILTERS, MAX_PAGES, parseFilter, refuseForeign, type Filter } from "../scripts/dashboard.ts";
import { readConfig } from "../scripts/lib/config.ts";
import { connect, databaseUrl, maintenance, withDatabase } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import {
  BASE,
  BROKERS,
  createTestDatabase,
  dropDatabase,
  freePorts,
  pipelineEnv,
  ROOT,
  runOk,
  runPipeline,
  signalGroup,
  startCommand,
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
function launch(extra: string[] = []): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM!,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", ...extra],
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

    await load(batches.slice(11)); // batches[10] is the filters' live load
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

  // --- Filters. The expected numbers are PostgreSQL's for the same rows of v_sales, written apart from the
  // server's queries: an absent field keeps every row, both dates are inclusive.

  async function expectedSlice(filter: Filter) {
    const [region, segment, from, to] = [filter.region ?? null, filter.segment ?? null, filter.from ?? null, filter.to ?? null];
    const rows = () => db.sql`
      (select * from v_sales
       where (${region}::text is null or region = ${region}) and (${segment}::text is null or segment = ${segment})
         and order_date between coalesce(${from}::date, '-infinity') and coalesce(${to}::date, 'infinity'))
    `;
    const plain = <T extends object>(list: readonly T[]) => list.map((row) => ({ ...row }));
    const [kpis] = await db.sql`
      select count(distinct order_id)::text as orders, count(*)::text as lines, coalesce(sum(sales), 0)::text as sales,
             coalesce(sum(profit), 0)::text as profit, (sum(profit) / nullif(sum(sales), 0))::text as margin,
             (sum(sales) / nullif(count(distinct order_id), 0))::text as aov
      from ${rows()} s
    `;
    const monthly = await db.sql`
      select to_char(date_trunc('month', order_date), 'YYYY-MM') as month, sum(sales)::text as sales, sum(profit)::text as profit
      from ${rows()} s group by 1 order by 1
    `;
    const products = await db.sql`
      select p.product_name as product, sum(s.sales)::text as sales, sum(s.profit)::text as profit
      from ${rows()} s join v_product_performance p on p.product_id = s.product_id
      group by s.product_id, p.product_name order by sum(s.sales) desc, s.product_id limit 10
    `;
    const segments = await db.sql`
      select segment, sum(sales)::text as sales, sum(profit)::text as profit, count(distinct order_id)::text as orders
      from ${rows()} s group by segment order by segment
    `;
    const regions = await db.sql`select region, sum(sales)::text as sales, sum(profit)::text as profit from ${rows()} s group by region order by region`;
    return { kpis: { ...kpis }, monthly: plain(monthly), products: plain(products), segments: plain(segments), regions: plain(regions) };
  }

  /** The page's numbers: each KPI's data-value and each chart's data-values. */
  async function shownSlice(page: Page) {
    const chart = async (name: string) => JSON.parse((await page.getAttribute(`[data-chart="${name}"]`, "data-values")) || "null") as unknown;
    return { kpis: await shown(page), monthly: await chart("monthly"), products: await chart("products"), segments: await chart("segments"), regions: await chart("regions") };
  }

  /** Waits for the page to show the slice of `filter` (its query, and numbers of it), then compares every number. */
  async function expectSlice(page: Page, filter: Filter): Promise<void> {
    const query = filterQuery(filter);
    await waitFor(`the page to show ${query}`, async () => (await page.getAttribute("body", "data-query")) === query && (await kpi(page, "orders")) !== "");
    expect([query, await shownSlice(page)]).toEqual([query, await expectedSlice(filter)]);
  }

  /** An order-date range inside the data: from its 30th to its 60th percentile. */
  async function dateRange(): Promise<{ from: string; to: string }> {
    const [range] = await db.sql<{ from: string; to: string }[]>`
      select percentile_disc(0.3) within group (order by order_date)::text as from, percentile_disc(0.6) within group (order by order_date)::text as to
      from v_sales
    `;
    return { ...range! };
  }

  test("each filter's controls show PostgreSQL's own numbers for that slice of v_sales, and the address follows them", async () => {
    const page = await browser.newPage();
    try {
      await page.goto(dashboard.url);
      await waitFor("the regions to choose from", async () => (await page.locator('[data-filter="region"] option[value="West"]').count()) === 1);
      const { from, to } = await dateRange();
      const filters: Filter[] = [{ region: "West" }, { segment: "Consumer" }, { from, to }, { region: "East", segment: "Corporate", from, to }];
      for (const filter of filters) {
        await page.selectOption('[data-filter="region"]', filter.region ?? "");
        await page.selectOption('[data-filter="segment"]', filter.segment ?? "");
        await page.fill('[data-filter="from"]', filter.from ?? "");
        await page.fill('[data-filter="to"]', filter.to ?? "");
        await expectSlice(page, filter);
        expect(new URL(page.url()).search).toBe(`?${filterQuery(filter)}`);
      }
    } finally {
      await page.close();
    }
  });

  test("a shared address sets the controls and shows its slice", async () => {
    const filter = { region: "West", segment: "Consumer", ...(await dateRange()) };
    const page = await browser.newPage();
    try {
      await page.goto(`${dashboard.url}?${filterQuery(filter)}`);
      await expectSlice(page, filter);
      const controls: Record<string, string> = {};
      for (const name of ["region", "segment", "from", "to"]) controls[name] = await page.inputValue(`[data-filter="${name}"]`);
      expect(controls).toEqual(filter);
      // The choices are All and every region in the data, whatever the filter.
      const regions = await db.sql`select distinct region from v_sales order by region`;
      const options = await page.locator('[data-filter="region"] option').evaluateAll((o) => o.map((e) => e.getAttribute("value")));
      expect(options).toEqual(["", ...regions.map((r) => r.region)]);
    } finally {
      await page.close();
    }
  });

  test("two pages on one filter cost one read per change, and a live load moves both to the new numbers of their slice", async () => {
    const filter = { region: "West", segment: "Consumer" };
    const query = filterQuery(filter);
    const sliceSnapshot = async () => (await (await fetch(`${dashboard.url}api/snapshot?${query}`)).json()) as { gathered: number; at: string; filterPages: number };
    const pages = [await browser.newPage(), await browser.newPage()];
    const onBoth = async (gathered: number) => {
      for (const page of pages) {
        await waitFor(`read ${gathered} of ${query} on the page`, async () => (await page.getAttribute("body", "data-gathered")) === String(gathered), 10_000);
      }
      for (const page of pages) await expectSlice(page, filter);
      // The same snapshot on both pages, and the slice read that many times in all: once per change, not per page.
      const ats = await Promise.all(pages.map((page) => page.getAttribute("#freshness", "data-at")));
      expect(await sliceSnapshot()).toMatchObject({ gathered, at: ats[0], filterPages: 2 });
      expect(ats[1]).toBe(ats[0]);
    };
    try {
      for (const page of pages) await page.goto(`${dashboard.url}?${query}`);
      await onBoth(1); // opened: one read for the two pages
      const before = await expectedSlice(filter);
      await load([batches[10]!]); // one file, one commit, one NOTIFY
      expect((await expectedSlice(filter)).kpis.orders).not.toBe(before.kpis.orders);
      await onBoth(2);
    } finally {
      for (const page of pages) await page.close();
    }
  });

  test("answers 400 naming the parameter for an unknown one, a malformed date or from after to; a value that matches nothing shows zeros", async () => {
    const refused: [path: string, message: string][] = [
      ["api/snapshot?colour=red", 'unknown parameter "colour": the dashboard takes region, segment, from, to'],
      ["api/events?from=2016-13-01", 'parameter "from": "2016-13-01" is not a date (YYYY-MM-DD)'],
      ["api/snapshot?to=2016-02-30", 'parameter "to": "2016-02-30" is not a date (YYYY-MM-DD)'],
      ["api/events?from=2016-07-01&to=2016-06-30", 'parameter "from" (2016-07-01) is after parameter "to" (2016-06-30)'],
      ["api/snapshot?region=West&region=East", 'parameter "region" is given more than once'],
      ["api/snapshot?segment=Consumer%00", 'parameter "segment" holds a NUL character (%00), which no value in PostgreSQL can'],
    ];
    for (const [path, named] of refused) {
      const response = await fetch(`${dashboard.url}${path}`);
      expect([path, response.status, await response.text()]).toEqual([path, 400, `${named}\n`]);
    }
    const nothing = (await (await fetch(`${dashboard.url}api/snapshot?region=Atlantis`)).json()) as { business: { kpis: unknown; regions: unknown[] } };
    expect(nothing.business.kpis).toEqual({ orders: "0", lines: "0", sales: "0", profit: "0", margin: null, aov: null });
    expect(nothing.business.regions).toEqual([]);
    // The page of a refused address says why.
    const page = await browser.newPage();
    try {
      await page.goto(`${dashboard.url}?from=2016-13-01`);
      await waitFor("the filter's banner", async () => (await page.locator('.banner[data-state="filter"]').count()) === 1);
      expect(await page.textContent('.banner[data-state="filter"]')).toContain('parameter "from": "2016-13-01" is not a date');
      expect(await page.locator('.banner[data-state="server"]').count()).toBe(0); // the server answered, with a 400
    } finally {
      await page.close();
    }
  });

  test(`follows at most ${MAX_FILTERS} filters at once (503 beyond), and forgets a filter whose pages all closed`, async () => {
    const filters = async () => ((await (await fetch(`${dashboard.url}api/snapshot`)).json()) as { filters: number }).filters;
    const before = await filters(); // those of pages still open, if any
    const streams: AbortController[] = [];
    // Each response is kept until the end: one the test let go of could be collected, and its stream closed.
    const open: Response[] = [];
    try {
      for (let i = before; i < MAX_FILTERS; i++) {
        streams.push(new AbortController());
        open.push(await fetch(`${dashboard.url}api/events?region=r${i}`, { signal: streams.at(-1)!.signal }));
        expect(open.at(-1)!.status).toBe(200);
      }
      expect(await filters()).toBe(MAX_FILTERS);
      const beyond = await fetch(`${dashboard.url}api/events?region=one-more`);
      expect([beyond.status, await beyond.text()]).toEqual([503, `more than ${MAX_FILTERS} filters are in use\n`]);
    } finally {
      for (const stream of streams) stream.abort();
    }
    await waitFor("the filters without pages to be dropped", async () => (await filters()) === before);
    const again = new AbortController();
    expect((await fetch(`${dashboard.url}api/events?region=one-more`, { signal: again.signal })).status).toBe(200);
    again.abort();
  });
});

// --- make stream right after make demo: the same make target, pointed at a test's own database, topic, group and
// folder. Its live database starts empty, so the replayed rows are new there and an open page moves.

describe.skipIf(!CHROMIUM)("make stream after make demo", () => {
  const tmp = tempDir();
  const data = join(ROOT, "data", "Sample-Superstore.csv");
  let demo: TestDatabase;
  let env: Record<string, string>;
  let browser: Browser;

  const totals = async (sql: TestDatabase["sql"]) =>
    (await sql`select count(*)::int as orders, sum(sales)::text as sales from orders`)[0] as { orders: number; sales: string };

  beforeAll(async () => {
    // make demo's file (the stream's `data` prerequisite), then make demo's three steps into the test's database.
    const made = Bun.spawnSync(["make", "-s", "data"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
    if (made.exitCode !== 0) throw new Error(`make data exited ${made.exitCode}: ${made.stderr.toString()}`);
    demo = await createTestDatabase("demo");
    env = pipelineEnv({ topic: uniqueName("demo"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: demo.url });
    await runPipeline(env, [data]);
    browser = await launch();
  });
  afterAll(async () => {
    await browser?.close();
    await demo?.drop();
    tmp.remove();
  });

  test("moves the KPIs of an open page within 15 s, without a reload, in a database of its own; the demo's totals stay", async () => {
    expect(await totals(demo.sql)).toEqual({ orders: 9994, sales: "2297200.8603" });
    // The page is open before make stream starts: on the demo's numbers, from the dashboard of make dashboard.
    const before = await startDashboard({ ...env, LOG_LEVEL: "info" });
    const page = await browser.newPage();
    await page.goto(before.url);
    await waitFor("the demo's numbers", async () => (await kpi(page, "lines")) === "9994");
    expect(await page.getAttribute("#database", "data-database")).toBe(demo.name);
    await page.evaluate(() => ((globalThis as unknown as { mark: number }).mark = 42)); // a reload would wipe it out
    before.server.child.kill("SIGTERM");
    await before.server.finish();

    // make stream on the same port: the page reconnects by itself and follows the live database, whose numbers
    // start at zero (the demo's are cleared as soon as the page hears of the other database).
    const live = `${demo.name}_live`;
    const started = performance.now();
    const stream = startCommand(["make", "-s", "stream"], { ...env, DASHBOARD_PORT: new URL(before.url).port, LOG_LEVEL: "info" }, { group: true });
    try {
      const moved = async () => (await page.getAttribute("#database", "data-database")) === live && Number(await kpi(page, "lines")) > 0;
      await waitFor(() => `the live numbers to move on the open page\n${stream.output()}`, moved, 15_000);
      console.log(`make stream: the open page's KPIs moved ${((performance.now() - started) / 1000).toFixed(1)} s after it started`);
      // And they keep moving, a file every 2 s at one row a second.
      const lines = await kpi(page, "lines");
      await waitFor("the next file's rows on the page", async () => (await kpi(page, "lines")) !== lines, 10_000);
      expect(await page.evaluate(() => (globalThis as unknown as { mark: number }).mark)).toBe(42);
      // Which database is shown, in the terminal and on the page.
      expect(stream.output()).toContain(`[live] streaming into database ${live} `);
      expect(stream.output()).toContain(`[dashboard] dashboard at ${before.url} showing database ${live} `);
      expect(await page.textContent("#database")).toBe(`database ${live}`);
    } finally {
      await page.close();
      signalGroup(stream.child, "SIGINT"); // Ctrl-C in the terminal
      const stopped = await stream.finish(30_000);
      await dropDatabase(demo.target, live);
      // Each of the four stopped cleanly, with its summary.
      for (const name of ["dashboard", "consumer", "load", "producer"]) expect(stopped.stderr).toContain(`[${name}] done: `);
    }
    expect(await totals(demo.sql)).toEqual({ orders: 9994, sales: "2297200.8603" });
  });
});

describe("the dashboard against a database that does not exist yet", () => {
  const target = withDatabase(BASE.database, uniqueName("dash_nodb"));
  const tmp = tempDir();
  let dashboard: { url: string; server: Running } | undefined;
  afterAll(async () => {
    dashboard?.server.child.kill("SIGTERM");
    await dashboard?.server.finish();
    const admin = maintenance(BASE.database, createLogger("test", "silent"));
    await admin`drop database if exists ${admin(target.database)} with (force)`.finally(() => admin.end({ timeout: 5 }));
    tmp.remove();
  });

  test("says which database is missing and that make migrate creates it, backs off, and shows it once migrated", async () => {
    const env = { DATABASE_URL: databaseUrl(target), KAFKA_BROKERS: BROKERS, BATCHES_DIR: tmp.path };
    dashboard = await startDashboard(env);
    // The observation window is what is measured here: how many lines five seconds of a missing database cost.
    await Bun.sleep(5_000);
    const lines = dashboard.server.output().trimEnd().split("\n");
    const missing = `the database "${target.database}" does not exist on the PostgreSQL server at ${BASE.database.host}:${BASE.database.port} (DATABASE_URL): make migrate creates it`;
    expect(lines.filter((l) => l.includes(missing)).length).toBeGreaterThanOrEqual(2);
    // Attempts 0.5, 1, 2, 4 s apart: four lines in five seconds, not one per connection attempt (dozens a second).
    expect(lines.length).toBeLessThanOrEqual(8);
    const snapshot = (await (await fetch(`${dashboard.url}api/snapshot`)).json()) as { health: { postgres: { ok: boolean; problem?: string; error: string } } };
    expect(snapshot.health.postgres).toMatchObject({ ok: false, problem: "no-database", error: missing });

    await runOk("migrate.ts", [], env);
    await waitFor("the dashboard to read the new database", async () => {
      const now = (await (await fetch(`${dashboard!.url}api/snapshot`)).json()) as { health: { postgres: { ok: boolean } } };
      return now.health.postgres.ok;
    }, 30_000, 250);
  });
});

// --- Slow and hostile clients. The fan-out and the Host/Origin check as functions, then the real server: curl,
// Chromium, a flood of NOTIFY from bi_reader, and sockets that stop reading.

const encode = (text: string) => new TextEncoder().encode(text);
const decode = (bytes: Uint8Array | undefined) => new TextDecoder().decode(bytes);

describe("createFanOut", () => {
  test("a page that keeps reading gets every snapshot; one that stops gets only the newest when it reads again", async () => {
    const fan = createFanOut();
    const quick = fan.follow(encode("s0"))!.getReader();
    const slow = fan.follow(encode("s0"))!.getReader();
    expect(decode((await slow.read()).value)).toBe("s0");
    expect(decode((await quick.read()).value)).toBe("s0");
    const seen: string[] = [];
    for (const n of [1, 2, 3, 4, 5]) {
      const next = quick.read(); // the quick page asks before each snapshot, as a connection that keeps up does
      fan.send(encode(`s${n}`));
      seen.push(decode((await next).value));
    }
    expect(seen).toEqual(["s1", "s2", "s3", "s4", "s5"]);
    // The slow page asked for nothing meanwhile: it holds one message, the newest, not five.
    expect(decode((await slow.read()).value)).toBe("s5");
  });

  test("a page that takes nothing for a minute while messages wait is dropped; a page that keeps up stays", async () => {
    let now = 0;
    let dropped = 0;
    const fan = createFanOut(() => now);
    const stuck = fan.follow(encode("s0"), () => dropped++)!.getReader();
    const fine = fan.follow(encode("s0"))!.getReader();
    await fine.read();
    const pending = fine.read();
    fan.send(encode("s1"));
    await pending;
    now = BEHIND_LIMIT_MS + 1;
    const again = fine.read();
    fan.send(encode("s2"));
    expect(decode((await again).value)).toBe("s2");
    expect([fan.size, dropped]).toEqual([1, 1]);
    // Its stream ends after what it had been given; the server closes the connection (onDrop).
    expect(decode((await stuck.read()).value)).toBe("s0");
    expect((await stuck.read()).done).toBe(true);
  });

  test(`opens at most ${MAX_PAGES} streams`, () => {
    const fan = createFanOut();
    for (let i = 0; i < MAX_PAGES; i++) expect(fan.follow(encode("s"))).toBeDefined();
    expect(fan.follow(encode("s"))).toBeUndefined();
    fan.close();
  });
});

describe("parseFilter", () => {
  const parse = (query: string) => parseFilter(new URLSearchParams(query));
  test("keeps the fields given, drops empty ones, and writes one query per filter whatever the order", () => {
    expect(parse("")).toEqual({ filter: {} });
    expect(parse("to=2016-06-30&segment=&region=West&from=2016-01-01")).toEqual({ filter: { region: "West", from: "2016-01-01", to: "2016-06-30" } });
    expect(filterQuery({ to: "2016-06-30", region: "South & West", from: "2016-06-30" })).toBe("region=South+%26+West&from=2016-06-30&to=2016-06-30");
    expect(filterQuery({})).toBe("");
  });
  test("refuses, naming the parameter, an unknown one, a repeated one, a date that is no day, from after to, a value too long", () => {
    const errors = ["colour=red", "from=2016-1-5", "from=2016-02-30", "to=0000-01-01", "to=yesterday", "region=a&region=b", "from=2016-02-02&to=2016-02-01", `segment=${"x".repeat(101)}`, "region=West%00"]
      .map((query) => [query, (parse(query) as { error?: string }).error]);
    expect(errors).toEqual([
      ["colour=red", 'unknown parameter "colour": the dashboard takes region, segment, from, to'],
      ["from=2016-1-5", 'parameter "from": "2016-1-5" is not a date (YYYY-MM-DD)'],
      ["from=2016-02-30", 'parameter "from": "2016-02-30" is not a date (YYYY-MM-DD)'],
      ["to=0000-01-01", 'parameter "to": "0000-01-01" is not a date (YYYY-MM-DD)'],
      ["to=yesterday", 'parameter "to": "yesterday" is not a date (YYYY-MM-DD)'],
      ["region=a&region=b", 'parameter "region" is given more than once'],
      ["from=2016-02-02&to=2016-02-01", 'parameter "from" (2016-02-02) is after parameter "to" (2016-02-01)'],
      [`segment=${"x".repeat(101)}`, 'parameter "segment" is longer than 100 characters'],
      ["region=West%00", 'parameter "region" holds a NUL character (%00), which no value in PostgreSQL can'],
    ]);
    expect(parse("from=2016-02-29&to=2016-02-29")).toEqual({ filter: { from: "2016-02-29", to: "2016-02-29" } });
  });
});

describe("refuseForeign", () => {
  const request = (headers: Record<string, string>) => new Request("http://127.0.0.1:8050/api/snapshot", { headers });
  test("accepts its own names, with or without its own Origin", () => {
    for (const host of ["127.0.0.1:8050", "localhost:8050", "LOCALHOST:8050"]) {
      expect(refuseForeign(request({ host }), 8050)).toBeUndefined();
      expect(refuseForeign(request({ host, origin: `http://${host.toLowerCase()}` }), 8050)).toBeUndefined();
    }
  });
  test("refuses another name for the same address, another port, another Origin and an opaque one", () => {
    const refused: Record<string, string>[] = [
      { host: "rebind.example:8050" },
      { host: "127.0.0.1:9999" },
      { host: "127.0.0.1" },
      { host: "127.0.0.1:8050", origin: "http://rebind.example:8050" },
      { host: "127.0.0.1:8050", origin: "http://127.0.0.1:3000" },
      { host: "127.0.0.1:8050", origin: "null" },
    ];
    for (const headers of refused) expect([headers, refuseForeign(request(headers), 8050)?.status]).toEqual([headers, 403]);
  });
});

/** Orders in `months` distinct months, so each snapshot is large (about 50 bytes a month in v_monthly_sales). */
async function manyMonths(db: TestDatabase, months: number): Promise<void> {
  await db.sql`insert into users (customer_id, latest_order_date, latest_source_row_id, latest_source_file) values ('M', '2016-01-01', 1, 'months.csv')`;
  await db.sql`insert into products (product_id, product_name, latest_order_date, latest_source_row_id, latest_source_file) values ('M', 'Month', '2016-01-01', 1, 'months.csv')`;
  await db.sql`
    insert into orders (order_id, order_date, customer_id, product_id, sales, quantity, region, segment, source_file, source_row_id, source_line, batch_file)
    select 'M-' || i, date '1000-01-01' + make_interval(months => i), 'M', 'M', 10 + i, 1, 'West', 'Consumer', 'months.csv', i, i + 1, 'months'
    from generate_series(1, ${months}) as i
  `;
}

describe.skipIf(!CHROMIUM)("the dashboard under slow and hostile clients", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let dashboard: { url: string; server: Running };
  let port: number;
  let browser: Browser;
  const snapshot = async () =>
    (await (await fetch(`${dashboard.url}api/snapshot`)).json()) as { gathered: number; pages: number; business: { kpis: Record<string, string> } };

  beforeAll(async () => {
    db = await createTestDatabase();
    await manyMonths(db, 30_000); // about 1.5 MB per snapshot: a few fill a socket's buffers
    dashboard = await startDashboard({ DATABASE_URL: db.url, BATCHES_DIR: tmp.path, KAFKA_BROKERS: readConfig().kafkaBrokers.join(",") });
    port = Number(new URL(dashboard.url).port);
    await waitFor("the first snapshot", async () => (await snapshot()).gathered >= 1);
    browser = await launch(["--host-resolver-rules=MAP rebind.test 127.0.0.1"]);
  });
  afterAll(async () => {
    await browser?.close();
    dashboard?.server.child.kill("SIGTERM");
    await dashboard?.server.finish();
    await db?.drop();
    tmp.remove();
  });

  const curl = (path: string, ...headers: string[]) => {
    const args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", ...headers.flatMap((h) => ["-H", h]), `${dashboard.url}${path}`];
    return Bun.spawnSync(args).stdout.toString();
  };

  test("refuses a request naming another host or coming from another origin (curl), and answers its own (the control)", () => {
    expect(curl("api/snapshot")).toBe("200");
    expect(curl("api/snapshot", `Host: localhost:${port}`)).toBe("200");
    expect(curl("api/snapshot", `Host: rebind.test:${port}`)).toBe("403");
    expect(curl("", `Host: rebind.test:${port}`)).toBe("403");
    expect(curl("api/events", `Host: rebind.test:${port}`)).toBe("403");
    expect(curl("api/snapshot", "Origin: http://attacker.test")).toBe("403");
  });

  test("a DNS-rebinding page gets 403 in Chromium, where the same browser opens the dashboard by its own names", async () => {
    const page = await browser.newPage();
    try {
      const own = await page.goto(`http://localhost:${port}/`);
      expect(own!.status()).toBe(200);
      await waitFor("the KPIs on the page", async () => (await kpi(page, "orders")) !== "");
      const rebound = await page.goto(`http://rebind.test:${port}/`); // rebind.test resolves to 127.0.0.1 in this browser
      expect(rebound!.status()).toBe(403);
      expect(await page.textContent("body")).toContain('Host "rebind.test:');
    } finally {
      await page.close();
    }
  });

  test("a page of another origin gets no event stream; the dashboard's own page gets one (the control)", async () => {
    const other = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("<title>other</title>", { headers: { "content-type": "text/html" } }) });
    const page = await browser.newPage();
    // Opens an EventSource in the page and reports how it ended up: "open", or "closed" (refused for good).
    const follow = (url: string) =>
      page.evaluate(
        (u) =>
          new Promise<string>((resolve) => {
            // The browser's EventSource (Bun's types know another one); readyState 2 is CLOSED.
            const Source = (globalThis as unknown as { EventSource: new (url: string) => { readyState: number; onopen: () => void; onerror: () => void } }).EventSource;
            const events = new Source(u);
            events.onopen = () => resolve("open");
            events.onerror = () => events.readyState === 2 && resolve("closed");
          }),
        url,
      );
    try {
      const before = (await snapshot()).pages;
      await page.goto(`http://127.0.0.1:${other.port}/`);
      expect(await follow(`${dashboard.url}api/events`)).toBe("closed");
      expect((await snapshot()).pages).toBe(before);
      await page.goto(dashboard.url); // its own script follows the stream
      await waitFor("the dashboard's own page to follow", async () => (await snapshot()).pages === before + 1);
    } finally {
      await page.close();
      other.stop(true);
    }
  });

  test("NOTIFY sales_loaded from bi_reader, thousands a second, is read as a hint: at most one read of the views a second", async () => {
    const flooder = connect(db.target, createLogger("test", "silent"), { max: 1 });
    const counted = connect(db.target, createLogger("test", "silent"), { max: 1, keepOpen: true, onnotify: () => heard++ });
    let heard = 0;
    try {
      await counted.unsafe("listen sales_loaded");
      await flooder.unsafe("set role bi_reader");
      const before = await snapshot();
      const started = performance.now();
      let sent = 0;
      while (performance.now() - started < 3000) {
        await flooder.unsafe(`notify sales_loaded, '{"files": 1, "rows": ${1_000_000 + sent}}'`);
        sent++;
      }
      const seconds = (performance.now() - started) / 1000;
      // Control: every notification was delivered, so the flood was real.
      await waitFor(`${sent} notifications heard`, () => heard >= sent);
      const after = await waitFor("the last read after the flood", async () => {
        const s = await snapshot();
        return s.gathered > before.gathered && s;
      });
      const reads = (await snapshot()).gathered - before.gathered;
      expect(sent).toBeGreaterThan(100);
      expect(reads).toBeLessThanOrEqual(Math.ceil(seconds) + 2);
      // The payload is not data: the numbers are the database's.
      const [row] = await db.sql`select count(*)::text as lines from v_sales`;
      expect(after.business.kpis.lines).toBe(row!.lines);
    } finally {
      await flooder.end({ timeout: 1 });
      await counted.end({ timeout: 1 });
    }
  });

  test("a connection that stops reading gets the newest snapshot when it reads again, not every one in between", async () => {
    const stalled = net.connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    stalled.on("data", (chunk: Buffer) => chunks.push(chunk));
    await new Promise((connected) => stalled.once("connect", connected));
    stalled.write(`GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`);
    stalled.pause();
    const notifier = connect(db.target, createLogger("test", "silent"), { max: 1 });
    try {
      // Eight snapshots while it reads nothing: the socket's buffers hold only a few of them. (Each look at
      // /api/snapshot costs the server a large JSON: once a second, and well within the minute after which a page
      // that takes nothing is dropped.)
      const start = (await snapshot()).gathered;
      await waitFor("eight snapshots", async () => {
        await notifier`select pg_notify('sales_loaded', '')`;
        return (await snapshot()).gathered >= start + 8;
      }, 45_000, 1000);
      const latest = (await snapshot()).gathered;
      stalled.resume();
      const received = () => [...Buffer.concat(chunks).toString().matchAll(/"gathered":(\d+)/g)].map((m) => Number(m[1]));
      await waitFor("the newest snapshot on the stalled connection", () => received().includes(latest), 60_000);
      const during = received().filter((g) => g > start && g <= latest);
      expect(during.length).toBeLessThan(8);
      expect(during.at(-1)).toBe(latest);
    } finally {
      stalled.destroy();
      await notifier.end({ timeout: 1 });
    }
  });
});
