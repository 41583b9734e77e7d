// The BI side against the real database: the views' totals equal the source rows to the last digit, the
// read-only role bi_reader reads the views and nothing else, and `make export` writes each view's rows exactly,
// all from one snapshot even while rows are loading.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { homedir, tmpdir } from "node:os";
import { join } from "node:path";
import { parse } from "csv-parse/sync";
import { connect, type Sql } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { EXPORTS, PACKAGE } from "../scripts/export.ts";
import { readConfig } from "../scripts/lib/config.ts";
import {
  createTestDatabase,
  decimalSum,
  normalizeDecimal,
  pipelineEnv,
  ROOT,
  runOk,
  runPipeline,
  runScript,
  startScript,
  superstoreRows,
  tempDir,
  uniqueName,
  waitFor,
  type TestDatabase,
} from "./helpers.ts";

const quiet = createLogger("test", "silent");

// The packaged workbook is checked with the standard unzip (the control) and against Tableau's schema with xmllint.
const UNZIP = Bun.which("unzip");
const XMLLINT = Bun.which("xmllint");
const SCHEMA = join(import.meta.dir, "..", "..", "shared", "tableau-schemas", "tableau.xsd");
const cannotValidate = !existsSync(SCHEMA) ? `Tableau's schema is not at ${SCHEMA}` : XMLLINT === null ? "xmllint is not installed (Debian: apt-get install libxml2-utils)" : undefined;
const cannotUnpack = UNZIP === null ? "unzip is not installed (Debian: apt-get install unzip)" : undefined;
for (const missing of [cannotUnpack, cannotValidate]) {
  if (missing && readConfig().requireAllTests) throw new Error(`the packaged workbook cannot be checked: ${missing}`);
  if (missing) console.warn(`skipping a check of the packaged workbook: ${missing}`);
}

function unzip(args: string[]): string {
  const run = Bun.spawnSync([UNZIP!, ...args], { stdout: "pipe", stderr: "pipe", env: { ...process.env, LC_ALL: "C" } });
  if (run.exitCode !== 0) throw new Error(`unzip ${args.join(" ")} exited ${run.exitCode}: ${run.stderr.toString()}`);
  return run.stdout.toString();
}
type Source = Record<string, string>;

/** Exact sums of a column per key, as normalized decimal strings. */
function sumsBy(rows: Source[], key: (r: Source) => string, column: string): Record<string, string> {
  const groups = new Map<string, string[]>();
  for (const r of rows) groups.set(key(r), [...(groups.get(key(r)) ?? []), r[column]!]);
  return Object.fromEntries([...groups].map(([k, values]) => [k, decimalSum(values)]));
}

const exact = (rows: Record<string, unknown>[], key: string, column: string) =>
  Object.fromEntries(rows.map((r) => [String(r[key]), normalizeDecimal(String(r[column]))]));

