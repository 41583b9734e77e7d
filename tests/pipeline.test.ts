// End to end against the real broker and database: producer -> topic -> batch files -> PostgreSQL, for the
// Kaggle-style file, a Global-style UTF-8 file and a file with broken rows; then re-sends, replays, reloads
// and reverse-order loads must leave every table exactly as it was.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "csv-stringify/sync";
import { parseCsv } from "../scripts/lib/csv.ts";
import { openDatabase } from "../scripts/lib/db.ts";
import { prepareFile } from "../scripts/lib/load/read.ts";
import { commitFiles } from "../scripts/lib/load/transaction.ts";
import { createLogger } from "../scripts/lib/log.ts";
import {
  BROKERS,
  createTestDatabase,
  decimalSum,
  normalizeDecimal,
  pipelineEnv,
  runOk,
  runPipeline,
  startScript,
  superstoreRows,
  tableRows,
  tempDir,
  topicSize,
  uniqueName,
  waitFor,
  type TestDatabase,
} from "./helpers.ts";

type Snapshot = Record<string, Record<string, unknown>[]>;

async function snapshot(db: TestDatabase): Promise<Snapshot> {
  return {
    users: await tableRows(db.sql, "users", "customer_id", ["updated_at"]),
    products: await tableRows(db.sql, "products", "product_id", ["updated_at"]),
    orders: await tableRows(db.sql, "orders", "source_file, source_row_id", ["row_id", "loaded_at"]),
    rejected_rows: await tableRows(db.sql, "rejected_rows", "source_file, source_line", ["id", "rejected_at"]),
  };
}

async function count(db: TestDatabase, table: string): Promise<number> {
  const [row] = await db.sql.unsafe(`select count(*)::int as n from ${table}`);
  return row!.n as number;
}

async function batchTimestamps(dir: string): Promise<number[]> {
  const rows: { line: number; at: number }[] = [];
  for (const name of readdirSync(dir).filter((f) => f.endsWith(".csv"))) {
    const parsed = parseCsv(await Bun.file(join(dir, name)).text(), name);
    for (const { values } of parsed.rows) rows.push({ line: Number(values._source_line), at: Date.parse(values._timestamp!) });
  }
  return rows.sort((a, b) => a.line - b.line).map((r) => r.at);
}

