// The exactly-once promise against the real broker and database: sources that share a base name, corrected
// lines sent again, loaded lines sent with other values, values PostgreSQL refuses, implausible values, and
// the duplicate check on a large table whose statistics are stale. Every line of every source must end up
// once in orders or once as an open rejection.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import type { DatabaseTarget } from "../scripts/lib/config.ts";
import { connect, databaseUrl, maintenance, openDatabase, withDatabase, type Sql } from "../scripts/lib/db.ts";
import { CHUNK_RECORDS, checkFile, prepareFile } from "../scripts/lib/load/read.ts";
import { commitFiles, type FileResult } from "../scripts/lib/load/transaction.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { createTestDatabase, pipelineEnv, runOk, runPipeline, runScript, startScript, tableRows, tempDir, uniqueName, waitFor, type RunResult, type TestDatabase } from "./helpers.ts";
import { SUPERSTORE_HEADER, superstoreRow } from "./fixtures/superstore.ts";

const HEADER = SUPERSTORE_HEADER.join(",");

/** A Superstore row; `over` replaces fields by column name. */
function line(id: number, over: Record<string, string> = {}): string {
  const values = superstoreRow({
    "Row ID": String(id),
    "Order ID": `CA-2016-${100000 + id}`,
    "Customer ID": `CG-${12500 + (id % 7)}`,
    "Product ID": `FUR-BO-${10000 + (id % 5)}`,
    "Product Name": "Bookcase",
    Sales: `${100 + id}.5`,
    Profit: "4.25",
    ...over,
  });
  return HEADER.split(",")
    .map((c) => values[c]!)
    .join(",");
}

function csv(lines: string[]): string {
  return `${[HEADER, ...lines].join("\r\n")}\r\n`;
}

interface Where {
  db: TestDatabase;
  env: Record<string, string>;
  dir: string;
}

async function setUp(prefix: string, tmp: string): Promise<Where> {
  const db = await createTestDatabase();
  const name = uniqueName(prefix);
  const dir = join(tmp, name);
  mkdirSync(dir);
  const env = pipelineEnv({ topic: name, group: `${name}-g`, dir: join(dir, "batches"), databaseUrl: db.url });
  return { db, env, dir };
}

/** Produce these files, consume until idle, load: the whole pipeline once. */
const run = (where: Where, files: string[], consumerArgs: string[] = []) => runPipeline(where.env, files, consumerArgs);

/** Every (source file, line) in orders or among the open rejections, each with where it is. */
async function placement(where: Where): Promise<string[]> {
  const rows = await where.db.sql<{ file: string; line: number; place: string }[]>`
    select source_file as file, source_line as line, 'orders' as place from orders
    union all
    select source_file, source_line, 'open' from rejected_rows where status = 'open'
  `;
  return rows.map((r) => `${relative(where.dir, r.file)}:${r.line} ${r.place}`).sort();
}

