// Input as a careless or hostile user gives it, through the real broker and database: every line ending and
// byte-order mark reads the same in all three scripts; input that cannot be read correctly is refused before
// anything is sent; standard input and pipes work; any name Kafka accepts works end to end; no password is
// ever printed.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify } from "csv-stringify/sync";
import {
  BROKERS,
  createTestDatabase,
  decimalSum,
  normalizeDecimal,
  pipelineEnv,
  ROOT,
  runOk,
  runPipeline,
  runScript,
  superstoreRows,
  tempDir,
  topicSize,
  uniqueName,
  type TestDatabase,
} from "./helpers.ts";

const COLUMNS = [
  "Row ID", "Order ID", "Order Date", "Ship Date", "Ship Mode", "Customer ID", "Customer Name", "Segment", "Country",
  "City", "State", "Postal Code", "Region", "Product ID", "Category", "Sub-Category", "Product Name", "Sales",
  "Quantity", "Discount", "Profit",
];

/** The first `n` Superstore rows as CSV lines (no line ends), header first. */
async function lines(n: number, header: string[] = COLUMNS): Promise<string[]> {
  const rows = (await superstoreRows()).slice(0, n);
  const text = stringify([header, ...rows.map((r) => COLUMNS.map((c) => r[c]!))], { record_delimiter: "\n" });
  return text.trimEnd().split("\n");
}

