// bi_reader as the dashboard's login, on a PostgreSQL of its own (a role belongs to the whole server: setting and
// rotating its password here touches no other test's server), where pg_hba.conf asks bi_reader for its password
// over TCP (scram-sha-256), so a wrong one is really refused. Its password is set once: the first migration gives
// it (a random one stored in the password file, mode 0600), a second database's migration leaves the server's
// verifier as it was, a differing BI_READER_PASSWORD is reported with the way to rotate and never printed,
// rotation changes it. The dashboard logs in as bi_reader, its sessions named "dashboard", a loader's "load"; a
// refused login names the role and the fix, never the password.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readerTarget, verifierMatches } from "../scripts/lib/bi_reader.ts";
import { readConfig, type DatabaseTarget } from "../scripts/lib/config.ts";
import { connect, databaseUrl, explainDatabaseFailure, withDatabase, type Sql } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { postgresServerInstalled } from "../scripts/lib/stack/postgres.ts";
import { BROKERS, freePorts, runOk, runScript, startPrivatePostgres, startScript, tempDir, uniqueName, waitFor, type PrivatePostgres, type Running } from "./helpers.ts";

const quiet = createLogger("test", "silent");

const missing = postgresServerInstalled() ? [] : ["a PostgreSQL server (initdb, pg_ctl)"];
if (missing.length > 0) {
  const why = `the bi_reader login tests start a PostgreSQL of their own and need ${missing.join(", ")}`;
  if (readConfig().requireAllTests) throw new Error(why);
  console.warn(`skipping: ${why}`);
}

/** The SQLSTATE of logging in as bi_reader with `password` (undefined: logged in). */
async function login(target: DatabaseTarget, password: string): Promise<string | undefined> {
  const sql = connect({ ...target, user: "bi_reader", password }, quiet, { max: 1 });
  try {
    await sql`select 1`;
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code ?? "no code";
  } finally {
    await sql.end({ timeout: 1 });
  }
}

describe("the messages of a refused bi_reader login", () => {
  const config = { ...readConfig({}), biReaderPasswordFile: "/nonexistent/bi_reader.password" };
  const refused = (code: string, message: string, target: DatabaseTarget) => explainDatabaseFailure(Object.assign(new Error(message), { code }), target)!.message;

  test("name the role and the fix for each place the password comes from, never the password", () => {
    const fromEnv = readerTarget({ ...config, biReaderPassword: "pw-from-env-42" });
    expect(fromEnv.user).toBe("bi_reader");
    expect(fromEnv.password).toBe("pw-from-env-42");
    const wrong = refused("28P01", 'password authentication failed for user "bi_reader"', fromEnv);
    expect(wrong).toStartWith('PostgreSQL at 127.0.0.1:5432 refused the password of role "bi_reader": it logs in with BI_READER_PASSWORD: ');
    expect(wrong).toContain("make rotate-bi-reader");
    expect(wrong).not.toContain("pw-from-env-42");
    const none = readerTarget(config);
    expect(none.password).toBeUndefined();
    const noLogin = refused("28000", 'role "bi_reader" is not permitted to log in', none);
    expect(noLogin).toStartWith('PostgreSQL at 127.0.0.1:5432 refused role "bi_reader" (role "bi_reader" is not permitted to log in): no password for it is set (BI_READER_PASSWORD) or stored (/nonexistent/bi_reader.password): make migrate gives the role its login');
  });
});

