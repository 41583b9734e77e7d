// Migrations: the database is created when missing, files apply in order once, and an applied file that
// was edited afterwards stops the run.

import { afterAll, describe, expect, test } from "bun:test";
import { cpSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect, databaseUrl, maintenance, withDatabase } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { listMigrations } from "../scripts/migrate.ts";
import { BASE, ROOT, runOk, runScript, tempDir, uniqueName } from "./helpers.ts";

const quiet = createLogger("test", "silent");

describe("migrate.ts", () => {
  const name = uniqueName("sales_migrate");
  const target = withDatabase(BASE.database, name);
  const url = databaseUrl(target);
  const tmp = tempDir();

  afterAll(async () => {
    const admin = maintenance(BASE.database, quiet);
    await admin`drop database if exists ${admin(name)} with (force)`;
    await admin.end({ timeout: 5 });
    tmp.remove();
  });

  test("creates the missing database and applies every file in order", async () => {
    const first = await runOk("migrate.ts", [], { DATABASE_URL: url, LOG_LEVEL: "info" });
    expect(first.stderr).toContain(`created database ${name}`);
    const sql = connect(target, quiet, { max: 1 });
    try {
      const applied = await sql<{ id: number; name: string }[]>`select id, name from schema_migrations order by id`;
      const files = await listMigrations(join(ROOT, "sql"));
      expect(applied.map((r) => ({ ...r }))).toEqual(files.map((f) => ({ id: f.id, name: f.name })));
      const tables = await sql<{ t: string; kind: string }[]>`
        select table_name as t, table_type as kind from information_schema.tables where table_schema = 'public' order by 1
      `;
      expect(tables.filter((r) => r.kind === "BASE TABLE").map((r) => r.t)).toEqual([
        "loaded_files",
        "loader_lock",
        "lost_offsets",
        "orders",
        "products",
        "rejected_rows",
        "schema_migrations",
        "users",
      ]);
      expect(tables.filter((r) => r.kind === "VIEW").map((r) => r.t)).toEqual([
        "v_customer_segments",
        "v_loaded_files",
        "v_monthly_sales",
        "v_pipeline_health",
        "v_product_performance",
        "v_region_sales",
        "v_sales",
      ]);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });

  test("a second run applies nothing", async () => {
    const second = await runOk("migrate.ts", [], { DATABASE_URL: url, LOG_LEVEL: "info" });
    expect(second.stderr).toMatch(/0 applied, \d+ already there/);
  });

  test("refuses to run when an applied file was edited", async () => {
    const dir = join(tmp.path, "sql");
    cpSync(join(ROOT, "sql"), dir, { recursive: true });
    writeFileSync(join(dir, "001_create_seed_tables.sql"), "-- edited\n");
    const result = await runScript("migrate.ts", ["--dir", dir], { DATABASE_URL: url });
    expect(result.code, result.stderr).toBe(1);
    expect(result.stderr).toContain("001_create_seed_tables.sql changed after it was applied");
  });
});
