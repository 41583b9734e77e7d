// What becomes of loaded batch files (scripts/lib/load/retention.ts, load.ts --retention and --retention-days):
// move takes exactly the files whose content the ledger holds to loaded/<day of load>/, and nothing else (failed/,
// rejected/, other files, a file written over a loaded one's name); a replay of a moved file loads nothing twice;
// delete takes only loaded files whose load is older than N days (loaded_at backdated in the test's database),
// at the top and in loaded/; a move that fails is logged and the load goes on; --watch moves as it goes. On a full
// disk (a tmpfs out of inodes) the files load once, stay, and are named in one warning, and move once there is room.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, linkSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { batchFileName, META_COLUMNS, sha256 } from "../scripts/lib/batch.ts";
import { readConfig } from "../scripts/lib/config.ts";
import { writeCsv } from "../scripts/lib/csv.ts";
import { filesHealth } from "../scripts/lib/health.ts";
import { loadDay, retainLoaded, stampOf, LOADED_DIR } from "../scripts/lib/load/retention.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { retentionFrom } from "../scripts/load.ts";
import { createTestDatabase, runOk, runScript, startScript, superstoreRows, tempDir, waitFor, type TestDatabase } from "./helpers.ts";

const quiet = createLogger("test", "silent");

/** Runs mount(8) or umount(8), failing with its message. */
function system(program: "mount" | "umount", ...args: string[]): void {
  const result = Bun.spawnSync([program, ...args], { stderr: "pipe" });
  if (result.exitCode !== 0) throw new Error(`${program} ${args.join(" ")}: ${result.stderr.toString().trim()}`);
}

/** Why a tmpfs cannot be mounted here (the full-disk test needs root), or undefined when it can. */
const noMount = (() => {
  const probe = tempDir("sales-mount-");
  try {
    system("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe.path);
    system("umount", probe.path);
    return undefined;
  } catch (error) {
    return `the full-disk test mounts a small tmpfs, which needs root: ${(error as Error).message}`;
  } finally {
    probe.remove();
  }
})();
if (noMount && readConfig().requireAllTests) throw new Error(noMount);
if (noMount) console.warn(`skipping: ${noMount}`);
const DAY_MS = 86_400_000;
let rows: Record<string, string>[];

/** A batch file as the consumer writes it: `count` real Superstore rows from `first`, named by its content. */
function batch(first: number, count = 5): { name: string; content: string } {
  const records = rows.slice(first, first + count).map((row, i) => ({
    ...row,
    _source_file: "retention.csv",
    _source_line: String(first + i + 2),
    _source_lines: "",
    _topic: "retention",
    _partition: "0",
    _offset: String(first + i),
    _timestamp: "2024-01-01T00:00:00.000Z",
    _error: "",
    _raw: "",
  }));
  const content = writeCsv(records, [...Object.keys(rows[0]!), ...META_COLUMNS]);
  return { name: batchFileName("retention", 0, BigInt(first), BigInt(first + count - 1), content), content };
}

function put(dir: string, file: { name: string; content: string }): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, file.name), file.content);
  return file.name;
}

/** The files below `dir`, as paths relative to it, sorted. */
function tree(dir: string): string[] {
  return (readdirSync(dir, { recursive: true, withFileTypes: true }) as import("node:fs").Dirent[])
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name).slice(dir.length + 1))
    .sort();
}

