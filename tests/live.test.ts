// make stream's own pipeline (scripts/live.ts, scripts/lib/live.ts): its names beside the demo's, the shell
// assignments make stream evaluates, and the emptying at each start, which leaves the demo's database and
// folder as they are.

import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readConfig } from "../scripts/lib/config.ts";
import { sha256 } from "../scripts/lib/batch.ts";
import { connect, type Sql } from "../scripts/lib/db.ts";
import { liveTarget } from "../scripts/lib/live.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { shellAssignments, shellQuote } from "../scripts/live.ts";
import { createTestDatabase, dropDatabase, runOk, tempDir } from "./helpers.ts";

describe("liveTarget", () => {
  test("names the live database, topic, group and folder after the demo's", () => {
    const live = liveTarget(readConfig({}));
    expect([live.database.database, live.topic, live.group, live.dir]).toEqual(["sales_live", "sales_topic_live", "sales-batcher-live", join("batches", "live")]);
    expect(live.database.host).toBe("127.0.0.1");
  });

  test("refuses a database name PostgreSQL would cut short", () => {
    expect(() => liveTarget(readConfig({ DATABASE_URL: `postgres://u@h/${"d".repeat(59)}` }))).toThrow("longer than PostgreSQL's 63 bytes");
  });
});

describe("shellAssignments", () => {
  test("survive a shell's eval whatever the password holds", () => {
    const password = `it's $HOME and "quoted" \\ ;`;
    const config = readConfig({ DATABASE_URL: `postgres://u:${encodeURIComponent(password)}@db:5433/sales`, BATCHES_DIR: "/tmp/my batches" });
    const line = shellAssignments(liveTarget(config));
    const shell = Bun.spawnSync(["bash", "-c", 'eval "$1"; printf "%s\\n" "$DATABASE_URL" "$KAFKA_TOPIC" "$KAFKA_GROUP_ID" "$BATCHES_DIR"', "bash", line]);
    const [url, topic, group, dir] = shell.stdout.toString().split("\n");
    expect(readConfig({ DATABASE_URL: url }).database).toEqual({ ...config.database, database: "sales_live" });
    expect([topic, group, dir]).toEqual(["sales_topic_live", "sales-batcher-live", "/tmp/my batches/live"]);
  });

  test("quote a single quote as '\\''", () => {
    expect(shellQuote("a'b")).toBe(`'a'\\''b'`);
  });
});

describe("scripts/live.ts", () => {
  const tmp = tempDir();
  afterAll(() => tmp.remove());

  /** Records a batch file in the ledger of `sql`'s database, as the loader would. */
  const ledger = (sql: Sql, name: string) =>
    sql`insert into loaded_files (sha256, file_name, records, inserted, duplicates, rejected) values (${sha256(name)}, ${name}, 1, 1, 0, 0)`;

  test("empties the live database and the live folder at each start; the demo's stay as they are", async () => {
    const demo = await createTestDatabase("demo");
    const dir = join(tmp.path, "batches");
    const env = { DATABASE_URL: demo.url, BATCHES_DIR: dir };
    const live = { ...demo.target, database: `${demo.name}_live` };
    /** Runs `fn` on a connection to the live database of its own (each run of live.ts drops the database). */
    const inLive = async <T>(fn: (sql: Sql) => Promise<T>): Promise<T> => {
      const sql = connect(live, createLogger("test", "silent"), { max: 1 });
      try {
        return await fn(sql);
      } finally {
        await sql.end({ timeout: 5 });
      }
    };
    try {
      mkdirSync(join(dir, "live", "failed"), { recursive: true });
      for (const file of ["demo.csv", "live/old.csv", "live/failed/bad.csv", "live/notes.txt"]) writeFileSync(join(dir, file), "x\n");
      await ledger(demo.sql, "demo.csv");

      const first = await runOk("live.ts", [], { ...env, LOG_LEVEL: "info" });
      expect(first.stderr).toContain(`streaming into database ${live.database} `);
      expect(readConfig({ DATABASE_URL: /DATABASE_URL='([^']*)'/.exec(first.stdout)![1] }).database).toEqual(live);
      await inLive((sql) => ledger(sql, "live.csv"));

      await runOk("live.ts", [], env);
      expect(await inLive(async (sql) => [...(await sql`select file_name from loaded_files`)])).toEqual([]);
      expect(await inLive(async (sql) => (await sql`select count(*)::int as n from schema_migrations`)[0]!.n)).toBeGreaterThan(0);
      const left = ["live/old.csv", "live/failed", "live/notes.txt", "demo.csv"].map((file) => existsSync(join(dir, file)));
      expect(left).toEqual([false, false, true, true]);
      expect([...(await demo.sql`select file_name from loaded_files`)]).toEqual([{ file_name: "demo.csv" }]);
    } finally {
      await dropDatabase(demo.target, live.database);
      await demo.drop();
    }
  });
});
