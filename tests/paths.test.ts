// Scripts started from another folder (cron, systemd, a scheduler) use the repository's sql/, data/, batches/
// and .env, never the working directory's. Each script of a copy of the repository (its .env names a topic and
// a database of the test's own) is run from a folder that holds a decoy .env, sql/, data/ and batches/, with the
// environment of a fresh shell: the decoys must stay untouched and the copy's settings must be the ones used.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { BROKERS, copyRepository, freshShellEnv, type RepositoryCopy, type RunResult, tempDir, topicExists, topicSize, uniqueName } from "./helpers.ts";

const ROWS = 20;
const quiet = createLogger("test", "silent");

describe("scripts started from another folder", () => {
  let repo: RepositoryCopy;
  const elsewhere = tempDir("sales-elsewhere-");
  const decoyTopic = uniqueName("decoy");

  beforeAll(() => {
    repo = copyRepository("paths");
    // What Bun would read from this folder by itself: a database that does not answer, another topic and folders.
    writeFileSync(
      join(elsewhere.path, ".env"),
      `DATABASE_URL=postgres://postgres@127.0.0.1:1/decoy\nKAFKA_TOPIC=${decoyTopic}\nBATCHES_DIR=decoy_batches\nDATA_FILE=decoy.csv\n`,
    );
    for (const dir of ["sql", "data", "batches", "decoy_batches"]) mkdirSync(join(elsewhere.path, dir));
    writeFileSync(join(elsewhere.path, "sql", "001_decoy.sql"), "create table decoy (id int);\n");
  });

  afterAll(async () => {
    await repo.remove();
    elsewhere.remove();
  });

  /** `bun <copy>/scripts/<script> ...args` from the other folder, in a fresh shell's environment plus `env`. */
  async function run(script: string, args: string[], env: Record<string, string> = {}): Promise<RunResult> {
    const child = Bun.spawn([process.execPath, join(repo.root, "scripts", script), ...args], {
      cwd: elsewhere.path,
      env: { ...freshShellEnv(), ...env },
      stdout: "pipe",
      stderr: "pipe",
    });
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    if (code !== 0) throw new Error(`${script} ${args.join(" ")} exited ${code}\n${stderr}${stdout}`);
    return { code, stdout, stderr };
  }

  const filesIn = (dir: string) => (existsSync(dir) ? readdirSync(dir).filter((f) => !f.startsWith(".")) : []);

  async function query<T>(fn: (sql: ReturnType<typeof connect>) => Promise<T>): Promise<T> {
    const sql = connect(repo.database.target, quiet, { max: 1 });
    try {
      return await fn(sql);
    } finally {
      await sql.end({ timeout: 5 });
    }
  }

  test("--help of every script says how its paths resolve, naming the repository", async () => {
    const scripts = readdirSync(join(repo.root, "scripts")).filter((f) => f.endsWith(".ts"));
    expect(scripts.length).toBeGreaterThan(8);
    for (const script of scripts) {
      const help = (await run(script, ["--help"])).stdout;
      expect(help, script).toContain("Paths: a relative path in a flag is taken from the current folder;");
      expect(help.replaceAll("\n", " "), script).toContain(`from the repository (${repo.root})`);
    }
  });

  test("migrate applies the repository's sql/ to the database the repository's .env names", async () => {
    const { stderr } = await run("migrate.ts", []);
    expect(stderr).toContain(`/${repo.database.name}: `);
    const applied = await query((sql) => sql<{ name: string }[]>`select name from schema_migrations order by id`);
    expect(applied.map((m) => `${m.name}`)).toEqual(readdirSync(join(repo.root, "sql")).filter((f) => f.endsWith(".sql")).sort());
    expect(await query((sql) => sql`select 1 from pg_tables where tablename = 'decoy'`)).toHaveLength(0);
  });

  test("make_data writes the repository's data/Sample-Superstore.csv from its node_modules", async () => {
    await run("make_data.ts", ["--rows", String(ROWS)]);
    expect(filesIn(join(repo.root, "data"))).toEqual(["Sample-Superstore.csv"]);
    expect(filesIn(join(elsewhere.path, "data"))).toEqual([]);
  });

  test("the producer sends the repository's data file to the .env's topic", async () => {
    const { stderr } = await run("producer.ts", ["--rate", "max", "--limit", String(ROWS)], { LOG_LEVEL: "info" });
    expect(stderr).toContain(`${join(repo.root, "data", "Sample-Superstore.csv")}: windows-1252`);
    expect(await topicSize(BROKERS, repo.topic)).toBe(ROWS);
    expect(await topicExists(BROKERS, decoyTopic)).toBe(false);
  });

  test("the consumer writes into the repository's batches/", async () => {
    await run("consumer_batch_to_csv.ts", ["--until-idle", "1"]);
    expect(filesIn(join(repo.root, "batches")).filter((f) => f.endsWith(".csv"))).toHaveLength(1);
    expect(filesIn(join(elsewhere.path, "batches"))).toEqual([]);
    expect(filesIn(join(elsewhere.path, "decoy_batches"))).toEqual([]);
  });

  test("the loader loads the repository's batches/ into the .env's database", async () => {
    await run("load.ts", []);
    const [loaded] = await query((sql) => sql<{ n: number; source: string }[]>`select count(*)::int as n, min(source_file) as source from orders`);
    expect(loaded).toEqual({ n: ROWS, source: "Sample-Superstore.csv" });
  });

  test("export writes into the repository's data/exports, and a folder given as a flag into the current folder", async () => {
    await run("export.ts", []);
    expect(filesIn(join(repo.root, "data", "exports"))).toContain("v_sales.csv");
    expect(filesIn(join(elsewhere.path, "data"))).toEqual([]);
    await run("export.ts", ["--dir", "mine"]);
    expect(filesIn(join(elsewhere.path, "mine"))).toContain("v_sales.csv");
  });

  test("status reports the .env's topic, the repository's batches/ and the .env's database", async () => {
    const { stdout } = await run("status.ts", []);
    expect(stdout).toContain(`topic ${repo.topic}: ${ROWS} messages`);
    expect(stdout).toContain(`1 files in ${join(repo.root, "batches")}/, 0 not loaded yet`);
    expect(stdout).toContain(`/${repo.database.name}\n  orders ${ROWS},`);
  });

  test("a variable set in the environment wins over the repository's .env, its relative path taken from the repository", async () => {
    const { stdout } = await run("status.ts", [], { KAFKA_TOPIC: decoyTopic, BATCHES_DIR: "elsewhere_batches" });
    expect(stdout).toContain(`topic ${decoyTopic}: 0 messages`);
    expect(stdout).toContain(`0 files in ${join(repo.root, "elsewhere_batches")}/`);
  });
});
