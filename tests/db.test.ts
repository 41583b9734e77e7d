// scripts/lib/db.ts's explainDatabaseFailure against real servers: a server that does not answer, a database
// that does not exist, a role that does not exist, and (on a PostgreSQL of its own that asks for passwords) a
// wrong password. Each is told apart, named with the setting and the address, and never with the password;
// the scripts that read PostgreSQL say the same at once and exit 1.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseDatabase, readConfig, type DatabaseTarget } from "../scripts/lib/config.ts";
import { applicationName, connect, databaseUrl, explainDatabaseFailure, withDatabase } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { postgresServerInstalled } from "../scripts/lib/stack/postgres.ts";
import { BASE, freePorts, runScript, startPrivatePostgres, tempDir, uniqueName, type PrivatePostgres } from "./helpers.ts";

const quiet = createLogger("test", "silent");

/** The error of one statement against `target`. */
async function failureOf(target: DatabaseTarget): Promise<unknown> {
  const sql = connect(target, quiet, { max: 1 });
  try {
    await sql`select 1`;
  } catch (error) {
    return error;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => undefined);
  }
  throw new Error(`${databaseUrl(target)} answered`);
}

const server = `${BASE.database.host}:${BASE.database.port}`;
const missingDatabase = withDatabase(BASE.database, uniqueName("no_such_db"));
const [nothingListens] = freePorts(1) as [number];
const serverDown = parseDatabase({ DATABASE_URL: `postgres://postgres@127.0.0.1:${nothingListens}/sales` });
const noSuchRole = { ...BASE.database, user: uniqueName("no_such_role") };

describe("applicationName", () => {
  test("is the script's file name without its extension, as pg_stat_activity shows its sessions", async () => {
    expect(applicationName("/srv/sales/scripts/load.ts")).toBe("load");
    expect(applicationName("scripts/consumer_batch_to_csv.ts")).toBe("consumer_batch_to_csv");
    expect(applicationName("/repo/tests/db.test.ts")).toBe("db.test");
    const sql = connect(BASE.database, createLogger("test", "silent"), { max: 1, database: "postgres" });
    try {
      expect((await sql`select current_setting('application_name') as name`)[0]!.name).toBe("db.test");
    } finally {
      await sql.end({ timeout: 1 });
    }
  });
});

describe("explainDatabaseFailure", () => {
  test("a database that does not exist: named with the server, the setting and make migrate", async () => {
    const explained = explainDatabaseFailure(await failureOf(missingDatabase), missingDatabase);
    expect(explained?.problem).toBe("no-database");
    expect(explained?.message).toBe(
      `the database "${missingDatabase.database}" does not exist on the PostgreSQL server at ${server} (DATABASE_URL): make migrate creates it`,
    );
  });

  test("a server that does not answer: unreachable, connection refused", async () => {
    const explained = explainDatabaseFailure(await failureOf(serverDown), serverDown);
    expect(explained?.problem).toBe("server-down");
    expect(explained?.message).toBe(`PostgreSQL at 127.0.0.1:${nothingListens}/sales is unreachable (connection refused; DATABASE_URL): is it up? make up`);
  });

  test("a role that does not exist: the login is refused, with the server's reason", async () => {
    const explained = explainDatabaseFailure(await failureOf(noSuchRole), noSuchRole);
    expect(explained?.problem).toBe("login-refused");
    expect(explained?.message).toBe(
      `PostgreSQL at ${server} refused user "${noSuchRole.user}" (role "${noSuchRole.user}" does not exist; DATABASE_URL): check the user there, or the server's pg_hba.conf`,
    );
  });

  test("names the PG* variables when the target came from them", async () => {
    const fromPg = parseDatabase({ PGHOST: BASE.database.host, PGPORT: String(BASE.database.port), PGUSER: BASE.database.user, PGDATABASE: missingDatabase.database });
    expect(explainDatabaseFailure(await failureOf(fromPg), fromPg)?.message).toContain("(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)");
  });

  test("leaves other errors alone", async () => {
    const postgres = withDatabase(BASE.database, "postgres");
    const sql = connect(postgres, quiet, { max: 1 });
    try {
      const error = await sql`select * from no_such_table_at_all`.catch((e: unknown) => e);
      expect(explainDatabaseFailure(error, postgres)).toBeUndefined();
    } finally {
      await sql.end({ timeout: 1 });
    }
  });
});

