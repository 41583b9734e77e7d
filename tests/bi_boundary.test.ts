// The boundary between BI readers and the loader, against real PostgreSQL servers: what bi_reader could do
// before sql/007 and cannot after it (large objects, advisory locks, WAL messages, sessions and temporary files
// without limit), what it can still do (NOTIFY, its own session settings), the loaders' turn that no other role
// can take and that names its holder when it is not free, and a database switched read-only under a watching
// loader. Each attack runs twice: once where it still works (before the migration, or the old loader's call), as
// the control that shows it is real, and once against what the pipeline does now.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readConfig, type DatabaseTarget } from "../scripts/lib/config.ts";
import { connect, describeDatabase, maintenance, withDatabase, type Sql } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { postgresServerInstalled } from "../scripts/lib/stack/postgres.ts";
import { ensureReaderLogin } from "../scripts/lib/bi_reader.ts";
import { ensureDatabase, listMigrations, migrate } from "../scripts/migrate.ts";
import {
  createTestDatabase,
  ROOT,
  runScript,
  startPrivatePostgres,
  startScript,
  tempDir,
  uniqueName,
  waitFor,
  type PrivatePostgres,
  type TestDatabase,
} from "./helpers.ts";

const quiet = createLogger("test", "silent");

const HEADER = "Row ID,Order ID,Order Date,Ship Date,Customer ID,Customer Name,Segment,City,State,Postal Code,Region,Product ID,Category,Sales,Quantity,Discount,Profit";

/** A batch file written by hand with rows `from`..`to`, dated a minute back (not "still being written"). */
function batch(dir: string, name: string, from: number, to: number): void {
  const lines = [];
  for (let id = from; id <= to; id++) {
    lines.push(`${id},CA-2016-${100000 + id},11/8/2016,11/11/2016,CG-${12500 + (id % 7)},Claire Gute,Consumer,Henderson,Kentucky,42420,South,FUR-BO-${10000 + (id % 5)},Furniture,${100 + id}.5,2,0,4.25`);
  }
  const path = join(dir, name);
  writeFileSync(path, `${HEADER}\n${lines.join("\n")}\n`);
  const old = new Date(Date.now() - 60_000);
  utimesSync(path, old, old);
}

/** The SQLSTATE a statement fails with, or undefined when it runs. */
async function outcome(sql: Sql, statement: string): Promise<string | undefined> {
  return sql.unsafe(statement).then(
    () => undefined,
    (error: { code?: string }) => error.code ?? "no code",
  );
}

const count = async (sql: Sql) => (await sql`select count(*)::int as n from orders`)[0]!.n as number;

// --- bi_reader, on a PostgreSQL of its own: roles belong to the whole server, and these tests log in as
// bi_reader many times at once, which must not take the shared server's bi_reader sessions from anyone else.

const missing = postgresServerInstalled() ? [] : ["a PostgreSQL server (initdb, pg_ctl)"];
if (missing.length > 0) {
  const why = `the bi_reader tests start a PostgreSQL of their own and need ${missing.join(", ")}`;
  if (readConfig().requireAllTests) throw new Error(why);
  console.warn(`skipping: ${why}`);
}