describe("two source files with the same name in different folders", () => {
  const tmp = tempDir();
  let where: Where;

  beforeAll(async () => {
    where = await setUp("samename", tmp.path);
    for (const year of ["2016", "2017"]) {
      mkdirSync(join(where.dir, year));
      writeFileSync(join(where.dir, year, "sales.csv"), csv([line(1), line(2, { Sales: "oops" }), line(3)]));
    }
    await run(where, [join(where.dir, "2016", "sales.csv"), join(where.dir, "2017", "sales.csv")]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("never share an identity: each file's rows and its rejection are kept apart", async () => {
    expect(await placement(where)).toEqual([
      "2016/sales.csv:2 orders",
      "2016/sales.csv:3 open",
      "2016/sales.csv:4 orders",
      "2017/sales.csv:2 orders",
      "2017/sales.csv:3 open",
      "2017/sales.csv:4 orders",
    ]);
  });
});

describe("a rejected line corrected and sent again", () => {
  const tmp = tempDir();
  let where: Where;
  let file: string;
  let second: string;

  beforeAll(async () => {
    where = await setUp("correct", tmp.path);
    file = join(where.dir, "orders.csv");
    writeFileSync(file, csv([line(1), line(2, { "Order Date": "13/45/2016" }), line(3), line(4)]));
    await run(where, [file]);
    // The user fixes line 3 and sends the whole file again.
    writeFileSync(file, csv([line(1), line(2), line(3), line(4)]));
    second = await run(where, [file]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("lands in orders once, and its rejection is resolved, kept for audit", async () => {
    expect(await placement(where)).toEqual(["orders.csv:2 orders", "orders.csv:3 orders", "orders.csv:4 orders", "orders.csv:5 orders"]);
    const rejections = await where.db.sql`select source_line, status, resolved_by is not null as resolved_by from rejected_rows`;
    expect(rejections.map((r) => ({ ...r }))).toEqual([{ source_line: 3, status: "resolved", resolved_by: true }]);
  });

  test("the second run inserts the corrected row and counts the rest as duplicates", () => {
    expect(second).toContain("inserted=1 duplicates=3 rejected=0");
    expect(second).toContain("resolved=1");
  });

  test("a line already loaded, sent with other values, is recorded as a conflict and orders keeps the first", async () => {
    writeFileSync(file, csv([line(1, { Sales: "999.99" }), line(2), line(3), line(4)]));
    const third = await run(where, [file]);
    expect(third).toContain("inserted=0 duplicates=3 rejected=1");
    const [kept] = await where.db.sql`select sales::text as sales from orders where source_row_id = 1`;
    expect(kept!.sales).toBe("101.5");
    const [conflict] = await where.db.sql`select status, reason from rejected_rows where status = 'conflict'`;
    expect(conflict!.reason).toBe("Row ID 1 is already loaded with other values; the row loaded from line 2 stays in orders");
    expect(await placement(where)).toEqual(["orders.csv:2 orders", "orders.csv:3 orders", "orders.csv:4 orders", "orders.csv:5 orders"]);
  });

  test("replaying the whole topic afterwards changes nothing", async () => {
    const before = await where.db.sql`select source_line, status, reason from rejected_rows order by id`;
    const replay = { ...where, env: { ...where.env, KAFKA_GROUP_ID: uniqueName("replay"), BATCHES_DIR: join(where.dir, "replay") } };
    await run(replay, [], ["--from-beginning"]);
    expect(await where.db.sql`select source_line, status, reason from rejected_rows order by id`).toEqual(before);
    expect(await placement(where)).toEqual(["orders.csv:2 orders", "orders.csv:3 orders", "orders.csv:4 orders", "orders.csv:5 orders"]);
  });
});

describe("a record broken across two lines, corrected and sent again", () => {
  const tmp = tempDir();
  let where: Where;

  beforeAll(async () => {
    where = await setUp("twolines", tmp.path);
    const file = join(where.dir, "t.csv");
    // A product name with a line break, and one field too many: both of its lines are rejected on their own.
    writeFileSync(file, csv([`${line(1, { "Product Name": '"Book\ncase"' })},extra`, line(2)]));
    await run(where, [file]);
    writeFileSync(file, csv([line(1, { "Product Name": '"Book\ncase"' }), line(2)]));
    await run(where, [file]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("resolves the rejections of both lines when the record loads", async () => {
    const rejected = await where.db.sql<{ line: number; status: string }[]>`select source_line as line, status from rejected_rows order by 1`;
    expect(rejected.map((r) => [r.line, r.status])).toEqual([
      [2, "resolved"],
      [3, "resolved"],
    ]);
    expect(await placement(where)).toEqual(["t.csv:2 orders", "t.csv:4 orders"]);
  });
});

describe("versions of one line that meet in one load", () => {
  const tmp = tempDir();
  let where: Where;
  let file: string;
  const rows = (last: string) => csv([line(1), line(2), line(3), line(4), last]);
  const produce = (content: string) => {
    writeFileSync(file, content);
    return runOk("producer.ts", ["--file", file, "--rate", "max"], where.env);
  };

  beforeAll(async () => {
    where = await setUp("versions", tmp.path);
    file = join(where.dir, "v.csv");
    writeFileSync(file, rows(line(5)));
    await run(where, [file]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("two new versions of a loaded line in one batch file: recorded once as a conflict, the later one, and the load goes on", async () => {
    await produce(rows(line(5, { Sales: "111.5" })));
    await produce(rows(line(5, { Sales: "222.5" })));
    const summary = await run(where, []);
    expect(summary).toContain("inserted=0 duplicates=8 rejected=2");
    const rejected = await where.db.sql<{ status: string; sales: string }[]>`
      select status, fields->>'Sales' as sales from rejected_rows where source_line = 6
    `;
    expect(rejected.map((r) => ({ ...r }))).toEqual([{ status: "conflict", sales: "222.5" }]);
    const [kept] = await where.db.sql`select sales::text as sales from orders where source_row_id = 5`;
    expect(kept!.sales).toBe("105.5");
  });

  test("a broken line, its correction and another broken version, in three files of one group: the line is loaded, nothing open", async () => {
    const upToLine7 = (last: string) => csv([line(1), line(2), line(3), line(4), line(5), last]);
    await produce(upToLine7(line(6, { "Row ID": "abc" })));
    await produce(upToLine7(line(6)));
    await produce(upToLine7(line(6, { "Row ID": "xyz" })));
    const summary = await run(where, [], ["--batch-size", "6"]);
    expect(summary).toContain("files=3 ");
    expect(await placement(where)).toContain("v.csv:7 orders");
    expect(await placement(where)).not.toContain("v.csv:7 open");
    const statuses = await where.db.sql<{ status: string }[]>`select status from rejected_rows where source_line = 7 order by status`;
    expect(statuses.map((r) => r.status)).toEqual(["conflict", "resolved"]);
  });

  /** Sends `lines` as the source `name` (a file of its own: its lines are apart from the other tests'). */
  const send = (name: string, lines: string[]) => {
    const path = join(where.dir, name);
    writeFileSync(path, csv(lines));
    return runOk("producer.ts", ["--file", path, "--rate", "max"], where.env);
  };

  test("two broken versions of a new line in one batch file: the later one is the open rejection", async () => {
    await send("w.csv", [line(1, { "Order Date": "13/45/2016" })]);
    await send("w.csv", [line(1, { Quantity: "-5" })]);
    const summary = await run(where, []);
    expect(summary).toContain("inserted=0 duplicates=0 rejected=2");
    const rejected = await where.db.sql<{ status: string; reason: string }[]>`select status, reason from rejected_rows where source_file like ${"%w.csv"}`;
    expect(rejected.map((r) => [r.status, r.reason])).toEqual([["open", "Quantity: -5 is not a positive count of items"]]);
  });

  test("a broken version of a new line, then the clean one, in one batch file: loaded, the rejection resolved", async () => {
    await send("x.csv", [line(1, { "Order Date": "13/45/2016" })]);
    await send("x.csv", [line(1)]);
    const summary = await run(where, []);
    expect(summary).toContain("inserted=1 duplicates=0 rejected=1");
    expect(summary).toContain("resolved=1");
    const rejected = await where.db.sql<{ status: string }[]>`select status from rejected_rows where source_file like ${"%x.csv"}`;
    expect(rejected.map((r) => r.status)).toEqual(["resolved"]);
    expect((await placement(where)).filter((p) => p.startsWith("x.csv"))).toEqual(["x.csv:2 orders"]);
  });

  test("a source name too long for an index entry loads under a shortened name, the same on every load", async () => {
    const source = `${"long-name/".repeat(300)}sales.csv`;
    const other = join(where.dir, "other.csv");
    writeFileSync(other, csv([line(1), line(2)]));
    for (let i = 0; i < 2; i++) await runOk("producer.ts", ["--file", other, "--rate", "max", "--source", source], where.env);
    const summary = await run(where, []);
    expect(summary).toContain("inserted=2 duplicates=2 rejected=0");
    const stored = await where.db.sql<{ name: string }[]>`select distinct source_file as name from orders where source_file like 'long-name/%'`;
    expect(stored).toHaveLength(1);
    expect(Buffer.byteLength(stored[0]!.name)).toBeLessThanOrEqual(1000);
    expect(stored[0]!.name).toMatch(/^long-name\/long-name\/.*\.\.\.\[sha256 [0-9a-f]{16}\]$/);
  });
});

describe("small files and a big one in one group, sharing chunks", () => {
  const tmp = tempDir();
  let together: TestDatabase;
  let apart: TestDatabase;
  // A file longer than a chunk, so the files after its last chunk load in one round with it.
  const n = CHUNK_RECORDS + 100;
  const names = ["g1.csv", "g2.csv", "g3.csv", "g4.csv"];
  /** A hand-written batch file: each record names its source and line, as the consumer's do. */
  const batch = (records: [source: string, row: string][]) =>
    `${HEADER},_source_file,_source_line\n${records.map(([source, row]) => `${row},${source},${Number(row.split(",")[0]) + 1}`).join("\n")}\n`;
  const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
  const s = (id: number, over: Record<string, string> = {}): [string, string] => ["s.csv", line(id, over)];
  const files = [
    batch(range(1, 40).map((id) => s(id, id === 10 ? { Quantity: "-5" } : {}))),
    batch(range(1, n).map((id) => s(id, id === 20 ? { Sales: "1.5" } : id === 30 ? { "Order Date": "13/45/2016" } : {}))),
    batch(range(n - 10, n + 20).map((id) => s(id, id === n + 5 ? { Quantity: "-5" } : {}))),
    batch([...range(n + 1, n + 30).map((id) => s(id, id === n + 3 ? { Sales: "2.5" } : {})), ["t.csv", line(5)]]),
  ];
  let results: { group: FileResult[]; oneByOne: FileResult[] };

  const loadInto = async (target: TestDatabase, groups: string[][]): Promise<FileResult[]> => {
    const db = openDatabase(target.target, createLogger("test", "silent"), { max: 1 });
    try {
      const out: FileResult[] = [];
      for (const group of groups) out.push(...(await commitFiles(db, await Promise.all(group.map((name) => checkFile(tmp.path, name))))));
      return out;
    } finally {
      await db.end();
    }
  };

  beforeAll(async () => {
    for (const [i, name] of names.entries()) writeFileSync(join(tmp.path, name), files[i]!);
    [together, apart] = [await createTestDatabase(), await createTestDatabase()];
    results = { group: await loadInto(together, [names]), oneByOne: await loadInto(apart, names.map((name) => [name])) };
  });
  afterAll(async () => {
    await together?.drop();
    await apart?.drop();
    tmp.remove();
  });

  test("each file's counts are those of loading the files one by one, in order", () => {
    const counts = (r: FileResult) => [r.name, r.records, r.inserted, r.duplicates, r.rejected, r.warnings, r.resolved, r.crossSource.length];
    expect(results.group.map(counts)).toEqual([
      ["g1.csv", 40, 39, 0, 1, 0, 0, 0],
      ["g2.csv", n, n - 39, 37, 2, 0, 1, 0],
      ["g3.csv", 31, 19, 11, 1, 0, 0, 0],
      ["g4.csv", 31, 12, 18, 1, 0, 1, 1],
    ]);
    expect(results.group).toEqual(results.oneByOne);
  });

  test("leaves the tables and the ledger as loading them one by one does", async () => {
    const tables = async (db: TestDatabase) => ({
      orders: await tableRows(db.sql, "orders", "source_file, source_row_id", ["row_id", "loaded_at"]),
      rejected: await tableRows(db.sql, "rejected_rows", "source_file, source_line, status", ["id", "rejected_at", "resolved_at"]),
      ledger: await tableRows(db.sql, "loaded_files", "file_name", ["loaded_at"]),
    });
    const [group, oneByOne] = [await tables(together), await tables(apart)];
    expect(group.rejected.map((r) => [r.source_line, r.status, r.resolved_by])).toEqual([
      [11, "resolved", "g2.csv"],
      [21, "conflict", null],
      [31, "conflict", null],
      [n + 4, "conflict", null],
      [n + 6, "resolved", "g4.csv"],
    ]);
    expect(group).toEqual(oneByOne);
  });
});

describe("a batch file replaced by another of the same name", () => {
  const tmp = tempDir();
  let where: Where;
  let dir: string;
  /** Writes a batch by hand, dated a minute back (not "still being written"). */
  const put = (name: string, ids: number[]) => {
    const path = join(dir, name);
    writeFileSync(join(dir, `.${name}`), csv(ids.map((id) => line(id))));
    renameSync(join(dir, `.${name}`), path); // a new file in the name's place, as a copy tool leaves it
    const old = new Date(Date.now() - 60_000);
    utimesSync(path, old, old);
  };
  const ids = async () => (await where.db.sql<{ id: string }[]>`select source_row_id::text as id from orders order by 1::int`).map((r) => Number(r.id));

  beforeAll(async () => {
    where = await setUp("replaced", tmp.path);
    dir = join(where.dir, "hand");
    mkdirSync(dir);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("is loaded by the next run: the ledger knows the name, not this content", async () => {
    put("hand.csv", [1, 2, 3]);
    await runOk("load.ts", ["--dir", dir], where.env);
    put("hand.csv", [4, 5, 6]);
    await runOk("load.ts", ["--dir", dir], where.env);
    expect(await ids()).toEqual([1, 2, 3, 4, 5, 6]);
    // The same content again is still a no-op.
    const again = await runOk("load.ts", ["--dir", dir], { ...where.env, LOG_LEVEL: "info" });
    expect(again.stderr).toContain("files=0 ");
  });

  test("is loaded by a running loader when written over in place, same size and its time set back", async () => {
    const loader = startScript("load.ts", ["--watch", "--dir", dir], where.env);
    try {
      put("inplace.csv", [20, 21]);
      await waitFor("rows 20 and 21", async () => (await ids()).includes(21));
      const path = join(dir, "inplace.csv");
      const before = statSync(path);
      writeFileSync(path, csv([line(22), line(23)])); // same length, same inode
      utimesSync(path, before.atime, before.mtime);
      expect([statSync(path).size, statSync(path).ino, statSync(path).mtimeMs]).toEqual([before.size, before.ino, before.mtimeMs]);
      await waitFor("rows 22 and 23", async () => (await ids()).includes(23));
    } finally {
      loader.child.kill("SIGTERM");
      await loader.finish();
    }
  });

  test("a file still being written is judged only once it has been left alone", async () => {
    const loader = startScript("load.ts", ["--watch", "--dir", dir], where.env);
    try {
      const path = join(dir, "growing.csv");
      const whole = csv([line(30, { Profit: "41.9136" })]);
      writeFileSync(path, whole.slice(0, whole.indexOf("41.9136") + 2)); // "...,41": a complete-looking row
      await Bun.sleep(300); // the copy goes on
      writeFileSync(path, whole);
      await waitFor("row 30", async () => (await ids()).includes(30));
    } finally {
      loader.child.kill("SIGTERM");
      await loader.finish();
    }
    const [row] = await where.db.sql`select profit::text as profit from orders where source_row_id = 30`;
    expect(row!.profit).toBe("41.9136");
  });

  test("a link to a batch file elsewhere is loaded like the file", async () => {
    const elsewhere = join(where.dir, "elsewhere.csv");
    writeFileSync(elsewhere, csv([line(40)]));
    const old = new Date(Date.now() - 60_000);
    utimesSync(elsewhere, old, old);
    symlinkSync(elsewhere, join(dir, "link.csv"));
    await runOk("load.ts", ["--dir", dir], where.env);
    expect(await ids()).toContain(40);
  });

  test("a bad file set aside does not replace one of the same name set aside before", async () => {
    const bad = join(where.dir, "bad");
    mkdirSync(bad);
    for (const content of ["a,a\n1,2\n", 'x,y\n"open,2\n']) {
      writeFileSync(join(bad, "bad.csv"), content);
      utimesSync(join(bad, "bad.csv"), new Date(0), new Date(0));
      await runScript("load.ts", ["--dir", bad], where.env);
    }
    const failed = readdirSync(join(bad, "failed")).sort();
    expect(failed).toEqual(["bad.2.csv", "bad.2.csv.reason.txt", "bad.csv", "bad.csv.reason.txt"]);
    expect(readFileSync(join(bad, "failed", "bad.2.csv"), "utf8")).toContain('"open');
  });

  test("is loaded by a running loader too", async () => {
    const loader = startScript("load.ts", ["--watch", "--dir", dir], where.env);
    try {
      put("watched.csv", [10, 11]);
      await waitFor("rows 10 and 11", async () => (await ids()).includes(11));
      put("watched.csv", [12, 13]);
      await waitFor("rows 12 and 13", async () => (await ids()).includes(13));
    } finally {
      loader.child.kill("SIGTERM");
      await loader.finish();
    }
    expect((await ids()).filter((id) => id >= 10 && id < 20)).toEqual([10, 11, 12, 13]);
  });
});

describe("a statement PostgreSQL gives up on (a lock it could not get in time)", () => {
  const tmp = tempDir();
  let where: Where;

  beforeAll(async () => {
    where = await setUp("locked", tmp.path);
    await where.db.sql.unsafe(`alter database "${where.db.name}" set lock_timeout = '200ms'`);
    const file = join(where.dir, "l.csv");
    writeFileSync(file, csv([line(1), line(2), line(3)]));
    await runOk("producer.ts", ["--file", file, "--rate", "max"], where.env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], where.env);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("is tried again, and the rows load: not one becomes a rejection", async () => {
    const holder = connect(where.db.target, createLogger("test", "silent"), { max: 1 });
    const release = Promise.withResolvers<void>();
    const held = holder.begin(async (tx) => {
      await tx`lock table orders in access exclusive mode`;
      await release.promise;
    });
    try {
      await waitFor("the lock to be held", async () => (await where.db.sql`select count(*)::int as n from pg_locks where relation = 'orders'::regclass and granted`)[0]!.n > 0);
      const loader = startScript("load.ts", [], where.env);
      await loader.waitForOutput(/the attempt failed at PostgreSQL .*lock timeout.*again in/);
      release.resolve();
      await held;
      const result = await loader.finish();
      expect(result.code, result.stderr).toBe(0);
    } finally {
      release.resolve();
      await holder.end();
    }
    expect(await placement(where)).toEqual(["l.csv:2 orders", "l.csv:3 orders", "l.csv:4 orders"]);
  });

  test("a statement timeout set on the database does not cancel the loader's statements", async () => {
    // Connections opened from now on start with it; this test's own connection was opened before.
    await where.db.sql.unsafe(`alter database "${where.db.name}" set statement_timeout = '1ms'`);
    const file = join(where.dir, "t.csv");
    writeFileSync(file, csv(Array.from({ length: 300 }, (_, i) => line(i + 1))));
    await runPipeline(where.env, [file]);
    expect((await placement(where)).filter((p) => p.startsWith("t.csv"))).toHaveLength(300);
  });
});

describe("a file PostgreSQL refuses even row by row", () => {
  const tmp = tempDir();
  let where: Where;
  let summary: RunResult;

  beforeAll(async () => {
    where = await setUp("refusedfile", tmp.path);
    // Rules of this database alone: orders refuses one product name, and rejected_rows refuses to record why.
    await where.db.sql`alter table orders add constraint no_bad_product check (product_name <> 'Refused Chair')`;
    await where.db.sql`alter table rejected_rows add constraint no_bad_reason check (reason not like '%no_bad_product%')`;
    const bad = join(where.dir, "bad.csv");
    const good = join(where.dir, "good.csv");
    writeFileSync(bad, csv([line(1), line(2, { "Product Name": "Refused Chair" })]));
    writeFileSync(good, csv([line(1), line(2)]));
    for (const file of [bad, good]) await runOk("producer.ts", ["--file", file, "--rate", "max"], where.env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", "--batch-size", "2"], where.env);
    summary = await runScript("load.ts", [], { ...where.env, LOG_LEVEL: "info" });
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("is set aside with the reason, the files after it load, and the loader says it failed", async () => {
    expect(summary.code, summary.stderr).toBe(1);
    expect(summary.stderr).toContain("failed_files=1");
    const failed = readdirSync(join(where.env.BATCHES_DIR!, "failed"));
    expect(failed.filter((f) => f.endsWith(".csv"))).toHaveLength(1);
    const reason = readFileSync(join(where.env.BATCHES_DIR!, "failed", failed.find((f) => f.endsWith(".reason.txt"))!), "utf8");
    expect(reason).toContain("PostgreSQL refused the file even row by row");
    expect(await placement(where)).toEqual(["good.csv:2 orders", "good.csv:3 orders"]);
  });
});

describe("values PostgreSQL refuses", () => {
  const tmp = tempDir();
  let where: Where;
  let summary: string;

  beforeAll(async () => {
    where = await setUp("refused", tmp.path);
    // A rule only the database knows, as a stand-in for any refusal the loader's own checks cannot foresee.
    await where.db.sql`alter table orders add constraint test_no_seven check (quantity <> 7)`;
    const file = join(where.dir, "refused.csv");
    const rows = [line(1), line(2, { Quantity: "7" }), line(3, { Profit: `1.${"3".repeat(20_000)}` }), line(4)];
    writeFileSync(file, csv([...rows, ...Array.from({ length: 150 }, (_, i) => line(10 + i))]));
    summary = await run(where, [file]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("cost one rejection each, with the reason, and the rest of the file loads", async () => {
    const placed = await placement(where);
    expect(placed.filter((p) => p.endsWith("open"))).toEqual(["refused.csv:3 open", "refused.csv:4 open"]);
    expect(placed.filter((p) => p.endsWith("orders"))).toHaveLength(152);
    const reasons = await where.db.sql<{ line: number; reason: string }[]>`
      select source_line as line, reason from rejected_rows order by 1
    `;
    expect(reasons[0]!.reason).toMatch(/^PostgreSQL refused the row: new row for relation "orders" violates check constraint "test_no_seven"/);
    expect(reasons[1]!.reason).toBe("Profit: 20000 digits after the point, more than the 16383 PostgreSQL takes");
    expect(summary).toContain("rejected=2");
  });

  test("leave no session behind, idle in a transaction", async () => {
    const [idle] = await where.db.sql`
      select count(*)::int as n from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'
    `;
    expect(idle!.n).toBe(0);
  });
});

describe("plausibility", () => {
  const tmp = tempDir();
  let where: Where;
  let summary: string;

  beforeAll(async () => {
    where = await setUp("plausible", tmp.path);
    const file = join(where.dir, "odd.csv");
    writeFileSync(
      file,
      csv([line(1), line(2, { "Ship Date": "11/1/2016" }), line(3, { Discount: "20" }), line(4, { Quantity: "0" }), line(5, { Profit: "500" })]),
    );
    summary = await run(where, [file]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("impossible values are rejected, odd ones load with a warning that is counted", async () => {
    expect(await placement(where)).toEqual(["odd.csv:2 orders", "odd.csv:3 orders", "odd.csv:4 open", "odd.csv:5 open", "odd.csv:6 orders"]);
    const warned = await where.db.sql<{ id: string; warnings: string[] }[]>`
      select source_row_id::text as id, warnings from orders where warnings is not null order by 1
    `;
    expect(warned.map((r) => ({ ...r }))).toEqual([
      { id: "2", warnings: ["Ship Date: 2016-11-01 is before the order date 2016-11-08"] },
      { id: "5", warnings: ["Profit: 500 is more than the sales of 105.5"] },
    ]);
    expect(summary).toContain("warnings=2");
  });
});

describe("the same rows under another source name", () => {
  const tmp = tempDir();
  let where: Where;
  let file: string;
  let first: string;
  let second: string;
  const total = async () => (await where.db.sql`select sum(sales)::text as sales, count(*)::int as n from orders`)[0] as { sales: string; n: number };
  /** A source as the tests name it: files in the test's folder relative to it (they are stored by absolute path). */
  const named = (source: string | null) => (source?.startsWith("/") ? relative(where.dir, source) : source);

  beforeAll(async () => {
    where = await setUp("samerows", tmp.path);
    file = join(where.dir, "orders.csv");
    writeFileSync(file, csv([line(1), line(2), line(3), line(4, { Sales: "oops" })]));
    first = await run(where, [file]);
    // A copy of the file in another folder, and the README's stdin example with --source, sent the same run.
    mkdirSync(join(where.dir, "copy"));
    copyFileSync(file, join(where.dir, "copy", "orders.csv"));
    await runOk("producer.ts", ["--file", "-", "--source", "s-2017.csv", "--rate", "max"], where.env, undefined, readFileSync(file));
    second = await run(where, [join(where.dir, "copy", "orders.csv")]);
  });
  afterAll(async () => {
    await where?.db.drop();
    tmp.remove();
  });

  test("are loaded, marked with the source loaded first, counted, and the loader warns naming both sources", async () => {
    expect(first).toContain("inserted=3 duplicates=0 rejected=1");
    expect(first).toContain("cross_source=0 ");
    expect(second).toContain("inserted=6 duplicates=0 rejected=2");
    expect(second).toContain("cross_source=6 ");
    expect(second).toContain(
      `3 rows of "s-2017.csv" have the Row ID and every value of rows loaded before from another source (Row ID 1 at line 2 = line 2 of "${file}"); ` +
        "they are loaded, and count twice in every total",
    );
    expect(second).toContain(`delete from orders where source_file = '${join(where.dir, "copy", "orders.csv")}' and same_as_source is not null`);
    expect(second).toMatch(/6 rows loaded repeat rows of another source and count twice in every total/);
    const marked = await where.db.sql<{ source: string; id: string; same: string | null }[]>`
      select source_file as source, source_row_id::text as id, same_as_source as same from orders order by 1, 2
    `;
    expect(marked.map((r) => `${named(r.source)}:${r.id} ${named(r.same)}`)).toEqual([
      "copy/orders.csv:1 orders.csv",
      "copy/orders.csv:2 orders.csv",
      "copy/orders.csv:3 orders.csv",
      "orders.csv:1 null",
      "orders.csv:2 null",
      "orders.csv:3 null",
      "s-2017.csv:1 orders.csv",
      "s-2017.csv:2 orders.csv",
      "s-2017.csv:3 orders.csv",
    ]);
    const [ledger] = await where.db.sql`select sum(cross_source)::int as n from loaded_files`;
    expect(ledger!.n).toBe(6);
  });

  test("make status lists them by source, and the statement the warning gives removes a copy exactly", async () => {
    const status = await runOk("status.ts", [], where.env);
    expect(status.stdout).toContain("WARNING: 6 rows repeat the Row ID and values of rows of another source and count twice in the totals above:");
    expect(status.stdout).toContain(`    ${join(where.dir, "copy", "orders.csv")}: 3 rows, the same as ${file}`);
    expect(status.stdout).toContain(`    s-2017.csv: 3 rows, the same as ${file}`);
    // Three times 101.5 + 102.5 + 103.5: the copies count in the total, as the warning says.
    expect(await total()).toEqual({ sales: "922.5", n: 9 });
    for (const source of [join(where.dir, "copy", "orders.csv"), "s-2017.csv"]) {
      await where.db.sql`delete from orders where source_file = ${source} and same_as_source is not null`;
    }
    expect(await total()).toEqual({ sales: "307.5", n: 3 });
    const again = await runOk("status.ts", [], where.env);
    expect(again.stdout).not.toContain("WARNING");
  });

  test("controls: another Row ID with the same values, or the same Row ID with one value changed, is a row of its own", async () => {
    const other = join(where.dir, "other.csv");
    // Row ID 7 carries line 1's values; Row ID 2 differs from orders.csv's in Profit alone.
    writeFileSync(other, csv([line(7, { "Order ID": "CA-2016-100001", Sales: "101.5", "Customer ID": "CG-12501", "Product ID": "FUR-BO-10001" }), line(2, { Profit: "4.26" })]));
    const summary = await run(where, [other]);
    expect(summary).toContain("inserted=2 duplicates=0 rejected=0");
    expect(summary).toContain("cross_source=0 ");
    const [marked] = await where.db.sql`select count(*)::int as n from orders where source_file = ${other} and same_as_source is not null`;
    expect(marked!.n).toBe(0);
  });

  test("a row and its copy in one load: the first in the file's order stays unmarked, the other is marked", async () => {
    const a = join(where.dir, "a.csv");
    const b = join(where.dir, "b.csv");
    writeFileSync(a, csv([line(50), line(51)]));
    writeFileSync(b, csv([line(50), line(51)]));
    const summary = await run(where, [a, b]);
    expect(summary).toContain("inserted=4 ");
    expect(summary).toContain("cross_source=2 ");
    const rows = await where.db.sql<{ source: string; same: string | null }[]>`
      select source_file as source, same_as_source as same from orders where source_row_id in (50, 51) order by 1, source_row_id
    `;
    expect(rows.map((r) => `${named(r.source)} ${named(r.same)}`)).toEqual(["a.csv null", "a.csv null", "b.csv a.csv", "b.csv a.csv"]);
  });
});

describe("the duplicate check at any table size", () => {
  const tmp = tempDir();
  const quiet = createLogger("test", "silent");
  let where: Where;
  let files: string[];
  let fresh: DatabaseTarget;
  let sql: Sql;

  beforeAll(async () => {
    where = await setUp("indexes", tmp.path);
    await where.db.sql`alter table orders set (autovacuum_enabled = false)`;
    await where.db.sql.end();
    // A copy of the migrated database: its tables' statistics start at zero, so the counts below hold only
    // what the loader reads (the migrations' own scans stay with the original).
    fresh = withDatabase(where.db.target, `${where.db.name}_copy`);
    const admin = maintenance(where.db.target, quiet);
    await waitFor("the template to be free", () =>
      admin.unsafe(`create database "${fresh.database}" template "${where.db.name}"`).then(
        () => true,
        (error: { code?: string }) => (error.code === "55006" ? false : Promise.reject(error)),
      ),
    );
    await admin.end();
    where.env.DATABASE_URL = databaseUrl(fresh);
    sql = connect(fresh, quiet, { max: 1 });
    const file = join(where.dir, "small.csv");
    writeFileSync(file, csv(Array.from({ length: 2000 }, (_, i) => line(i + 1))));
    await runOk("producer.ts", ["--file", file, "--rate", "max"], where.env);
    await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], where.env);
    files = readdirSync(where.env.BATCHES_DIR!).filter((f) => f.endsWith(".csv")).sort();
  });
  afterAll(async () => {
    await sql?.end();
    const admin = maintenance(where.db.target, quiet);
    await admin.unsafe(`drop database if exists "${fresh.database}" with (force)`);
    await admin.end();
    await where?.db.drop();
    tmp.remove();
  });

  test("uses the identity index even after orders grew under a running loader", async () => {
    const watched = join(where.dir, "watched");
    mkdirSync(watched);
    const loader = startScript("load.ts", ["--watch", "--dir", watched], where.env);
    const loaded = async (n: number) => waitFor(`${n} files loaded`, async () => (await sql`select count(*)::int as n from loaded_files`)[0]!.n >= n);
    const feed = async (names: string[], already: number) => {
      for (const [i, name] of names.entries()) {
        copyFileSync(join(where.env.BATCHES_DIR!, name), join(watched, name));
        await loaded(already + i + 1);
      }
    };
    try {
      // Ten files into a nearly empty table: the session's statements are planned while orders is small.
      await feed(files.slice(0, 10), 0);
      // Then orders grows to 200,000 rows behind the loader's back, with no ANALYZE (inserting reads nothing).
      await sql`insert into users (customer_id, latest_order_date, latest_source_row_id, latest_source_file) values ('BIG', '2016-01-01', 1, 'big.csv')`;
      await sql`insert into products (product_id, latest_order_date, latest_source_row_id, latest_source_file) values ('BIG', '2016-01-01', 1, 'big.csv')`;
      await sql`
        insert into orders (order_id, order_date, customer_id, product_id, sales, quantity, source_file, source_row_id, source_line, batch_file)
        select 'O-' || i, date '2016-01-01', 'BIG', 'BIG', 1, 1, 'big.csv', i, i + 1, 'big' from generate_series(1, 200000) as i
      `;
      // Each of the ten loads looked orders up once, and nothing else has read it: wait until the loader has
      // reported those ten reads (a busy backend reports at most once a second, an idle one within ten).
      const before = await waitFor("the loader's statistics", async () => {
        const now = await scans(sql);
        return now.seq + now.index >= 10 && now;
      });
      await feed(files.slice(10), 10);
      loader.child.kill("SIGTERM");
      expect((await loader.finish()).code).toBe(0);
      // The loader has exited, and a backend reports its statistics when it ends: ten files of 100 rows are
      // 1,000 probes of the identity index, and not one read of the whole table.
      const after = await waitFor("1,000 index probes reported", async () => {
        const now = await scans(sql);
        return now.index >= before.index + 1000 && now;
      });
      expect(after.seq).toBe(before.seq);
    } finally {
      loader.child.kill("SIGKILL");
    }
    const [count] = await sql`select count(*)::int as n from orders where batch_file <> 'big'`;
    expect(count!.n).toBe(2000);
  });
  test("probes the index for a batch a tenth the size of the table, where a join would read the table whole", async () => {
    const own = await setUp("probes", tmp.path);
    try {
      await own.db.sql`insert into users (customer_id, latest_order_date, latest_source_row_id, latest_source_file) values ('BIG', '2016-01-01', 1, 'big.csv')`;
      await own.db.sql`insert into products (product_id, latest_order_date, latest_source_row_id, latest_source_file) values ('BIG', '2016-01-01', 1, 'big.csv')`;
      await own.db.sql`
        insert into orders (order_id, order_date, customer_id, product_id, sales, quantity, source_file, source_row_id, source_line, batch_file)
        select 'O-' || i, date '2016-01-01', 'BIG', 'BIG', 1, 1, 'big.csv', i, i + 1, 'big' from generate_series(1, 60000) as i
      `;
      // Fresh statistics: the planner knows the batch is a tenth of the table, and a hash join would cost less.
      await own.db.sql`analyze orders`;
      const file = join(own.dir, "batch.csv");
      writeFileSync(file, csv(Array.from({ length: 6000 }, (_, i) => line(i + 1))));
      await runOk("producer.ts", ["--file", file, "--rate", "max"], own.env);
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", "--batch-size", "6000"], own.env);
      expect(readdirSync(own.env.BATCHES_DIR!).filter((f) => f.endsWith(".csv"))).toHaveLength(1);
      const before = await scans(own.db.sql);
      await runOk("load.ts", [], own.env);
      // The loader's backend reports its statistics when it ends: 6,000 probes, and not one read of the table.
      const after = await waitFor("6,000 index probes reported", async () => {
        const now = await scans(own.db.sql);
        return now.index >= before.index + 6000 && now;
      });
      expect(after.seq).toBe(before.seq);
      const [count] = await own.db.sql`select count(*)::int as n from orders where batch_file <> 'big'`;
      expect(count!.n).toBe(6000);
    } finally {
      await own.db.drop();
    }
  });

  test("looks up rows of other sources with the same values through orders_same_values, one probe per new row", async () => {
    // A short name: 6,000 rows under a long path overflow the broker's 1 MB request (the producer counts values against
    // it, not keys and headers).
    const own = await setUp("sv", tmp.path);
    try {
      await own.db.sql`insert into users (customer_id, latest_order_date, latest_source_row_id, latest_source_file) values ('BIG', '2016-01-01', 1, 'big.csv')`;
      await own.db.sql`insert into products (product_id, latest_order_date, latest_source_row_id, latest_source_file) values ('BIG', '2016-01-01', 1, 'big.csv')`;
      // 60,000 rows with fingerprints, 1,000 of them with the Row IDs and values of the batch's first 1,000 rows.
      const file = join(own.dir, "batch.csv");
      writeFileSync(file, csv(Array.from({ length: 6000 }, (_, i) => line(i + 1))));
      await runOk("producer.ts", ["--file", file, "--rate", "max"], own.env);
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", "--batch-size", "6000"], own.env);
      const [name] = readdirSync(own.env.BATCHES_DIR!).filter((f) => f.endsWith(".csv"));
      const prepared = await prepareFile(own.env.BATCHES_DIR!, name!);
      const hashes = prepared.candidates.slice(0, 1000).map((c) => String(c.row.row_hash));
      await own.db.sql`
        insert into orders (order_id, order_date, customer_id, product_id, sales, quantity, source_file, source_row_id, source_line, batch_file, row_hash)
        select 'O-' || i, date '2016-01-01', 'BIG', 'BIG', 1, 1, 'big.csv', i, i + 1, 'big',
               coalesce((${hashes}::text[])[i], md5(i::text))
        from generate_series(1, 60000) as i
      `;
      await own.db.sql`analyze orders`;
      const probes = async () => {
        await own.db.sql`select pg_stat_clear_snapshot()`;
        const [row] = await own.db.sql<{ n: string }[]>`select idx_scan::text as n from pg_stat_user_indexes where indexrelname = 'orders_same_values'`;
        return Number(row!.n);
      };
      const [before, seqBefore] = [await probes(), (await scans(own.db.sql)).seq];
      const summary = await runOk("load.ts", [], { ...own.env, LOG_LEVEL: "info" });
      expect(summary.stderr).toContain("inserted=6000 ");
      expect(summary.stderr).toContain("cross_source=1000 ");
      const after = await waitFor("6,000 probes of orders_same_values reported", async () => {
        const now = await probes();
        return now >= before + 6000 && now;
      });
      expect(after).toBeGreaterThanOrEqual(before + 6000);
      expect((await scans(own.db.sql)).seq).toBe(seqBefore);
    } finally {
      await own.db.drop();
    }
  });
});

/** How often orders has been read whole (seq) and through an index. */
async function scans(sql: Sql): Promise<{ seq: number; index: number }> {
  await sql`select pg_stat_clear_snapshot()`;
  const [row] = await sql<{ seq: string; index: string }[]>`
    select seq_scan::text as seq, coalesce(idx_scan, 0)::text as index from pg_stat_user_tables where relname = 'orders'
  `;
  return { seq: Number(row!.seq), index: Number(row!.index) };
}