describe("views for BI, over the whole Kaggle file", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let source: Source[];

  beforeAll(async () => {
    db = await createTestDatabase();
    const file = join(tmp.path, "Sample-Superstore.csv");
    await runOk("make_data.ts", ["--out", file], {});
    await runPipeline(pipelineEnv({ topic: uniqueName("bi"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url }), [file]);
    source = await superstoreRows();
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("v_sales has one row per order line, located by the order's own ship-to address", async () => {
    const [count] = await db.sql`select count(*)::int as n from v_sales`;
    expect(count!.n).toBe(source.length);
    const [line] = await db.sql`select order_id, city, state, postal_code, region, customer_name from v_sales where order_id = 'CA-2016-152156' and product_id = 'FUR-BO-10001798'`;
    const row = source.find((r) => r["Order ID"] === "CA-2016-152156" && r["Product ID"] === "FUR-BO-10001798")!;
    expect(line).toEqual({
      order_id: row["Order ID"],
      city: row.City,
      state: row.State,
      postal_code: row["Postal Code"]!.padStart(5, "0"),
      region: row.Region,
      customer_name: row["Customer Name"],
    });
  });

  test("every view's totals equal the source's to the last digit", async () => {
    const want = { sales: decimalSum(source.map((r) => r.Sales!)), profit: decimalSum(source.map((r) => r.Profit!)) };
    for (const view of ["v_sales", "v_monthly_sales", "v_product_performance", "v_customer_segments", "v_region_sales"]) {
      const [row] = await db.sql.unsafe(`select sum(sales)::text as sales, sum(profit)::text as profit from ${view}`);
      expect({ view, sales: normalizeDecimal(row!.sales), profit: normalizeDecimal(row!.profit) }).toEqual({ view, ...want });
    }
    expect(want.sales).toBe("2297200.8603");
  });

  test("v_monthly_sales: sales and profit per month, orders and lines, margin = profit / sales", async () => {
    const rows = await db.sql`select to_char(month, 'YYYY-MM') as month, orders::int, lines::int, sales::text, profit::text, margin::text from v_monthly_sales order by month`;
    const month = (r: Source) => r["Order Date"]!.slice(0, 7);
    expect(exact(rows, "month", "sales")).toEqual(sumsBy(source, month, "Sales"));
    expect(exact(rows, "month", "profit")).toEqual(sumsBy(source, month, "Profit"));
    const orders: Record<string, number> = {};
    for (const [m, ids] of Object.entries(Object.groupBy(source, month))) orders[m] = new Set(ids!.map((r) => r["Order ID"])).size;
    expect(Object.fromEntries(rows.map((r) => [r.month, r.orders]))).toEqual(orders);
    expect(rows.reduce((n, r) => n + Number(r.lines), 0)).toBe(source.length);
    const [check] = await db.sql`select bool_and(margin = profit / sales) as ok from v_monthly_sales`;
    expect(check!.ok).toBe(true);
  });

  test("v_region_sales: sales and profit per region and state", async () => {
    const rows = await db.sql`select region || '/' || state as place, sales::text, profit::text from v_region_sales`;
    const place = (r: Source) => `${r.Region}/${r.State}`;
    expect(exact(rows, "place", "sales")).toEqual(sumsBy(source, place, "Sales"));
    expect(exact(rows, "place", "profit")).toEqual(sumsBy(source, place, "Profit"));
  });

  test("v_customer_segments: customers, orders, sales, profit and average order value per segment", async () => {
    const rows = await db.sql`select segment, customers::int, orders::int, sales::text, profit::text, average_order_value = sales / orders as aov_ok from v_customer_segments`;
    expect(exact(rows, "segment", "sales")).toEqual(sumsBy(source, (r) => r.Segment!, "Sales"));
    for (const r of rows) {
      const mine = source.filter((s) => s.Segment === r.segment);
      expect({ segment: r.segment, customers: r.customers, orders: r.orders, aov_ok: r.aov_ok }).toEqual({
        segment: r.segment,
        customers: new Set(mine.map((s) => s["Customer ID"])).size,
        orders: new Set(mine.map((s) => s["Order ID"])).size,
        aov_ok: true,
      });
    }
  });

  test("v_product_performance: one row per product, ranked by sales", async () => {
    const rows = await db.sql`select product_id, sales::text, quantity::int, sales_rank::int from v_product_performance order by sales_rank, product_id`;
    expect(exact(rows, "product_id", "sales")).toEqual(sumsBy(source, (r) => r["Product ID"]!, "Sales"));
    const quantities = Object.fromEntries(
      Object.entries(Object.groupBy(source, (r) => r["Product ID"]!)).map(([id, lines]) => [id, lines!.reduce((n, r) => n + Number(r.Quantity), 0)]),
    );
    expect(Object.fromEntries(rows.map((r) => [r.product_id, r.quantity]))).toEqual(quantities);
    expect(rows[0]!.sales_rank).toBe(1);
    const sorted = rows.map((r) => Number(r.sales));
    expect(sorted).toEqual([...sorted].sort((a, b) => b - a));
  });
});

describe("the read-only role bi_reader", () => {
  let db: TestDatabase;
  let reader: Sql;
  const password = `reader-${Date.now().toString(36)}`;

  beforeAll(async () => {
    db = await createTestDatabase();
    const migrated = await runOk("migrate.ts", [], { DATABASE_URL: db.url, BI_READER_PASSWORD: password, LOG_LEVEL: "info" });
    expect(migrated.stderr).not.toContain(password);
    reader = connect({ ...db.target, user: "bi_reader", password }, quiet, { max: 1 });
  });
  afterAll(async () => {
    await reader?.end();
    await db?.drop();
  });

  const refused = async (statement: string) => {
    const error = await reader.unsafe(statement).then(
      () => undefined,
      (e: { code?: string }) => e,
    );
    return error?.code;
  };

  test("can log in, with its password stored as a SCRAM verifier, never as text", async () => {
    const [role] = await db.sql`select rolcanlogin, rolpassword like 'SCRAM-SHA-256$%' as scram from pg_authid where rolname = 'bi_reader'`;
    expect(role).toEqual({ rolcanlogin: true, scram: true });
    expect((await reader`select current_user as u`)[0]!.u).toBe("bi_reader");
  });

  test("reads every view", async () => {
    for (const view of ["v_sales", "v_monthly_sales", "v_product_performance", "v_customer_segments", "v_region_sales", "v_pipeline_health", "v_loaded_files"]) {
      expect(await refused(`select * from ${view} limit 1`)).toBeUndefined();
    }
  });

  test("cannot read a base table, write anything or create anything", async () => {
    const insufficient = "42501";
    for (const table of ["orders", "users", "products", "rejected_rows", "loaded_files", "schema_migrations"]) {
      expect([table, await refused(`select * from ${table} limit 1`)]).toEqual([table, insufficient]);
    }
    expect(await refused("insert into v_sales (order_id) values ('x')")).toBe(insufficient);
    expect(await refused("delete from v_sales")).toBe(insufficient);
    expect(await refused("update orders set sales = 0")).toBe(insufficient);
    expect(await refused("create table mine (x int)")).toBe(insufficient);
    expect(await refused("create view mine as select 1")).toBe(insufficient);
    expect(await refused("create temporary table mine (x int)")).toBe(insufficient);
  });
});

describe("make export", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let env: Record<string, string>;
  let batches: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    batches = join(tmp.path, "batches");
    env = pipelineEnv({ topic: uniqueName("export"), group: uniqueName("g"), dir: batches, databaseUrl: db.url });
    const file = join(tmp.path, "data.csv");
    await runOk("make_data.ts", ["--out", file, "--rows", "3000"], {});
    await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
    await runOk("load.ts", [], env);
    await runOk("export.ts", ["--dir", dir], env);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  const dir = join(tmp.path, "exports");
  const read = (dir: string, view: string) => parse(readFileSync(join(dir, `${view}.csv`)), { columns: true }) as Source[];

  test("writes each view's rows exactly, header first, and a workbook over the files", async () => {
    for (const { view, orderBy } of EXPORTS) {
      const rows = await db.sql.unsafe(`select * from ${view} order by ${orderBy}`);
      const text = (v: unknown) => (v === null ? "" : v instanceof Date ? v.toISOString().slice(0, 10) : String(v));
      const expected = rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, text(v)])));
      expect({ view, rows: read(dir, view) }).toEqual({ view, rows: expected });
    }
    const workbook = readFileSync(join(dir, "superstore_sales.twb"), "utf8");
    expect(workbook).toContain(dir);
    expect(workbook).not.toContain("../../data/exports");
  });

  test.skipIf(cannotUnpack !== undefined)("packs the workbook and the CSV files into superstore_sales.twbx, with no path of this machine", () => {
    const twbx = join(dir, PACKAGE);
    const out = join(tmp.path, "unpacked");
    const names = unzip(["-Z1", twbx]).split("\n").filter(Boolean);
    expect(names.sort()).toEqual([...EXPORTS.map(({ view }) => `Data/exports/${view}.csv`), "superstore_sales.twb"].sort());
    unzip(["-q", twbx, "-d", out]);
    expect(readdirSync(dir).filter((f) => f.startsWith("."))).toEqual([]); // no temporary file left
    const twb = join(out, "superstore_sales.twb");
    const text = readFileSync(twb, "utf8");
    // No absolute path: no value starting with "/" or "\\" or a drive letter, no folder of this machine.
    const values = [...text.matchAll(/[\w:.-]+=(?:'([^']*)'|"([^"]*)")/g)].map(([, a, b]) => a ?? b ?? "");
    expect(values.filter((v) => /^([/\\]|[A-Za-z]:[/\\])/.test(v))).toEqual([]);
    for (const local of [tmp.path, ROOT, homedir(), tmpdir()]) expect(text).not.toContain(local);
    // Every data file the workbook names is in the package, byte for byte the loose export.
    const connections = [...text.matchAll(/<connection class='textscan' directory='([^']*)' filename='([^']*)'/g)];
    expect(connections.map(([, directory]) => directory)).toEqual(EXPORTS.map(() => "Data/exports"));
    for (const [, directory, filename] of connections) {
      const packed = readFileSync(join(out, directory!, filename!));
      expect({ filename, same: packed.equals(readFileSync(join(dir, filename!))) }).toEqual({ filename, same: true });
    }
    if (cannotValidate) return;
    const run = Bun.spawnSync([XMLLINT!, "--noout", "--schema", SCHEMA, twb], { stdout: "pipe", stderr: "pipe" });
    expect(`${run.exitCode} ${run.stderr.toString().trim()}`).toBe(`0 ${twb} validates`);
  });

  test("takes all files from one snapshot while the loader keeps committing", async () => {
    const fresh = await createTestDatabase();
    const watched = join(tmp.path, "watched");
    mkdirSync(watched);
    const loadEnv = { ...env, DATABASE_URL: fresh.url };
    const loader = startScript("load.ts", ["--watch", "--dir", watched], loadEnv);
    try {
      const names = readdirSync(batches).filter((f) => f.endsWith(".csv")).sort();
      let exports = 0;
      let partial = 0;
      let copied = 0;
      // Files keep arriving one by one while exports run back to back; every export must agree with itself.
      await waitFor("exports taken while rows were loading", async () => {
        if (copied < names.length) copyFileSync(join(batches, names[copied]!), join(watched, names[copied++]!));
        const dir = join(tmp.path, `snapshot-${++exports}`);
        const result = await runScript("export.ts", ["--dir", dir], loadEnv);
        expect(result.code, result.stderr).toBe(0);
        const sums = EXPORTS.map(({ view }) => decimalSum(read(dir, view).map((r) => r.sales!)));
        expect(new Set(sums).size).toBe(1);
        const lines = read(dir, "v_sales").length;
        expect(read(dir, "v_monthly_sales").reduce((n, r) => n + Number(r.lines), 0)).toBe(lines);
        if (lines > 0 && lines < 3000) partial++;
        return copied === names.length && partial >= 3 && lines === 3000;
      }, 120_000, 1);
    } finally {
      loader.child.kill("SIGTERM");
      await loader.finish();
      await fresh.drop();
    }
  });
});