describe("retentionFrom", () => {
  const config = (env: Record<string, string>) => readConfig(env);

  test("takes BATCH_RETENTION and BATCH_RETENTION_DAYS, the flags winning over them", () => {
    expect(retentionFrom({}, config({}))).toEqual({ mode: "keep", days: undefined });
    expect(retentionFrom({}, config({ BATCH_RETENTION: "move", BATCH_RETENTION_DAYS: "30" }))).toEqual({ mode: "move", days: 30 });
    expect(retentionFrom({ retention: "delete", "retention-days": "0" }, config({ BATCH_RETENTION: "move" }))).toEqual({ mode: "delete", days: 0 });
  });

  test("refuses delete without days and days with keep, naming the flag or variable that gave each", () => {
    expect(() => retentionFrom({}, config({ BATCH_RETENTION: "delete" }))).toThrow("BATCH_RETENTION=delete needs BATCH_RETENTION_DAYS");
    expect(() => retentionFrom({ retention: "delete" }, config({}))).toThrow("--retention delete needs BATCH_RETENTION_DAYS");
    expect(() => retentionFrom({ "retention-days": "7" }, config({}))).toThrow("--retention-days is set, but BATCH_RETENTION=keep keeps every file");
    expect(() => retentionFrom({ retention: "archive" }, config({}))).toThrow('--retention must be keep, move or delete, got "archive"');
  });

  test("names a day by its local date", () => {
    expect(loadDay(new Date(2024, 0, 5, 23, 59))).toBe("2024-01-05");
  });
});