describe.skipIf(missing.length > 0)("bi_reader before and after sql/007", () => {
  const tmp = tempDir("sales-bi-reader-");
  let pg: PrivatePostgres;
  let target: DatabaseTarget;
  let admin: Sql;
  const readers: Sql[] = [];
  const reader = () => {
    const sql = connect({ ...target, user: "bi_reader", password: "" }, quiet, { max: 1 });
    readers.push(sql);
    return sql;
  };
  /** Ends every bi_reader session opened so far. */
  const closeReaders = async () => {
    for (const sql of readers.splice(0)) await sql.end({ timeout: 1 }).catch(() => undefined);
  };

  beforeAll(async () => {
    chmodSync(tmp.path, 0o755);
    pg = startPrivatePostgres(tmp.path);
    target = withDatabase(pg.target, uniqueName("reader"));
    await ensureDatabase(target, quiet);
    admin = connect(target, quiet, { max: 1 });
    // Every migration before 007: the state the review found.
    const before = join(tmp.path, "sql-before-007");
    mkdirSync(before);
    for (const m of await listMigrations(join(ROOT, "sql"))) if (m.id < 7) copyFileSync(m.path, join(before, m.name));
    await migrate(admin, before, quiet);
    // The test server trusts local logins: this gives the login.
    await ensureReaderLogin(admin, { biReaderPassword: "trusted-anyway", biReaderPasswordFile: join(tmp.path, "unused"), database: target }, quiet);
  });
  afterAll(async () => {
    await closeReaders();
    await admin?.end({ timeout: 1 });
    pg?.stop();
    tmp.remove();
  });

  const attacks = {
    "a large object of 10 MB (lo_from_bytea)": "select lo_from_bytea(0, convert_to(repeat('x', 10000000), 'UTF8'))",
    "a large object by parts (lo_create, lowrite)": "select lowrite(lo_open(lo_create(0), 131072), 'abc')",
    "the loader's old advisory lock": "select pg_advisory_lock(hashtext('sales-load'))",
    "a message into the WAL (pg_logical_emit_message)": "select pg_logical_emit_message(false, 'x', repeat('x', 100000))",
  };

  test("control: before sql/007 bi_reader writes large objects, takes advisory locks, writes WAL and opens 11 sessions", async () => {
    const sql = reader();
    for (const [what, statement] of Object.entries(attacks)) expect([what, await outcome(sql, statement)]).toEqual([what, undefined]);
    const [stored] = await admin`select count(*)::int as n from pg_largeobject_metadata`;
    expect(stored!.n).toBeGreaterThanOrEqual(2);
    const [settings] = await sql`select current_setting('statement_timeout') as statement, current_setting('temp_file_limit') as temp`;
    expect({ ...settings }).toEqual({ statement: "0", temp: "-1" });
    await closeReaders();
    const eleven = Array.from({ length: 11 }, reader);
    expect(await Promise.all(eleven.map((s) => outcome(s, "select 1")))).toEqual(Array(11).fill(undefined));
    await closeReaders();
  });

  test("after sql/007 each of those is refused, and the migration is what changed it", async () => {
    await migrate(admin, join(ROOT, "sql"), quiet);
    const sql = reader();
    for (const [what, statement] of Object.entries(attacks)) expect([what, await outcome(sql, statement)]).toEqual([what, "42501"]);
    // Reading the views is what it is for.
    expect(await outcome(sql, "select * from v_sales, v_pipeline_health limit 1")).toBeUndefined();
    // The loaders' turn: a row only the loader's role may lock.
    expect(await outcome(sql, "select * from loader_lock for update")).toBe("42501");
    expect(await outcome(admin, "begin; select * from loader_lock for update; rollback")).toBeUndefined();
    await closeReaders();
  });

  test("after every migration bi_reader reads each view, v_loaded_files (sql/009) included, and no base table", async () => {
    const sql = reader();
    const relations = await admin<{ name: string; kind: string }[]>`
      select table_name as name, table_type as kind from information_schema.tables where table_schema = 'public' order by 1
    `;
    const views = relations.filter((r) => r.kind === "VIEW").map((r) => r.name);
    const tables = relations.filter((r) => r.kind === "BASE TABLE").map((r) => r.name);
    expect(views).toContain("v_loaded_files");
    expect(tables).toContain("loaded_files");
    for (const view of views) expect([view, await outcome(sql, `select * from ${view} limit 1`)]).toEqual([view, undefined]);
    for (const table of tables) expect([table, await outcome(sql, `select * from ${table} limit 1`)]).toEqual([table, "42501"]);
    // The view holds the ledger's names and times, nothing else of it.
    const [columns] = await admin`select array_agg(column_name::text order by ordinal_position) as names from information_schema.columns where table_name = 'v_loaded_files'`;
    expect(columns!.names).toEqual(["file_name", "loaded_at"]);
    await closeReaders();
  });

  test("after sql/007 bi_reader has at most 10 sessions; temporary files are capped and it cannot lift the cap", async () => {
    const eleven = Array.from({ length: 11 }, reader);
    const results = await Promise.all(eleven.map((s) => outcome(s, "select 1")));
    expect(results.filter((r) => r === undefined)).toHaveLength(10);
    expect(results.filter((r) => r === "53300")).toHaveLength(1); // too many connections for role "bi_reader"
    await closeReaders();
    const sql = reader();
    const [settings] = await sql`
      select current_setting('statement_timeout') as statement, current_setting('idle_in_transaction_session_timeout') as idle,
             current_setting('temp_file_limit') as temp
    `;
    expect({ ...settings }).toEqual({ statement: "2min", idle: "1min", temp: "1GB" });
    expect(await outcome(sql, "set temp_file_limit = '100GB'")).toBe("42501");
    await closeReaders();
  });

  test("what bi_reader can still do: NOTIFY (a statement, not a function), and change its own statement timeout", async () => {
    const sql = reader();
    expect(await outcome(sql, "notify sales_loaded, 'not from the loader'")).toBeUndefined();
    expect(await outcome(sql, "set statement_timeout = 0")).toBeUndefined();
  });
});

// --- The loaders' turn and a read-only database, on the shared server, each test with a database of its own.