describe("the scripts that read PostgreSQL, against a database that does not exist", () => {
  const tmp = tempDir("sales-no-db-");
  afterAll(() => tmp.remove());
  const env = { DATABASE_URL: databaseUrl(missingDatabase), KAFKA_BROKERS: "127.0.0.1:1", BATCHES_DIR: tmp.path };

  test.each([
    ["status.ts", []],
    ["load.ts", []],
    ["export.ts", ["--dir", "EXPORTS"]],
  ])("%s says which database is missing and that make migrate creates it, at once, exit 1", async (script, args) => {
    const started = performance.now();
    const result = await runScript(script, args.map((a) => (a === "EXPORTS" ? join(tmp.path, "exports") : a)), env, 60_000);
    expect(result.code).toBe(1);
    expect(`${result.stdout}${result.stderr}`).toContain(
      `the database "${missingDatabase.database}" does not exist on the PostgreSQL server at ${server} (DATABASE_URL): make migrate creates it`,
    );
    expect(performance.now() - started).toBeLessThan(10_000);
  });

  test.each(["status.ts", "export.ts"])("%s tells a server that is down apart from it", async (script) => {
    const result = await runScript(script, ["--dir", join(tmp.path, "exports")].slice(script === "export.ts" ? 0 : 2), { ...env, DATABASE_URL: databaseUrl(serverDown) }, 60_000);
    expect(result.code).toBe(1);
    expect(`${result.stdout}${result.stderr}`).toContain(`PostgreSQL at 127.0.0.1:${nothingListens}/sales is unreachable (connection refused; DATABASE_URL): is it up? make up`);
  });
});

// A wrong password needs a server that asks for one: a PostgreSQL of its own, switched to scram-sha-256.
const noServer = postgresServerInstalled() ? undefined : "the wrong-password test starts a PostgreSQL of its own and needs initdb and pg_ctl";
if (noServer && readConfig().requireAllTests) throw new Error(noServer);
if (noServer) console.warn(`skipping: ${noServer}`);

describe.skipIf(noServer !== undefined)("a wrong password", () => {
  const tmp = tempDir("sales-password-");
  const password = `right-${uniqueName("pw")}`;
  const wrong = "Wr0ng-secret-9f3";
  let pg: PrivatePostgres;
  let target: DatabaseTarget;

  beforeAll(async () => {
    pg = startPrivatePostgres(tmp.path);
    const admin = connect(pg.target, quiet, { max: 1 });
    try {
      await admin.unsafe(`alter role postgres password '${password}'`);
      const [{ hba }] = (await admin`select current_setting('hba_file') as hba`) as unknown as [{ hba: string }];
      writeFileSync(hba, "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n");
      await admin`select pg_reload_conf()`;
    } finally {
      await admin.end({ timeout: 1 });
    }
    target = { ...pg.target, password: wrong };
  });

  afterAll(() => {
    pg?.stop();
    tmp.remove();
  });

  test("is told apart from a missing role, naming the user and the setting, never the password", async () => {
    const explained = explainDatabaseFailure(await failureOf(target), target);
    expect(explained?.problem).toBe("login-refused");
    expect(explained?.message).toBe(
      `PostgreSQL at 127.0.0.1:${pg.target.port} refused the password of user "postgres" (DATABASE_URL): check the user and password there`,
    );
  });

  test("status.ts says so and exits 1, printing neither password", async () => {
    const result = await runScript("status.ts", [], { DATABASE_URL: databaseUrl(target), KAFKA_BROKERS: "127.0.0.1:1", LOG_LEVEL: "debug" }, 60_000);
    expect(result.code).toBe(1);
    expect(result.stdout).toContain('refused the password of user "postgres" (DATABASE_URL)');
    expect(`${result.stdout}${result.stderr}`).not.toContain(wrong);
    expect(`${result.stdout}${result.stderr}`).not.toContain(password);
  });
});
