// Benchmark: times a large file through every stage, on a topic, consumer group, database and batch folder
// of its own (nothing of the walkthrough's data is touched). Timing goals live here, not in the tests.
//
//   make_data --copies N  ->  producer  ->  consumer  ->  load        make bench (ROWS_COPIES=100: 999,400 rows)
//
// Each stage runs alone first (its own time and rate), then all three run at once as in `make stream`
// (the time until the last row is in PostgreSQL). Files and the database stay in .local/bench for a look.
//
// Env: KAFKA_BROKERS, DATABASE_URL (the server; the database is sales_bench), LOG_LEVEL.
// Flags: --copies N, --batch-size N, --help.

import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { fail, parseCli } from "./lib/cli.ts";
import { parsePositiveInt, readConfig } from "./lib/config.ts";
import { connect, databaseUrl, maintenance, withDatabase } from "./lib/db.ts";
import { createLogger, formatDuration, formatRate } from "./lib/log.ts";
import { sleep } from "./lib/retry.ts";

const command = {
  script: "scripts/bench.ts",
  summary: "Time N copies of the Superstore rows through producer, consumer and loader, alone and all at once.",
  flags: {
    copies: { type: "string", arg: "N", help: "copies of the 9,994 rows (default 100: 999,400 rows)" },
    "batch-size": { type: "string", arg: "N", help: "records per batch file (default 10000)" },
  },
  env: ["KAFKA_BROKERS", "DATABASE_URL", "LOG_LEVEL"],
  notes: "Run by: make bench",
} as const;

const log = createLogger("bench");

async function run(script: string, args: string[], env: Record<string, string>): Promise<number> {
  const started = performance.now();
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdout: "inherit",
    stderr: "inherit",
  });
  const code = await child.exited;
  if (code !== 0) throw new Error(`${script} ${args.join(" ")} exited ${code}`);
  return performance.now() - started;
}

async function main(): Promise<void> {
  const flags = parseCli(command);
  if (!flags) return;
  const config = readConfig();
  const copies = flags.copies ? parsePositiveInt(flags.copies, "--copies", 1000) : 100;
  const batchSize = flags["batch-size"] ? parsePositiveInt(flags["batch-size"], "--batch-size") : 10_000;
  const root = ".local/bench";
  mkdirSync(root, { recursive: true });
  const file = join(root, `superstore-x${copies}.csv`);
  if (!existsSync(file)) await run("make_data.ts", ["--out", file, "--copies", String(copies)], {});
  const rows = copies * 9994;

  const bench = withDatabase(config.database, "sales_bench");
  const admin = maintenance(config.database, createLogger("bench", "silent"));
  const results: string[] = [];
  const report = (stage: string, ms: number) => {
    const line = `${stage.padEnd(34)} ${formatDuration(ms).padStart(7)}  ${formatRate(rows, ms).padStart(9)}`;
    results.push(line);
    log.info(line);
  };

  for (const mode of ["alone", "together"] as const) {
    const id = `bench_${Date.now().toString(36)}`;
    await admin`drop database if exists sales_bench with (force)`;
    const env = {
      KAFKA_TOPIC: id,
      KAFKA_GROUP_ID: id,
      BATCHES_DIR: join(root, id),
      BATCH_SIZE: String(batchSize),
      DATABASE_URL: databaseUrl(bench),
    };
    await run("migrate.ts", [], env);
    if (mode === "alone") {
      report(`producer --rate max`, await run("producer.ts", ["--file", file, "--rate", "max"], env));
      report(`consumer (${batchSize} per file)`, await run("consumer_batch_to_csv.ts", ["--until-idle", "2"], env));
      report(`load`, await run("load.ts", [], env));
    } else {
      const started = performance.now();
      const loader = Bun.spawn([process.execPath, "scripts/load.ts", "--watch"], {
        env: { ...process.env, LOG_LEVEL: "warn", ...env },
        stdout: "inherit",
        stderr: "inherit",
      });
      await Promise.all([
        run("producer.ts", ["--file", file, "--rate", "max"], env),
        run("consumer_batch_to_csv.ts", ["--until-idle", "2"], env),
      ]);
      // The consumer exits 2 s after the last message; the loader is done when every row is in.
      const sql = connect(bench, createLogger("bench", "silent"), { max: 1 });
      for (;;) {
        const [row] = await sql`select count(*)::int as n from orders`;
        if (row!.n >= rows) break;
        if (loader.exitCode !== null) throw new Error(`the loader exited ${loader.exitCode} with ${row!.n} of ${rows} rows in`);
        if (performance.now() - started > 900_000) throw new Error(`only ${row!.n} of ${rows} rows after 15 minutes`);
        await sleep(100);
      }
      report("all three at once, file to table", performance.now() - started);
      loader.kill("SIGTERM");
      await loader.exited;
      await sql.end();
    }
  }
  await admin.end();
  process.stdout.write(`\n${rows} rows, batch size ${batchSize}:\n${results.join("\n")}\n`);
}

if (import.meta.main) main().catch(fail);
