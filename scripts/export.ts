// Export: every BI view as a UTF-8 CSV file, for Tableau Public (which reads files, not databases) and for
// Tableau Desktop without a database, plus the ready workbook over those files, loose and packaged.
//
//   v_sales, v_monthly_sales, ... (PostgreSQL)  ->  data/exports/<view>.csv, superstore_sales.twb
//                                                   and superstore_sales.twbx                      make export
//
// All files come from one snapshot: one read-only, repeatable-read transaction, so their totals agree even while
// the loader keeps committing. Each file is written to a temporary name and renamed when complete. The workbook
// is sql/tableau/superstore_sales.twb with its text-file folder pointed at the CSV files:
// - superstore_sales.twb names the export folder by its absolute path: it opens on this machine, from anywhere;
// - superstore_sales.twbx is the packaged workbook, the one to share or to open on another machine (Windows,
//   Mac): a ZIP holding the workbook at its root and the CSV files in Data/exports/, the workbook's folder
//   being that relative path, as Tableau lays out a package of text files. It names no path of this machine.
//
// Env: DATABASE_URL (or PG*), LOG_LEVEL. Flags: --dir, --help.

import { mkdir, open, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { fail, parseCli } from "./lib/cli.ts";
import { projectPath, readConfig } from "./lib/config.ts";
import { writeCsv } from "./lib/csv.ts";
import { connect, describeDatabase, explainDatabaseFailure, type TransactionSql } from "./lib/db.ts";
import { createLogger, formatDuration } from "./lib/log.ts";
import { fileSink, ZipWriter } from "./lib/zip.ts";

const command = {
  script: "scripts/export.ts",
  summary: "Write every BI view as UTF-8 CSV from one consistent snapshot, with a Tableau workbook over the files.",
  flags: {
    dir: { type: "string", short: "d", arg: "DIR", help: "output folder (default data/exports)" },
  },
  env: ["DATABASE_URL", "LOG_LEVEL"],
  notes: [
    "Run by: make export. Open data/exports/superstore_sales.twbx in Tableau Public or Desktop, on any machine, or",
    "share it; data/exports/superstore_sales.twb opens the same CSV files on this machine.",
  ].join("\n"),
} as const;

/** The views and the order their rows are written in. */
export const EXPORTS: readonly { readonly view: string; readonly orderBy: string }[] = [
  { view: "v_sales", orderBy: "line_id" },
  { view: "v_monthly_sales", orderBy: "month" },
  { view: "v_product_performance", orderBy: "sales_rank, product_id" },
  { view: "v_customer_segments", orderBy: "segment" },
  { view: "v_region_sales", orderBy: "region, state" },
];

export const WORKBOOK = "sql/tableau/superstore_sales.twb";
/** Where the committed workbook expects the exports, relative to itself. */
const WORKBOOK_DIRECTORY = "../../data/exports";
/** The packaged workbook, beside the loose one. */
export const PACKAGE = "superstore_sales.twbx";
/** The CSV files' folder inside the package, relative to the workbook at its root (Tableau's Data/<folder>/). */
export const PACKAGED_DIRECTORY = "Data/exports";

/** Rows read from the database per round trip while a view is written. */
const CURSOR_ROWS = 2000;

/**
 * Streams one view to `dir/<view>.csv` through a temporary file, in rounds of CURSOR_ROWS rows (memory stays
 * flat whatever the size); returns the rows written. Every value is read as PostgreSQL's own text (exact
 * numerics, ISO dates), and written with the project's CSV writer (UTF-8, RFC 4180 quoting, NULL as empty).
 */
async function exportView(tx: TransactionSql, dir: string, view: string, orderBy: string): Promise<number> {
  const columns = (
    await tx<{ column_name: string }[]>`
      select column_name from information_schema.columns
      where table_schema = 'public' and table_name = ${view} order by ordinal_position
    `
  ).map((c) => c.column_name);
  const path = join(dir, `${view}.csv`);
  const tmp = join(dir, `.${view}.csv.tmp`);
  const out = Bun.file(tmp).writer();
  let rows = 0;
  out.write(writeCsv([], columns));
  // Identifiers from the fixed list above and the catalog; a cursor keeps one round of rows in memory.
  // Ordered by the view's own columns (v.x), not by the text they are read as.
  const order = orderBy.split(",").map((c) => `v.${c.trim()}`).join(", ");
  const select = `select ${columns.map((c) => `v."${c}"::text as "${c}"`).join(", ")} from ${view} v order by ${order}`;
  for await (const chunk of tx.unsafe(select).cursor(CURSOR_ROWS)) {
    out.write(writeCsv(chunk as Record<string, string | null>[], columns, false));
    rows += chunk.length;
  }
  await out.end();
  await rename(tmp, path);
  return rows;
}

/** The workbook with its text-file folder pointed at `dir` (absolute, or relative to the workbook). */
export async function workbookFor(dir: string): Promise<string> {
  const text = await readFile(projectPath(WORKBOOK), "utf8");
  if (!text.includes(`'${WORKBOOK_DIRECTORY}'`) && !text.includes(`"${WORKBOOK_DIRECTORY}"`)) {
    throw new Error(`${WORKBOOK} does not name ${WORKBOOK_DIRECTORY} as its folder`);
  }
  const escaped = dir.replaceAll("&", "&amp;").replaceAll("'", "&apos;").replaceAll('"', "&quot;").replaceAll("<", "&lt;");
  return text.replaceAll(WORKBOOK_DIRECTORY, escaped);
}

/**
 * Writes `dir/superstore_sales.twbx` through a temporary file: the workbook (reading PACKAGED_DIRECTORY) at the
 * root, then each view's CSV file, streamed from the file just written, so the package holds exactly those bytes.
 * Memory holds the workbook's text and one chunk of a CSV file at a time, whatever the size of the export.
 */
export async function writePackage(dir: string, views: readonly string[], modified = new Date()): Promise<number> {
  const path = join(dir, PACKAGE);
  const tmp = join(dir, `.${PACKAGE}.tmp`);
  const handle = await open(tmp, "w");
  try {
    const zip = new ZipWriter(fileSink(handle));
    await zip.add("superstore_sales.twb", await workbookFor(PACKAGED_DIRECTORY), { modified });
    for (const view of views) await zip.add(`${PACKAGED_DIRECTORY}/${view}.csv`, Bun.file(join(dir, `${view}.csv`)).stream(), { modified });
    const size = await zip.finish();
    await handle.close();
    await rename(tmp, path);
    return size;
  } catch (error) {
    await handle.close().catch(() => undefined); // closed already when the rename failed
    await rm(tmp, { force: true });
    throw new Error(`cannot write ${path}: ${(error as Error).message}`, { cause: error });
  }
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const log = createLogger("export", config.logLevel);
  const dir = resolve(flags.dir ?? projectPath("data/exports"));
  const started = performance.now();
  await mkdir(dir, { recursive: true });
  const sql = connect(config.database, log, { max: 1 });
  try {
    // One snapshot for every file: the totals of all exports agree, whatever the loader commits meanwhile.
    const counts = await sql
      .begin("isolation level repeatable read read only", async (tx) => {
        const out: Record<string, number> = {};
        for (const { view, orderBy } of EXPORTS) out[view] = await exportView(tx, dir, view, orderBy);
        return out;
      })
      .catch((error: unknown) => {
        throw explainDatabaseFailure(error, config.database) ?? error;
      });
    await writeFile(join(dir, ".superstore_sales.twb.tmp"), await workbookFor(dir));
    await rename(join(dir, ".superstore_sales.twb.tmp"), join(dir, "superstore_sales.twb"));
    const packaged = await writePackage(dir, EXPORTS.map((e) => e.view));
    log.info(
      `done: ${Object.entries(counts)
        .map(([view, n]) => `${view}=${n}`)
        .join(" ")} from ${describeDatabase(config.database)} into ${dir}/ (${PACKAGE}: ${(packaged / 1e6).toFixed(1)} MB) ` +
        `in ${formatDuration(performance.now() - started)}`,
    );
  } finally {
    await sql.end({ timeout: 5 });
  }
}

if (import.meta.main) main().catch(fail);