describe("pipeline with the Kaggle-style file (Windows-1252, M/D/YYYY, CRLF)", () => {
  const tmp = tempDir();
  const file = join(tmp.path, "Sample-Superstore.csv");
  const topic = uniqueName("kaggle");
  let db: TestDatabase;
  let env: Record<string, string>;
  let source: Record<string, string>[];
  let first: Snapshot;

  // The whole file goes through once, before the tests; each test then reads (or re-runs and compares), so
  // any one of them can run alone.
  beforeAll(async () => {
    db = await createTestDatabase();
    env = pipelineEnv({ topic, group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    await runOk("make_data.ts", ["--out", file], {});
    source = await superstoreRows();
    await runPipeline(env, [file]);
    first = await snapshot(db);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("every row of the file arrives in orders, with users and products", async () => {
    expect(await count(db, "orders")).toBe(9994);
    expect(await count(db, "rejected_rows")).toBe(0);
    expect(await count(db, "users")).toBe(new Set(source.map((r) => r["Customer ID"])).size);
    expect(await count(db, "products")).toBe(new Set(source.map((r) => r["Product ID"])).size);
  });

  test("sums of sales, profit and quantity, and sales per region, equal the CSV's to the last digit", async () => {
    const [totals] = await db.sql`
      select sum(sales)::text as sales, sum(profit)::text as profit, sum(quantity)::text as quantity from orders
    `;
    expect({
      sales: normalizeDecimal(totals!.sales),
      profit: normalizeDecimal(totals!.profit),
      quantity: totals!.quantity,
    }).toEqual({
      sales: decimalSum(source.map((r) => r.Sales!)),
      profit: decimalSum(source.map((r) => r.Profit!)),
      quantity: decimalSum(source.map((r) => r.Quantity!)),
    });
    expect(totals!.sales).toBe("2297200.8603");

    const regions = await db.sql<{ region: string; sales: string }[]>`
      select region, sum(sales)::text as sales from orders group by region order by region
    `;
    const expected = [...new Set(source.map((r) => r.Region!))].sort().map((region) => ({
      region,
      sales: decimalSum(source.filter((r) => r.Region === region).map((r) => r.Sales!)),
    }));
    expect(regions.map((r) => ({ region: r.region, sales: normalizeDecimal(r.sales) }))).toEqual(expected);
  });

  test("dates, Windows-1252 text and US postal codes come through exactly", async () => {
    const [row] = await db.sql`
      select order_id, order_date::text, ship_date::text, product_name, postal_code, city
      from orders where source_row_id = 12
    `;
    const src = source.find((r) => r["Row ID"] === "12")!;
    expect(row).toEqual({
      order_id: src["Order ID"],
      order_date: src["Order Date"],
      ship_date: src["Ship Date"],
      product_name: src["Product Name"], // "Konftel 250 Conference\u00a0phone\u00a0- Charcoal black"
      postal_code: src["Postal Code"]!.padStart(5, "0"),
      city: src.City,
    });
    const [zeros] = await db.sql`
      select count(*)::int as short, count(*) filter (where postal_code like '0%')::int as leading_zero
      from orders where length(postal_code) < 5 or postal_code like '0%'
    `;
    expect(zeros).toEqual({ short: 449, leading_zero: 449 });
  });

  test("users and products hold each id's values from its latest order", async () => {
    const latest = new Map<string, Record<string, string>>();
    for (const r of source) {
      const seen = latest.get(r["Customer ID"]!);
      const later =
        !seen ||
        r["Order Date"]! > seen["Order Date"]! ||
        (r["Order Date"] === seen["Order Date"] && Number(r["Row ID"]) > Number(seen["Row ID"]));
      if (later) latest.set(r["Customer ID"]!, r);
    }
    const users = await db.sql<{ customer_id: string; city: string; state: string; latest_source_row_id: string }[]>`
      select customer_id, city, state, latest_source_row_id from users order by customer_id
    `;
    expect(users.map((u) => ({ ...u }))).toEqual(
      [...latest.values()]
        .sort((a, b) => (a["Customer ID"]! < b["Customer ID"]! ? -1 : 1))
        .map((r) => ({ customer_id: r["Customer ID"]!, city: r.City!, state: r.State!, latest_source_row_id: r["Row ID"]! })),
    );
  });

  test("loading the batch files in reverse order, one by one, gives the same tables", async () => {
    const other = await createTestDatabase();
    try {
      const names = readdirSync(env.BATCHES_DIR!).filter((f) => f.endsWith(".csv")).sort().reverse();
      expect(names.length).toBeGreaterThan(90);
      const db = openDatabase(other.target, createLogger("test", "silent"), { max: 1 });
      try {
        for (const name of names) await commitFiles(db, [await prepareFile(env.BATCHES_DIR!, name)]);
      } finally {
        await db.end();
      }
      expect(await snapshot(other)).toEqual(first);
    } finally {
      await other.drop();
    }
  });

  test("running load.ts again changes nothing", async () => {
    const again = await runOk("load.ts", [], { ...env, LOG_LEVEL: "info" });
    expect(again.stderr).toContain("files=0 rows=0 inserted=0");
    expect(await snapshot(db)).toEqual(first);
  });

  test("producing the same file again changes nothing", async () => {
    await runPipeline(env, [file]);
    const [ledger] = await db.sql`select count(*)::int as files, sum(inserted)::int as inserted, sum(duplicates)::int as duplicates from loaded_files`;
    expect(ledger).toEqual({ files: expect.any(Number), inserted: 9994, duplicates: 9994 });
    expect(await snapshot(db)).toEqual(first);
  });

  test("replaying the topic from the beginning with a new group changes nothing", async () => {
    const replay = { ...env, KAFKA_GROUP_ID: uniqueName("replay"), BATCHES_DIR: join(tmp.path, "replay") };
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "3", "--from-beginning"], replay);
    const files = readdirSync(replay.BATCHES_DIR).filter((f) => f.endsWith(".csv"));
    expect(files.length).toBeGreaterThan(0);
    await runOk("load.ts", [], replay);
    expect(await snapshot(db)).toEqual(first);
  });

  test("the consumer's summary rate leaves out its waits, before the first record and after the last", async () => {
    const replay = { ...env, KAFKA_GROUP_ID: uniqueName("rate"), BATCHES_DIR: join(tmp.path, "rate"), LOG_LEVEL: "info" };
    const { stderr } = await runOk("consumer_batch_to_csv.ts", ["--until-idle", "3", "--from-beginning"], replay);
    const [, received, seconds, rate] = stderr.match(/done: received=(\d+) .* in (\d+\.\d)s \((\d+)\/s while records arrived\)/) ?? [];
    expect(Number(received)).toBe(await topicSize(BROKERS, topic));
    // Joining the group and --until-idle's 3 quiet seconds are in the run's time, not in the rate.
    expect(Number(seconds)).toBeGreaterThan(3);
    expect(Number(rate)).toBeGreaterThan((2 * Number(received)) / Number(seconds));
  });
});

/** The Global Superstore's shape: other column order, Order Priority / Market / Shipping Cost, D-M-YYYY dates. */
function globalStyle(rows: Record<string, string>[]): { text: string; expected: Record<string, string>[] } {
  const priorities = ["Critical", "High", "Medium", "Low"];
  const dmy = (iso: string) => `${iso.slice(8, 10)}-${iso.slice(5, 7)}-${iso.slice(0, 4)}`;
  const expected = rows.map((r, i): Record<string, string> => ({
    ...r,
    "Order Priority": priorities[i % 4]!,
    Market: "US",
    "Shipping Cost": `${(i % 97) + 1}.${String(i % 100).padStart(2, "0")}`,
    Weeknum: String((i % 52) + 1),
  }));
  const columns = [
    "Row ID", "Order ID", "Order Date", "Ship Date", "Ship Mode", "Customer ID", "Customer Name", "Segment",
    "City", "State", "Country", "Postal Code", "Market", "Region", "Product ID", "Category", "Sub-Category",
    "Product Name", "Sales", "Quantity", "Discount", "Profit", "Shipping Cost", "Order Priority", "Weeknum",
  ];
  const out = expected.map((r) => columns.map((c) => (c === "Order Date" || c === "Ship Date" ? dmy(r[c]!) : r[c]!)));
  // Header names spelled differently from the Kaggle file: matched loosely.
  const header = columns.map((c) => (c === "Sub-Category" ? "Sub Category" : c === "Postal Code" ? "postal_code" : c));
  return { text: `\uFEFF${stringify([header, ...out])}`, expected };
}

describe("pipeline with a Global-style file (UTF-8 with BOM, D-M-YYYY, other columns)", () => {
  const tmp = tempDir();
  const file = join(tmp.path, "Global-Superstore.csv");
  let db: TestDatabase;
  let env: Record<string, string>;
  let expected: Record<string, string>[];

  beforeAll(async () => {
    db = await createTestDatabase();
    env = pipelineEnv({ topic: uniqueName("global"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    const made = globalStyle((await superstoreRows()).slice(0, 1500));
    expected = made.expected;
    await Bun.write(file, made.text);
    await runPipeline(env, [file]);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("loads every row with exact totals, order priority, market and shipping cost", async () => {
    const [totals] = await db.sql`
      select count(*)::int as rows, sum(sales)::text as sales, sum(profit)::text as profit,
             sum(quantity)::text as quantity, sum(shipping_cost)::text as shipping,
             count(order_priority)::int as priorities, count(*) filter (where market = 'US')::int as market
      from orders
    `;
    const exact: Record<string, unknown> = {
      ...totals,
      sales: normalizeDecimal(totals!.sales),
      profit: normalizeDecimal(totals!.profit),
      shipping: normalizeDecimal(totals!.shipping),
    };
    expect(exact).toEqual({
      rows: 1500,
      sales: decimalSum(expected.map((r) => r.Sales!)),
      profit: decimalSum(expected.map((r) => r.Profit!)),
      quantity: decimalSum(expected.map((r) => r.Quantity!)),
      shipping: decimalSum(expected.map((r) => r["Shipping Cost"]!)),
      priorities: 1500,
      market: 1500,
    });
    expect(await count(db, "rejected_rows")).toBe(0);
  });

  test("reads D-M-YYYY dates day first and keeps unknown columns in extra", async () => {
    const rows = await db.sql<{ id: string; order_date: string; ship_date: string; priority: string; extra: { Weeknum: string } }[]>`
      select source_row_id::text as id, order_date::text, ship_date::text, order_priority as priority, extra
      from orders order by source_row_id limit 40
    `;
    expect(rows.map((r) => ({ ...r }))).toEqual(
      expected.slice(0, 40).map((r) => ({
        id: r["Row ID"]!,
        order_date: r["Order Date"]!,
        ship_date: r["Ship Date"]!,
        priority: r["Order Priority"]!,
        extra: { Weeknum: r.Weeknum! },
      })),
    );
  });
});

describe("pipeline with broken rows", () => {
  const tmp = tempDir();
  const file = join(tmp.path, "broken.csv");
  let db: TestDatabase;
  let env: Record<string, string>;

  // line: what it holds. Every line must end up in orders or rejected_rows (the empty line holds nothing).
  const header =
    "Row ID,Order ID,Order Date,Ship Date,Ship Mode,Customer ID,Customer Name,Segment,Country,City,State,Postal Code,Region,Product ID,Category,Sub-Category,Product Name,Sales,Quantity,Discount,Profit";
  const good = (id: number, name = "Bush Somerset Collection Bookcase") =>
    `${id},CA-2016-152156,11/8/2016,11/11/2016,Second Class,CG-12520,Claire Gute,Consumer,United States,Henderson,Kentucky,42420,South,FUR-BO-10001798,Furniture,Bookcases,${name},261.96,2,0,41.9136`;
  const lines = [
    header, // 1
    good(1), // 2
    good(2, '"Hon Chair, ""Deluxe""\nwith a newline"'), // 3-4: one record over two lines
    good(3).replace(",Claire Gute", ""), // 5: 20 fields
    good(4, 'Bush "Somerset" Bookcase').replace('Bush "Somerset"', '"Bush "Somerset"'), // 6: broken quoting
    good(5).replace("11/8/2016", "13/45/2016"), // 7: no such date
    good(6).replace("CG-12520", ""), // 8: required field empty
    good(7).replace("261.96", "261.9.6"), // 9: not a number
    good(8), // 10
    good(9, '"Bush Somerset Collection Bookcase'), // 11: quote never closed
    good(10), // 12
    good(11), // 13
    "", // 14: empty
    good(12).replace("42420", "42A20"), // 15: not a US ZIP code
  ];
  const goodLines = [2, 3, 10, 12, 13];
  const rejectedLines: Record<number, RegExp> = {
    5: /expected 21 fields but got 20/,
    6: /could not be split/,
    7: /Order Date: "13\/45\/2016" is not a date/,
    8: /Customer ID: empty/,
    9: /Sales: "261\.9\.6" is not a decimal/,
    11: /quoted field is not closed/,
    15: /Postal Code: "42A20" is not a US ZIP code/,
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    env = pipelineEnv({ topic: uniqueName("broken"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    await Bun.write(file, `${lines.join("\r\n")}\r\n`);
    await runPipeline(env, [file]);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("good rows load, each broken line is rejected with a reason naming the field", async () => {
    const orders = await db.sql<{ line: number }[]>`select source_line as line from orders order by 1`;
    expect(orders.map((o) => o.line)).toEqual(goodLines);
    const rejected = await db.sql<{ line: number; reason: string }[]>`
      select source_line as line, reason from rejected_rows order by 1
    `;
    expect(rejected.map((r) => r.line)).toEqual(Object.keys(rejectedLines).map(Number));
    for (const r of rejected) expect(r.reason).toMatch(rejectedLines[r.line]!);
  });

  test("a quoted field with a comma, quotes and a newline is kept exactly", async () => {
    const [row] = await db.sql`select product_name from orders where source_row_id = 2`;
    expect(row!.product_name).toBe('Hon Chair, "Deluxe"\nwith a newline');
  });

  test("an unsplittable line keeps its raw text, and the rejects are also written as CSV", async () => {
    const [row] = await db.sql`select raw_text, fields from rejected_rows where source_line = 6`;
    expect(row).toEqual({ raw_text: lines[4], fields: null });
    const rejectedDir = join(env.BATCHES_DIR!, "rejected");
    const files = readdirSync(rejectedDir);
    const reasons = files.flatMap((f) => parseCsv(readFileSync(join(rejectedDir, f), "utf8"), f).rows);
    expect(reasons.map((r) => Number(r.values._source_line)).sort((a, b) => a - b)).toEqual(Object.keys(rejectedLines).map(Number));
  });
});

describe("producer pace", () => {
  const tmp = tempDir();
  let env: Record<string, string>;

  beforeAll(async () => {
    env = pipelineEnv({ topic: uniqueName("pace"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: "postgres://unused@127.0.0.1:1/none" });
    await runOk("make_data.ts", ["--out", join(tmp.path, "data.csv"), "--rows", "200"], {});
  });
  afterAll(() => tmp.remove());

  // A busy machine can only make messages late, never early, so these tests check the schedule's lower bound
  // against the moment the producer was launched: message i never leaves before launch + i / rate. How closely
  // the pace is kept (drift, jitter) is measured by `make bench`, not asserted here.
  test("at --rate 1, message i never leaves before second i", async () => {
    const launched = Date.now();
    await runOk("producer.ts", ["--file", join(tmp.path, "data.csv"), "--rate", "1", "--limit", "4"], env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
    const at = await batchTimestamps(env.BATCHES_DIR!);
    expect(at).toHaveLength(4);
    for (const [i, t] of at.entries()) expect(t - launched).toBeGreaterThanOrEqual(i * 1000);
  });

  test("at --rate 50, message i never leaves before i / 50 s: 150 messages take at least 2.98 s", async () => {
    const fast = { ...env, KAFKA_TOPIC: uniqueName("pace50"), BATCHES_DIR: join(tmp.path, "fast") };
    const launched = Date.now();
    await runOk("producer.ts", ["--file", join(tmp.path, "data.csv"), "--rate", "50", "--limit", "150"], fast);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], fast);
    const at = await batchTimestamps(fast.BATCHES_DIR);
    expect(at).toHaveLength(150);
    for (const [i, t] of at.entries()) expect(t - launched).toBeGreaterThanOrEqual(i * 20);
  });

  test("a source name of 400 characters, in every key and header, does not overfill a send", async () => {
    const long = { ...env, KAFKA_TOPIC: uniqueName("long_source") };
    const file = join(tmp.path, "two-thousand.csv");
    await runOk("make_data.ts", ["--out", file, "--rows", "2000"], {});
    const produced = await runOk("producer.ts", ["--file", file, "--rate", "max", "--source", `s/${"x".repeat(398)}`], { ...long, LOG_LEVEL: "info" });
    expect(produced.stderr).toContain("done: sent=2000 ");
    expect(await topicSize(BROKERS, long.KAFKA_TOPIC)).toBe(2000);
  });

  test("--from-line resumes at that line of the file: lines before it are not sent", async () => {
    const resumed = { ...env, KAFKA_TOPIC: uniqueName("resume"), BATCHES_DIR: join(tmp.path, "resumed") };
    await runOk("producer.ts", ["--file", join(tmp.path, "data.csv"), "--rate", "max", "--from-line", "191"], resumed);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], resumed);
    const lines: number[] = [];
    for (const name of readdirSync(resumed.BATCHES_DIR).filter((f) => f.endsWith(".csv"))) {
      for (const { values } of parseCsv(await Bun.file(join(resumed.BATCHES_DIR, name)).text(), name).rows) lines.push(Number(values._source_line));
    }
    expect(lines.sort((a, b) => a - b)).toEqual(Array.from({ length: 11 }, (_, i) => 191 + i)); // the header is line 1, rows 2-201
  });
});

describe("loader", () => {
  const tmp = tempDir();
  const source = join(tmp.path, "batches");
  let env: Record<string, string>;
  let files: string[];

  beforeAll(async () => {
    env = pipelineEnv({ topic: uniqueName("loader"), group: uniqueName("g"), dir: source, databaseUrl: "postgres://unused@127.0.0.1:1/none" });
    await runOk("make_data.ts", ["--out", join(tmp.path, "data.csv"), "--rows", "2000"], {});
    await runOk("producer.ts", ["--file", join(tmp.path, "data.csv"), "--rate", "max"], env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
    files = readdirSync(source).filter((f) => f.endsWith(".csv"));
  });
  afterAll(() => tmp.remove());

  test("two loaders on the same folder at once load every file exactly once", async () => {
    const db = await createTestDatabase();
    try {
      const both = { ...env, DATABASE_URL: db.url };
      const [a, b] = await Promise.all([runOk("load.ts", [], both), runOk("load.ts", [], both)]);
      expect([a.code, b.code]).toEqual([0, 0]);
      const [ledger] = await db.sql`
        select count(*)::int as files, count(distinct file_name)::int as names, sum(inserted)::int as inserted
        from loaded_files
      `;
      expect(ledger).toEqual({ files: files.length, names: files.length, inserted: 2000 });
      expect(await count(db, "orders")).toBe(2000);
    } finally {
      await db.drop();
    }
  });

  test("--watch picks up a new file and stops cleanly on SIGTERM", async () => {
    const db = await createTestDatabase();
    const watched = join(tmp.path, "watched");
    mkdirSync(watched);
    const child = Bun.spawn([process.execPath, "scripts/load.ts", "--watch", "--dir", watched], {
      cwd: join(import.meta.dir, ".."),
      env: { ...process.env, ...env, DATABASE_URL: db.url, LOG_LEVEL: "info" },
      stderr: "pipe",
    });
    try {
      const connected = async () => {
        const [row] = await db.sql`select count(*)::int as n from pg_stat_activity where application_name = 'load'`;
        return row!.n > 0;
      };
      await waitFor("the loader to connect", connected, 10_000);
      const name = files.sort()[0]!;
      const rows = parseCsv(readFileSync(join(source, name), "utf8"), name).rows.length;
      copyFileSync(join(source, name), join(watched, name));
      await waitFor("the rows of the new file", async () => (await count(db, "orders")) === rows, 30_000, 20);
      child.kill("SIGTERM");
      expect(await child.exited).toBe(0);
      expect(await new Response(child.stderr).text()).toContain(`done: files=1 rows=${rows} inserted=${rows}`);
    } finally {
      child.kill("SIGKILL");
      await db.drop();
    }
  });

  test("--watch says for each group of files what their rows became and the orders in the table; its rate leaves out the waiting", async () => {
    const db = await createTestDatabase();
    const watched = join(tmp.path, "reported");
    mkdirSync(watched);
    const loader = startScript("load.ts", ["--watch", "--dir", watched], { ...env, DATABASE_URL: db.url, LOG_LEVEL: "info" });
    try {
      await loader.waitForOutput(/watching for new files/);
      const name = files.sort()[0]!;
      const parsed = parseCsv(readFileSync(join(source, name), "utf8"), name);
      const rows = parsed.rows.length;
      copyFileSync(join(source, name), join(watched, name));
      await loader.waitForOutput(new RegExp(`\\[load\\] 1 file: inserted=${rows} duplicates=0 rejected=0 \\(orders total ${rows}\\)\n`));
      // The same rows again in a file written by hand, the last one changed so that it cannot be cleaned.
      const again = parsed.rows.map(({ values }, i) => (i === rows - 1 ? { ...values, Sales: "lots" } : values));
      writeFileSync(join(watched, "sent-again.csv"), stringify(again, { header: true, columns: parsed.columns }));
      await loader.waitForOutput(new RegExp(`\\[load\\] 1 file: inserted=0 duplicates=${rows - 1} rejected=1 \\(orders total ${rows}\\)\n`));
      loader.child.kill("SIGTERM");
      const { code, stderr } = await loader.finish();
      expect(code).toBe(0);
      // The summary's rate counts the time spent on the two files, not the seconds of waiting for them.
      const [, seconds, rate] = stderr.match(new RegExp(`done: files=2 rows=${2 * rows} .* in (\\d+\\.\\d)s \\((\\d+(?:\\.\\d)?)/s while loading files\\)`)) ?? [];
      expect(Number(rate)).toBeGreaterThan((2 * 2 * rows) / Number(seconds));
    } finally {
      loader.child.kill("SIGKILL");
      await db.drop();
    }
  });
});