describe("retention of loaded batch files", () => {
  const tmp = tempDir("sales-retention-");
  let db: TestDatabase;
  const env = (dir: string) => ({ BATCHES_DIR: dir, DATABASE_URL: db.url, LOG_LEVEL: "info" });
  const counts = async () => (await db.sql<{ orders: number; files: number }[]>`
    select (select count(*)::int from orders) as orders, (select count(*)::int from loaded_files) as files
  `)[0]!;
  const dayOf = async (name: string) => {
    const [row] = await db.sql<{ loaded_at: Date }[]>`select loaded_at from loaded_files where file_name = ${name}`;
    return loadDay(row!.loaded_at);
  };

  beforeAll(async () => {
    rows = await superstoreRows();
    db = await createTestDatabase("sales_retention");
  });
  afterAll(async () => {
    await db?.drop();
    tmp.remove();
  });

  test("move takes exactly the loaded files to loaded/<day>/; failed/, rejected/ and other files stay", async () => {
    const dir = join(tmp.path, "move");
    const names = [batch(0), batch(5), batch(10)].map((b) => put(dir, b));
    const broken = batch(15);
    put(dir, { name: broken.name, content: broken.content.slice(0, -40) }); // truncated: set aside, never loaded
    put(join(dir, "failed"), { name: "old.csv", content: "set aside before\n" });
    put(join(dir, "rejected"), { name: names[0]!, content: "rows for people\n" });
    put(dir, { name: "notes.txt", content: "not a batch file\n" });
    const run = await runScript("load.ts", ["--retention", "move"], env(dir));
    expect(run.code).toBe(1); // a file was set aside
    expect(run.stderr).toContain("files=3 rows=15 inserted=15");
    expect(run.stderr).toContain("moved=3 deleted=0");
    const day = await dayOf(names[0]!);
    expect(tree(dir)).toEqual(
      [
        `failed/${broken.name}`,
        `failed/${broken.name}.reason.txt`,
        "failed/old.csv",
        ...names.map((n) => `${LOADED_DIR}/${day}/${n}`),
        "notes.txt",
        `rejected/${names[0]}`,
      ].sort(),
    );
    expect(readFileSync(join(dir, "failed", "old.csv"), "utf8")).toBe("set aside before\n");
    // Moved files are not pending: the health of the folder counts only its top.
    expect(await filesHealth(dir, new Set(names))).toEqual({ dir, total: 0, pending: 0, failed: 2 });
  });

  test("a replay of a moved file loads nothing twice, and goes to the same place", async () => {
    const dir = join(tmp.path, "move");
    const first = batch(0).name;
    const day = await dayOf(first);
    const before = await counts();
    cpSync(join(dir, LOADED_DIR, day, first), join(dir, first));
    const run = await runOk("load.ts", ["--retention", "move"], env(dir));
    expect(run.stderr).toContain("files=0 rows=0 inserted=0");
    expect(run.stderr).toContain("moved=1 deleted=0");
    expect(await counts()).toEqual(before);
    expect(readdirSync(join(dir, LOADED_DIR, day)).filter((n) => n.startsWith(first.replace(/\.csv$/, "")))).toEqual([first]);
    expect(existsSync(join(dir, first))).toBe(false);
  });

  test("leaves a file written over a loaded one's name, and a content the ledger does not hold", async () => {
    const dir = join(tmp.path, "race");
    const [a, b] = [batch(20), batch(25)];
    put(dir, a);
    put(dir, b);
    await runOk("load.ts", [], env(dir));
    const judged = [a, b].map((f) => ({ name: f.name, hash: sha256(f.content), stamp: stampOf(statSync(join(dir, f.name))) }));
    writeFileSync(join(dir, b.name), batch(30).content); // a new file under b's name, after b was judged loaded
    writeFileSync(join(dir, "stranger.csv"), "never loaded\n");
    const stranger = { name: "stranger.csv", hash: sha256("never loaded\n"), stamp: stampOf(statSync(join(dir, "stranger.csv"))) };
    const moved = await retainLoaded(db.sql, dir, [...judged, stranger], { mode: "move", days: undefined }, quiet);
    expect(moved).toEqual({ moved: 1, deleted: 0 });
    expect(tree(dir)).toEqual([`${LOADED_DIR}/${await dayOf(a.name)}/${a.name}`, b.name, "stranger.csv"].sort());
    expect(readFileSync(join(dir, b.name), "utf8")).toBe(batch(30).content);
  });

  test("a move that fails is logged naming the file, and the load goes on", async () => {
    const dir = join(tmp.path, "blocked");
    const file = put(dir, batch(35));
    writeFileSync(join(dir, LOADED_DIR), "a file where the folder should be\n");
    const run = await runOk("load.ts", ["--retention", "move"], env(dir));
    expect(run.stderr).toContain(`could not move ${join(dir, file)}`);
    expect(run.stderr).toContain("files=1 rows=5 inserted=5");
    expect(run.stderr).toContain("moved=0 deleted=0");
    expect(existsSync(join(dir, file))).toBe(true);
  });

  test("delete after N days deletes only loaded files whose load is older, at the top and in loaded/", async () => {
    const dir = join(tmp.path, "days");
    const [old, recent, fresh, oldToo] = [batch(40), batch(45), batch(50), batch(55)];
    for (const f of [old, recent, fresh, oldToo]) put(dir, f);
    await runOk("load.ts", [], env(dir));
    await db.sql`update loaded_files set loaded_at = now() - interval '10 days' where file_name in ${db.sql([old.name, oldToo.name])}`;
    await db.sql`update loaded_files set loaded_at = now() - interval '3 days' where file_name = ${recent.name}`;
    await runOk("load.ts", ["--retention", "move"], env(dir)); // each to the folder of its day of load
    const [oldDay, recentDay, today] = [await dayOf(old.name), await dayOf(recent.name), await dayOf(fresh.name)];
    put(join(dir, LOADED_DIR, oldDay), { name: "stranger.csv", content: "never loaded\n" });
    put(dir, old); // the old file written again: its content's load is 10 days old
    const added = put(dir, batch(60)); // loaded now
    const ledger = (await counts()).files;
    const run = await runOk("load.ts", ["--retention", "delete", "--retention-days", "7"], env(dir));
    expect(run.stderr).toContain("moved=0 deleted=3");
    expect(tree(dir)).toEqual(
      [added, `${LOADED_DIR}/${oldDay}/stranger.csv`, `${LOADED_DIR}/${recentDay}/${recent.name}`, `${LOADED_DIR}/${today}/${fresh.name}`].sort(),
    );
    expect((await counts()).files).toBe(ledger + 1); // the ledger still knows every file, and the one added
  });

  test("a link at the top is left as it is, and the file it points to, in loaded/ or elsewhere, stays whole", async () => {
    const dir = join(tmp.path, "links");
    const [kept, outside] = [batch(75), batch(80)];
    put(dir, kept);
    await runOk("load.ts", ["--retention", "move"], env(dir));
    const moved = join(dir, LOADED_DIR, await dayOf(kept.name), kept.name);
    symlinkSync(moved, join(dir, kept.name)); // a moved file linked back to the top
    put(join(tmp.path, "elsewhere"), outside);
    symlinkSync(join("..", "elsewhere", outside.name), join(dir, outside.name)); // a relative link to a file elsewhere
    let run = await runOk("load.ts", ["--retention", "move"], env(dir));
    expect(readFileSync(moved, "utf8")).toBe(kept.content);
    expect(readFileSync(join(dir, kept.name), "utf8")).toBe(kept.content);
    expect(readFileSync(join(dir, outside.name), "utf8")).toBe(outside.content);
    expect(run.stderr).toContain("files=1 rows=5 inserted=5");
    expect(run.stderr).toContain("moved=0 deleted=0");
    // A hard link back to the top is the same file: the move takes the top name away, the file stays in loaded/.
    rmSync(join(dir, kept.name));
    linkSync(moved, join(dir, kept.name));
    expect((await runOk("load.ts", ["--retention", "move"], env(dir))).stderr).toContain("moved=1 deleted=0");
    expect(existsSync(join(dir, kept.name))).toBe(false);
    expect(readFileSync(moved, "utf8")).toBe(kept.content);
    // delete takes the file in loaded/ (its load is 0 days old), never the link nor what it points to
    run = await runOk("load.ts", ["--retention", "delete", "--retention-days", "0"], env(dir));
    expect(run.stderr).toContain("moved=0 deleted=1");
    expect(readFileSync(join(dir, outside.name), "utf8")).toBe(outside.content);
  });

  test("--watch moves each file as soon as it is loaded", async () => {
    const dir = join(tmp.path, "watch");
    mkdirSync(dir);
    const loader = startScript("load.ts", ["--watch", "--retention", "move"], env(dir));
    const moved = (file: string) => waitFor(`${file} moved to loaded/`, () => existsSync(join(dir, LOADED_DIR)) && tree(dir).some((p) => p.endsWith(`/${file}`)), 20_000);
    try {
      await moved(put(dir, batch(65)));
      // Written after the loader's first look at the whole folder (its next is an hour away): moved as it loads.
      const second = put(dir, batch(70));
      await moved(second);
      expect(tree(dir).filter((p) => !p.startsWith(`${LOADED_DIR}/`))).toEqual([]);
    } finally {
      loader.child.kill("SIGTERM");
    }
    const { stderr } = await loader.finish();
    expect(stderr).toContain("files=2 rows=10 inserted=10");
    expect(stderr).toContain("moved=2 deleted=0");
  });

  // A file system with no room left: a tmpfs with as many inodes as it holds files, so loaded/ cannot be made.
  test.skipIf(noMount !== undefined)("on a full disk the files load once, stay, and are named in one warning; moved once there is room", async () => {
    const dir = join(tmp.path, "full");
    mkdirSync(dir);
    system("mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=4", "tmpfs", dir);
    try {
      const names = [batch(600), batch(605), batch(610)].map((b) => put(dir, b));
      // The control: the fault is real, nothing can make a folder there.
      expect(() => mkdirSync(join(dir, "probe"))).toThrow("ENOSPC");
      const first = await runOk("load.ts", ["--retention", "move"], env(dir));
      expect(first.stderr).toContain("files=3 rows=15 inserted=15");
      expect(first.stderr).toContain("moved=0 deleted=0");
      expect(first.stderr.match(/could not move/g)).toHaveLength(1);
      expect(first.stderr).toMatch(new RegExp(`could not move 3 loaded files, the first ${dir}/retention_\\S+\\.csv \\(ENOSPC`));
      expect(tree(dir)).toEqual([...names].sort());
      const again = await runOk("load.ts", ["--retention", "move"], env(dir));
      expect(again.stderr).toContain("files=0 rows=0 inserted=0");
      system("mount", "-o", "remount,nr_inodes=64", dir);
      const roomy = await runOk("load.ts", ["--retention", "move"], env(dir));
      expect(roomy.stderr).toContain("moved=3 deleted=0");
      expect(tree(dir)).toEqual(names.map((n) => `${LOADED_DIR}/${loadDay(new Date())}/${n}`).sort());
      const [row] = await db.sql<{ n: number }[]>`select count(*)::int as n from orders where source_line between 602 and 616`;
      expect(row!.n).toBe(15);
    } finally {
      system("umount", dir);
    }
  });
});