describe("the loaders' turn", () => {
  const tmp = tempDir();
  let db: TestDatabase;
  let env: Record<string, string>;
  let dir: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    dir = join(tmp.path, "batches");
    mkdirSync(dir);
    env = { DATABASE_URL: db.url, BATCHES_DIR: dir };
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("the advisory lock bi_reader could take no longer stops the loader; the control shows the old loader's call would wait", async () => {
    batch(dir, "advisory.csv", 1, 50);
    const holder = connect(db.target, quiet, { max: 1 });
    const other = connect(db.target, quiet, { max: 1 });
    try {
      await holder`select pg_advisory_lock(hashtext('sales-load'))`;
      // Control: the call every loader made before waits for it (here until lock_timeout, then 55P03).
      expect(await outcome(other, "begin; set local lock_timeout = '500ms'; select pg_advisory_xact_lock(hashtext('sales-load'))")).toBe("55P03");
      await other.unsafe("rollback");
      const run = await runScript("load.ts", [], { ...env, LOG_LEVEL: "info" });
      expect(run.code, run.stderr).toBe(0);
      expect(run.stderr).toContain("inserted=50 ");
      expect(await count(db.sql)).toBe(50);
    } finally {
      await holder.end({ timeout: 1 });
      await other.end({ timeout: 1 });
    }
  });

  test("a single run that cannot get the loader lock within 30 s exits 1 naming the session that holds it", async () => {
    batch(dir, "held.csv", 51, 60);
    const holder = connect(db.target, quiet, { max: 1, parameters: { application_name: "hand-holder" } });
    const release = Promise.withResolvers<void>();
    const locked = Promise.withResolvers<number>();
    const held = holder.begin(async (tx) => {
      const [row] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid from loader_lock for update`;
      locked.resolve(row!.pid);
      await release.promise;
    });
    try {
      const pid = await locked.promise;
      const run = await runScript("load.ts", [], env);
      expect(run.code, run.stderr).toBe(1);
      expect(run.stderr).toContain(`cannot load ${join(dir, "held.csv")} into ${describeDatabase(db.target)}: `);
      expect(run.stderr).toMatch(
        new RegExp(`loader lock \\(the row of table loader_lock\\) was not free within 30 s: held by pid ${pid} \\(user ${db.target.user}, application "hand-holder", .*transaction open since `),
      );
      expect(run.stderr).toContain(`select pg_terminate_backend(${pid})`);
      expect(await count(db.sql)).toBe(50);
    } finally {
      release.resolve();
      await held;
      await holder.end({ timeout: 1 });
    }
  });

  test("load --watch says who holds the lock while it waits, and loads once it is free", async () => {
    const holder = connect(db.target, quiet, { max: 1, parameters: { application_name: "hand-holder" } });
    const release = Promise.withResolvers<void>();
    const locked = Promise.withResolvers<void>();
    const held = holder.begin(async (tx) => {
      await tx`select id from loader_lock for update`;
      locked.resolve();
      await release.promise;
    });
    const loader = startScript("load.ts", ["--watch"], env);
    try {
      await locked.promise;
      await loader.waitForOutput(/the loader lock .* was not free within 10 s: held by pid \d+ \(user \S+, application "hand-holder"/, 60_000);
      release.resolve();
      await held;
      await waitFor("the rows held back", async () => (await count(db.sql)) === 60, 60_000);
    } finally {
      release.resolve();
      loader.child.kill("SIGTERM");
      await loader.finish();
      await holder.end({ timeout: 1 });
    }
  });
});

describe("a database switched read-only under load --watch", () => {
  const tmp = tempDir();
  let db: TestDatabase;

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("stops the loader with a message naming the database and the file; nothing is lost", async () => {
    const dir = join(tmp.path, "batches");
    mkdirSync(dir);
    const env = { DATABASE_URL: db.url, BATCHES_DIR: dir };
    // ALTER DATABASE from another database: this one's new sessions are read-only from now on.
    const admin = maintenance(db.target, quiet);
    const loader = startScript("load.ts", ["--watch"], env);
    try {
      batch(dir, "first.csv", 1, 20);
      await waitFor("the first file", async () => (await count(db.sql)) === 20);
      await admin.unsafe(`alter database "${db.name}" set default_transaction_read_only = on`);
      // Control: a new session of this database cannot write, as the loader's next session will find.
      const psql = Bun.spawnSync(["psql", db.url, "-v", "ON_ERROR_STOP=1", "-c", "insert into loader_lock (id) values (2)"], { stderr: "pipe" });
      expect(psql.exitCode).not.toBe(0);
      expect(psql.stderr.toString()).toContain("cannot execute INSERT in a read-only transaction");
      // The loader's session began before the switch: it is ended, as a restart or failover would.
      await db.sql`select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name = 'load'`;
      batch(dir, "second.csv", 21, 30);
      const stopped = await loader.finish(60_000);
      expect(stopped.code, stopped.stderr).toBe(1);
      expect(stopped.stderr).toContain(`cannot load ${join(dir, "second.csv")} into ${describeDatabase(db.target)}: the database is read-only`);
      expect(stopped.stderr).toContain(`alter database "${db.name}" set default_transaction_read_only = off`);
      await admin.unsafe(`alter database "${db.name}" set default_transaction_read_only = off`);
    } finally {
      loader.child.kill("SIGKILL");
      await admin.end({ timeout: 1 });
    }
    const again = await runScript("load.ts", [], { DATABASE_URL: db.url, BATCHES_DIR: dir });
    expect(again.code, again.stderr).toBe(0);
    expect(await count(db.sql)).toBe(30);
    expect(readdirSync(dir).filter((f) => f.endsWith(".csv")).sort()).toEqual(["first.csv", "second.csv"]);
  });
});