describe.skipIf(missing.length > 0)("bi_reader's password, set once per server", () => {
  const tmp = tempDir("sales-bi-login-");
  const file = join(tmp.path, "local", "bi_reader.password");
  let pg: PrivatePostgres;
  let admin: Sql;
  const [first, second] = [uniqueName("reader_a"), uniqueName("reader_b")];
  const target = (name: string) => withDatabase(pg.target, name);
  /** A script's environment against database `name`; BI_READER_PASSWORD unset unless given. */
  const env = (name: string, more: Record<string, string> = {}) => ({
    DATABASE_URL: databaseUrl(target(name)),
    BI_READER_PASSWORD: "",
    BI_READER_PASSWORD_FILE: file,
    KAFKA_BROKERS: BROKERS,
    LOG_LEVEL: "info",
    ...more,
  });
  const verifier = async () => (await admin<{ v: string | null }[]>`select rolpassword as v from pg_authid where rolname = 'bi_reader'`)[0]!.v;
  const stored = () => readFileSync(file, "utf8").trim();

  beforeAll(async () => {
    pg = startPrivatePostgres(tmp.path);
    admin = connect(pg.target, quiet, { max: 1 });
    // bi_reader must give its password over TCP; every other role is trusted, as on the shared test server.
    const hba = join(tmp.path, "pgdata", "pg_hba.conf");
    writeFileSync(hba, `host all bi_reader 127.0.0.1/32 scram-sha-256\n${readFileSync(hba, "utf8")}`);
    await admin`select pg_reload_conf()`;
  });
  afterAll(async () => {
    await admin?.end({ timeout: 1 });
    pg?.stop();
    tmp.remove();
  });

  test("the first migration gives bi_reader a random password, stored with mode 0600; a second database's leaves the verifier as it was", async () => {
    const made = await runOk("migrate.ts", [], env(first));
    expect(made.stderr).toContain(`bi_reader can log in now, with a new random password stored in ${file}; it is set once, for every database on the server at 127.0.0.1:${pg.target.port}`);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    const password = stored();
    expect(password).toMatch(/^[A-Za-z0-9_-]{32}$/);
    expect(made.stderr + made.stdout).not.toContain(password);
    const before = await verifier();
    expect(verifierMatches(before!, password)).toBe(true);

    const again = await runOk("migrate.ts", [], env(second));
    expect(await verifier()).toBe(before);
    expect(again.stderr).toContain(`bi_reader logs in with the password stored in ${file}`);
    // The server asks bi_reader for its password: the stored one logs in, another is refused.
    await waitFor("pg_hba.conf to ask bi_reader for its password", async () => (await login(target(second), "not-it")) === "28P01");
    expect(await login(target(second), password)).toBeUndefined();
  });

  test("a differing BI_READER_PASSWORD leaves the role's password as it is and says how to rotate, printing neither", async () => {
    const before = await verifier();
    const other = `differs-${Date.now().toString(36)}`;
    const run = await runOk("migrate.ts", [], env(second, { BI_READER_PASSWORD: other }));
    expect(await verifier()).toBe(before);
    expect(run.stderr).toContain(
      `bi_reader's password on the server at 127.0.0.1:${pg.target.port} is not BI_READER_PASSWORD; make migrate sets it only once and left it as it is: ` +
        "make rotate-bi-reader sets it to BI_READER_PASSWORD, for every database on that server",
    );
    for (const secret of [other, stored()]) expect(run.stderr + run.stdout).not.toContain(secret);
  });

  test("rotation sets BI_READER_PASSWORD for the whole server; without it, a new random password replaces the stored one", async () => {
    const before = await verifier();
    const chosen = `rotated-${Date.now().toString(36)}`;
    const rotated = await runOk("migrate.ts", ["--rotate-bi-reader-password"], env(second, { BI_READER_PASSWORD: chosen }));
    expect(rotated.stderr).toContain(`bi_reader's password is now the one in BI_READER_PASSWORD, for every database on the server at 127.0.0.1:${pg.target.port}`);
    expect(rotated.stderr + rotated.stdout).not.toContain(chosen);
    const after = await verifier();
    expect(after).not.toBe(before);
    expect(verifierMatches(after!, chosen)).toBe(true);
    expect(await login(target(first), chosen)).toBeUndefined(); // the other database too: one role per server

    const old = stored();
    const renewed = await runOk("migrate.ts", ["--rotate-bi-reader-password"], env(first));
    expect(renewed.stderr).toContain(`bi_reader's password is now a new random one, stored in ${file}, for every database on the server`);
    expect(stored()).not.toBe(old);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(verifierMatches((await verifier())!, stored())).toBe(true);
    expect(renewed.stderr + renewed.stdout).not.toContain(stored());
  });

  test("the dashboard logs in as bi_reader (sessions named dashboard) and counts pending files from v_loaded_files; a loader's sessions are named load", async () => {
    const batches = join(tmp.path, "batches");
    mkdirSync(batches);
    const header = "Row ID,Order ID,Order Date,Ship Date,Customer ID,Customer Name,Segment,City,State,Postal Code,Region,Product ID,Category,Sales,Quantity,Discount,Profit";
    writeFileSync(join(batches, "one.csv"), `${header}\n1,CA-2016-1,11/8/2016,11/11/2016,CG-1,Claire Gute,Consumer,Henderson,Kentucky,42420,South,FUR-BO-1,Furniture,10.5,2,0,4.25\n`);
    const settings = env(first, { BATCHES_DIR: batches });
    const [port] = freePorts(1) as [number];
    const dashboard = startScript("dashboard.ts", ["--port", String(port)], settings);
    const loader = startScript("load.ts", ["--watch"], settings);
    try {
      const sessions = async () =>
        (await admin<{ usename: string; application_name: string }[]>`
          select usename, application_name from pg_stat_activity where datname = ${first} and backend_type = 'client backend' order by 2, 1
        `).map((r) => `${r.application_name} as ${r.usename}`);
      let seen: string[] = [];
      await waitFor(() => `the dashboard's and the loader's sessions (seen: ${seen.join(", ")})`, async () => {
        seen = await sessions();
        return seen.filter((s) => s === "dashboard as bi_reader").length >= 2 && seen.includes("load as postgres");
      });
      expect(new Set(await sessions())).toEqual(new Set(["dashboard as bi_reader", "load as postgres"]));
      // It read v_pipeline_health and v_loaded_files as bi_reader: the file the loader loaded is no longer pending.
      await waitFor("the loaded file on the dashboard", async () => {
        const snapshot = (await (await fetch(`http://127.0.0.1:${port}/api/snapshot`)).json()) as { health: { postgres: { ok: boolean; filesLoaded?: number }; files: { pending: number } | null } };
        return snapshot.health.postgres.ok && snapshot.health.postgres.filesLoaded === 1 && snapshot.health.files?.pending === 0;
      });
    } finally {
      for (const running of [dashboard, loader] as Running[]) running.child.kill("SIGTERM");
      await Promise.all([dashboard.finish(), loader.finish()]);
    }
  });

  test("a refused login: the dashboard names bi_reader and the fix, never the password", async () => {
    const wrong = `wrong-${Date.now().toString(36)}`;
    const [port] = freePorts(1) as [number];
    const dashboard = startScript("dashboard.ts", ["--port", String(port)], env(first, { BI_READER_PASSWORD: wrong, BATCHES_DIR: tmp.path }));
    try {
      const said = `PostgreSQL at 127.0.0.1:${pg.target.port} refused the password of role "bi_reader": it logs in with BI_READER_PASSWORD: make migrate gives the role its login, and make rotate-bi-reader sets its password to BI_READER_PASSWORD`;
      await dashboard.waitForOutput(new RegExp(said.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")), 30_000);
      const snapshot = (await (await fetch(`http://127.0.0.1:${port}/api/snapshot`)).json()) as { health: { postgres: { problem?: string; error: string } } };
      expect(snapshot.health.postgres).toMatchObject({ problem: "login-refused" });
      expect(snapshot.health.postgres.error).toStartWith(said);
      expect(dashboard.output() + JSON.stringify(snapshot)).not.toContain(wrong);
    } finally {
      dashboard.child.kill("SIGTERM");
      await dashboard.finish();
    }
  });

  test("a password of quotes, a backslash, spaces, $, decomposed and compatibility unicode, 300 characters: rotation, the dashboard's login and psql agree", async () => {
    // "café" as macOS types it (e + U+0301), a ligature and full-width letters: SASLprep (NFKC) changes each.
    const hostile = `it's "a" \\ pass $HOME \`x\` cafe\u0301 \ufb01 \uff50\uff57 ${"é".repeat(270)}`;
    const rotated = await runOk("migrate.ts", ["--rotate-bi-reader-password"], env(first, { BI_READER_PASSWORD: hostile }));
    expect(rotated.stderr + rotated.stdout).not.toContain(hostile);
    const dashboards = readerTarget({ ...readConfig({}), biReaderPassword: hostile, biReaderPasswordFile: file, database: target(first) });
    expect(await login(target(first), dashboards.password!)).toBeUndefined();
    const psql = Bun.spawnSync(["psql", "-h", "127.0.0.1", "-p", String(pg.target.port), "-U", "bi_reader", "-d", first, "-Atc", "select 1"], {
      env: { ...process.env, PGPASSWORD: hostile, PGCONNECT_TIMEOUT: "5" },
    });
    expect([psql.exitCode, psql.stdout.toString() + psql.stderr.toString()]).toEqual([0, "1\n"]);
    // The same password set by PostgreSQL itself (as psql's \password would): the dashboard's login takes it too.
    await admin.unsafe(`alter role bi_reader password '${hostile.replaceAll("'", "''")}'`);
    expect(await login(target(first), dashboards.password!)).toBeUndefined();
  });

  test("compares with the verifiers PostgreSQL makes itself, SCRAM-SHA-256 and md5", async () => {
    for (const encryption of ["scram-sha-256", "md5"]) {
      await admin.begin(async (tx) => {
        await tx.unsafe(`set local password_encryption = '${encryption}'`);
        await tx.unsafe("alter role bi_reader password 'made-by-the-server'");
      });
      const made = (await verifier())!;
      expect(made.startsWith(encryption === "md5" ? "md5" : "SCRAM-SHA-256$")).toBe(true);
      expect([encryption, verifierMatches(made, "made-by-the-server")]).toEqual([encryption, true]);
      expect([encryption, verifierMatches(made, "made-by-the-server!")]).toEqual([encryption, false]);
    }
  });
});