describe("line endings and byte-order marks read the same in producer, consumer and loader", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let env: Record<string, string>;
  const n = 25;
  const variants: Record<string, (l: string[]) => string | Uint8Array> = {
    lf: (l) => `${l.join("\n")}\n`,
    crlf: (l) => `${l.join("\r\n")}\r\n`,
    cr: (l) => `${l.join("\r")}\r`,
    mixed: (l) => l.map((line, i) => line + ["\n", "\r\n", "\r"][i % 3]).join(""),
    "doubled-cr": (l) => `${l.join("\r\r\n")}\r\r\n`,
    "bom-crlf": (l) => `\uFEFF${l.join("\r\n")}\r\n`,
    "no-final-newline": (l) => l.join("\r\n"),
    "utf16le-bom": (l) => new Uint8Array([0xff, 0xfe, ...Buffer.from(`${l.join("\r\n")}\r\n`, "utf16le")]),
    // A CR inside a quoted header field: the column still means Profit.
    "cr-in-header": (l) => [l[0]!.replace(",Profit", ',"Pro\rfit"'), ...l.slice(1)].join("\n") + "\n",
  };

  beforeAll(async () => {
    db = await createTestDatabase();
    env = pipelineEnv({ topic: uniqueName("endings"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    const base = await lines(n);
    const files = Object.entries(variants).map(([name, make]) => {
      const path = join(tmp.path, `${name}.csv`);
      writeFileSync(path, make(base));
      return path;
    });
    await runPipeline(env, files);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("every variant loads all its rows, none rejected", async () => {
    const rows = await db.sql<{ file: string; n: number }[]>`
      select regexp_replace(source_file, '^.*/', '') as file, count(*)::int as n from orders group by 1 order by 1
    `;
    expect(Object.fromEntries(rows.map((r) => [r.file, r.n]))).toEqual(
      Object.fromEntries(Object.keys(variants).sort().map((v) => [`${v}.csv`, n])),
    );
    expect((await db.sql`select count(*)::int as n from rejected_rows`)[0]!.n).toBe(0);
  });

  test("every variant gives the same values to the last digit", async () => {
    const source = (await superstoreRows()).slice(0, n);
    const sums = await db.sql<{ file: string; sales: string; profit: string; names: string }[]>`
      select regexp_replace(source_file, '^.*/', '') as file, sum(sales)::text as sales, sum(profit)::text as profit,
             string_agg(product_name, '|' order by source_row_id) as names
      from orders group by 1
    `;
    for (const row of sums) {
      expect({ file: row.file, sales: normalizeDecimal(row.sales), profit: normalizeDecimal(row.profit), names: row.names }).toEqual({
        file: row.file,
        sales: decimalSum(source.map((r) => r.Sales!)),
        profit: decimalSum(source.map((r) => r.Profit!)),
        names: source.map((r) => r["Product Name"]).join("|"),
      });
    }
  });

  test("a CR or CRLF inside a quoted value arrives exactly as written", async () => {
    const file = join(tmp.path, "inside.csv");
    const [first] = await superstoreRows();
    const values = COLUMNS.map((c) => (c === "Product Name" ? "Chair\rwith\r\nbreaks" : first![c]!));
    writeFileSync(file, stringify([COLUMNS, values], { record_delimiter: "\r\n", quoted_match: /[\r\n]/ }));
    const inside = { ...env, KAFKA_TOPIC: uniqueName("inside"), BATCHES_DIR: join(tmp.path, "inside") };
    await runPipeline(inside, [file]);
    const [loaded] = await db.sql`select product_name from orders where source_file like ${"%inside.csv"}`;
    expect(loaded!.product_name).toBe("Chair\rwith\r\nbreaks");
  });
});

describe("extra columns named like JavaScript's own properties", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  const named = ["__proto__", "constructor", "toString", "hasOwnProperty"];

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = pipelineEnv({ topic: uniqueName("proto"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    const rows = (await superstoreRows()).slice(0, 5);
    const file = join(tmp.path, "proto.csv");
    writeFileSync(file, stringify([[...COLUMNS, ...named], ...rows.map((r, i) => [...COLUMNS.map((c) => r[c]!), ...named.map((n) => `${n} ${i}`)])]));
    await runPipeline(env, [file]);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("arrive in orders.extra with their values, like any other extra column", async () => {
    const rows = await db.sql<{ extra: Record<string, string> }[]>`select extra from orders order by source_row_id`;
    // As [name, value] pairs: jsonb keeps its own key order, and a "__proto__" key is best compared as data.
    expect(rows.map((r) => Object.entries(r.extra).sort())).toEqual(
      Array.from({ length: 5 }, (_, i) => named.map((n): [string, string] => [n, `${n} ${i}`]).sort()),
    );
  });
});

describe("sources whose headers spell fields differently, sent to one topic", () => {
  const tmp = tempDir();
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = pipelineEnv({ topic: uniqueName("spelled"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
    const rows = (await superstoreRows()).slice(0, 5);
    const spelled = COLUMNS.map((c) => (c === "Sub-Category" ? "Sub Category" : c === "Row ID" ? "row_id" : c));
    const files = [COLUMNS, spelled].map((header, i) => {
      const file = join(tmp.path, `source${i}.csv`);
      writeFileSync(file, stringify([header, ...rows.map((r) => COLUMNS.map((c) => r[c]!))]));
      return file;
    });
    // One batch file holds the rows of both, under both spellings.
    await runPipeline(env, files);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("load every row of both, each field read from the column its source filled", async () => {
    const source = (await superstoreRows()).slice(0, 5);
    const rows = await db.sql<{ file: string; id: string; sub: string }[]>`
      select regexp_replace(source_file, '^.*/', '') as file, source_row_id::text as id, sub_category as sub from orders order by 1, 2::int
    `;
    expect(rows.map((r) => [r.file, r.id, r.sub])).toEqual(
      ["source0.csv", "source1.csv"].flatMap((file) => source.map((r) => [file, r["Row ID"]!, r["Sub-Category"]!])),
    );
    expect((await db.sql`select count(*)::int as n from rejected_rows`)[0]!.n).toBe(0);
  });
});

describe("input that cannot be read correctly is refused before anything is sent", () => {
  const tmp = tempDir();
  const topic = uniqueName("refused");
  const env = pipelineEnv({ topic, group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: "postgres://unused@127.0.0.1:1/none" });
  afterAll(() => tmp.remove());

  /** The file with the row's product name replaced by raw bytes. */
  const withName = (header: string, row: string, name: number[]) => {
    const [before, after] = row.split("Chair") as [string, string];
    return new Uint8Array([...Buffer.from(`${header}\n${before}`), ...name, ...Buffer.from(`${after}\n`)]);
  };
  const header = COLUMNS.join(",");
  const row = "1,CA-1,11/8/2016,11/11/2016,Second Class,CG-1,Claire,Consumer,United States,Henderson,Kentucky,42420,South,P-1,Furniture,Bookcases,Chair,261.96,2,0,41.9136";
  const cases: [string, string | Uint8Array, RegExp][] = [
    // "テーブル" in Shift-JIS: its 0x81 is undefined in Windows-1252.
    ["Shift-JIS text", withName(header, row, [0x83, 0x65, 0x81, 0x5b, 0x83, 0x75, 0x83, 0x8b]), /line 2: bytes that are neither UTF-8 nor Windows-1252/],
    // "中文产品" in GBK: every byte of it is a letter in Windows-1252, but eight in a row are not Western text.
    ["GBK text", withName(header, row, [0xd6, 0xd0, 0xce, 0xc4, 0xb2, 0xfa, 0xc6, 0xb7]), /line 2: .*a multi-byte encoding such as Shift-JIS, GBK or Big5/],
    ["UTF-8 mixed with Windows-1252", new Uint8Array([...Buffer.from(`${header}\n${row.replace("Chair", "Café")}\n${row.replace("Chair", "Caf")}`), 0xe9, 0x0a]), /line 3: bytes that are not UTF-8, in a file that is UTF-8 from line 2/],
    ["UTF-16 without a byte-order mark", new Uint8Array(Buffer.from(`${header}\n${row}\n`, "utf16le")), /UTF-16 without a byte-order mark/],
    ["an Excel workbook", new Uint8Array([0x50, 0x4b, 0x03, 0x04, ...Buffer.from("[Content_Types].xml")]), /ZIP archive/],
    ["a header spelling one field two ways", `${header},Sub Category\n${row},Bookcases\n`, /line 1: columns 16 \("Sub-Category"\) and 22 \("Sub Category"\) both mean Sub-Category/],
    ["a file that is not a Superstore export", "id,name,price\n1,chair,5\n", /line 1: not a Superstore export: no column for Order ID/],
    ["a header only", `${header}\n`, /no rows after the header: nothing was sent/],
    ["an empty file", "", /the file is empty: nothing was sent/],
  ];

  test.each(cases)("refuses %s, naming the file and line, with exit 1", async (name, content, message) => {
    const file = join(tmp.path, `${name.replace(/\W+/g, "-")}.csv`);
    writeFileSync(file, content);
    const result = await runScript("producer.ts", ["--file", file, "--rate", "max"], env);
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toContain(file);
    expect(result.stderr).toMatch(message);
  });

  test("none of them sent a single message", async () => {
    expect(await topicSize(BROKERS, topic)).toBe(0);
  });
});

describe("standard input", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let env: Record<string, string>;

  beforeAll(async () => {
    db = await createTestDatabase();
    env = pipelineEnv({ topic: uniqueName("stdin"), group: uniqueName("g"), dir: join(tmp.path, "batches"), databaseUrl: db.url });
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("--file - reads a pipe, names the source stdin (or --source), and loads every row", async () => {
    const text = `${(await lines(30)).join("\r\n")}\r\n`;
    await runOk("producer.ts", ["--file", "-", "--rate", "max"], env, 60_000, text);
    // Behind a real shell pipe, as a user types it.
    const piped = join(tmp.path, "piped.csv");
    writeFileSync(piped, text);
    const shell = Bun.spawnSync(["sh", "-c", `cat '${piped}' | '${process.execPath}' scripts/producer.ts --file /dev/stdin --rate max --source piped.csv`], {
      cwd: ROOT,
      env: { ...process.env, ...env, LOG_LEVEL: "warn" },
    });
    expect(shell.exitCode).toBe(0);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
    await runOk("load.ts", [], env);
    const rows = await db.sql<{ source_file: string; n: number }[]>`
      select source_file, count(*)::int as n from orders group by 1 order by 1
    `;
    expect(rows.map((r) => ({ ...r }))).toEqual([
      { source_file: "piped.csv", n: 30 },
      { source_file: "stdin", n: 30 },
    ]);
  });

  test("an empty pipe is refused with exit 1 instead of sending nothing quietly", async () => {
    const result = await runScript("producer.ts", ["--file", "-", "--rate", "max"], env, 60_000, "");
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toContain("the file is empty: nothing was sent");
  });
});

describe("any name Kafka accepts works end to end", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let file: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    file = join(tmp.path, "names.csv");
    writeFileSync(file, `${(await lines(12)).join("\n")}\n`);
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  const suffix = Date.now().toString(36);
  test.each([
    ["a topic of dots", `...${suffix}`, "plain group"],
    ["a hidden-looking topic", `.sales_${suffix}`, "group with spaces and ünïcödé / slashes"],
    ["the longest topic", `${suffix}_${"t".repeat(249 - suffix.length - 1)}`, "g".repeat(300)],
  ])("%s and its group load every row, in visible batch files with valid names", async (_, topic, group) => {
    const dir = join(tmp.path, `batches-${topic.length}-${topic.charCodeAt(0)}`);
    mkdirSync(dir);
    const env = pipelineEnv({ topic, group, dir, databaseUrl: db.url });
    const before = (await db.sql`select count(*)::int as n from orders`)[0]!.n as number;
    await runOk("producer.ts", ["--file", file, "--rate", "max", "--source", `${topic.length}-${topic.charCodeAt(0)}.csv`], env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
    const names = readdirSync(dir).filter((f) => f.endsWith(".csv"));
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) {
      expect(name.startsWith(".")).toBe(false);
      expect(Buffer.byteLength(name)).toBeLessThanOrEqual(255);
    }
    await runOk("load.ts", [], env);
    expect((await db.sql`select count(*)::int as n from orders`)[0]!.n).toBe(before + 12);
  });
});

describe("passwords are never printed", () => {
  const password = "Zr7-very-secret";

  test.each([
    ["load.ts", "mysql://admin:Zr7-very-secret@db/sales"],
    ["load.ts", "postgres://admin:Zr7-very-secret@db host/sales"],
    ["migrate.ts", "postgres://admin:Zr7-very-secret@127.0.0.1:1/sales"],
    ["status.ts", "postgres://admin:Zr7-very-secret@127.0.0.1:1/sales"],
  ])("%s with DATABASE_URL %p says what is wrong without the password", async (script, url) => {
    const result = await runScript(script, [], { DATABASE_URL: url, KAFKA_BROKERS: "127.0.0.1:1", LOG_LEVEL: "debug" }, 60_000);
    expect(result.code).not.toBe(0);
    expect(`${result.stderr}${result.stdout}`).not.toContain(password);
    expect(`${result.stderr}${result.stdout}`).toMatch(/DATABASE_URL|127\.0\.0\.1:1\/sales/);
  });
});
