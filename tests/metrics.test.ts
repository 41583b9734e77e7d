// The dashboard's /metrics, read as Prometheus reads it: every page is parsed by Prometheus' own Python parser
// (prometheus_client, Debian's python3-prometheus-client), never by our code. The text format first: label
// values and HELP text with backslashes, quotes and newlines come back exactly. Then one pipeline, with facts
// read from Kafka (offsets, committed offsets) and PostgreSQL (the ledger) directly beside each scrape: lag and
// records per partition after producing and consuming some, the ledger's counters after loading known files,
// pending and set-aside files, the consumer alive while it runs and not after it stopped, the loader alive
// while a session named load is open, and a dashboard that can read neither Kafka nor PostgreSQL saying so.
// make status prints the same facts.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readConfig } from "../scripts/lib/config.ts";
import { connect } from "../scripts/lib/db.ts";
import { databaseHealth, judgeAlive, loaderSessions, type DatabaseFacts, type KafkaDetail, type Part, type PipelineHealth } from "../scripts/lib/health.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { escapeHelp, escapeLabelValue, METRICS_CONTENT_TYPE, pipelineFamilies, renderFamilies, type Family } from "../scripts/lib/metrics.ts";
import {
  BROKERS,
  createTestDatabase,
  freePorts,
  pipelineEnv,
  runOk,
  startScript,
  tempDir,
  uniqueName,
  waitFor,
  withAdmin,
  type Running,
  type TestDatabase,
} from "./helpers.ts";

/** A python3 that has prometheus_client: Debian's (/usr/bin/python3) first, then the one on PATH. */
const PYTHON = ["/usr/bin/python3", Bun.which("python3")].find(
  (python) => python && Bun.spawnSync([python, "-c", "import prometheus_client"], { stdout: "ignore", stderr: "ignore" }).exitCode === 0,
);
const noParser = PYTHON ? undefined : "the metrics tests parse /metrics with Prometheus' Python parser (apt-get install python3-prometheus-client)";
if (noParser && readConfig().requireAllTests) throw new Error(noParser);
if (noParser) console.warn(`skipping: ${noParser}`);

interface Parsed {
  readonly name: string;
  readonly type: string;
  readonly help: string;
  readonly samples: { name: string; labels: Record<string, string>; value: number | string }[];
}

const PARSE = `
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = [{"name": f.name, "type": f.type, "help": f.documentation,
         "samples": [{"name": s.name, "labels": s.labels, "value": s.value if math.isfinite(s.value) else str(s.value)} for s in f.samples]}
       for f in text_string_to_metric_families(sys.stdin.read())]
json.dump(out, sys.stdout)
`;

/** The families Prometheus' parser reads in `text` (a value that is not finite as "nan", "inf" or "-inf"). */
async function parse(text: string): Promise<Parsed[]> {
  const python = Bun.spawn([PYTHON!, "-c", PARSE], { stdin: new Blob([text]), stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(python.stdout).text(), new Response(python.stderr).text(), python.exited]);
  if (code !== 0) throw new Error(`prometheus_client could not parse the page:\n${err}\n${text}`);
  return JSON.parse(out) as Parsed[];
}

/** Samples of `name` (a counter's family name is without _total, as the parser gives it) as "labels -> value". */
function values(families: readonly Parsed[], name: string, label?: string): Record<string, number | string> {
  const family = families.find((f) => f.name === name.replace(/_total$/, ""));
  if (!family) throw new Error(`no family ${name} on the page`);
  return Object.fromEntries(family.samples.map((s) => [label ? s.labels[label]! : "", s.value]));
}

describe.skipIf(noParser !== undefined)("the text format", () => {
  const tricky = ['back\\slash', 'a "quoted" word', "two\nlines", "all \\ \" \n three", "ünïcode ✓ {a=\"b\",c}", ""];

  test("escapes backslash, double quote and newline in label values, and backslash and newline in HELP", () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    expect(escapeHelp('a\\b"c\nd')).toBe('a\\\\b"c\\nd');
  });

  test("Prometheus' parser reads back every label value, HELP text, type and value exactly", async () => {
    const families: Family[] = [
      { name: "t_gauge", help: 'help with \\ and "quotes"\nand a second line', type: "gauge", samples: tricky.map((v, i) => ({ labels: { v, i }, value: i + 0.5 })) },
      { name: "t_events_total", help: "a counter", type: "counter", samples: [{ value: 12 }] },
      { name: "t_special", help: "not finite", type: "gauge", samples: [{ labels: { k: "nan" }, value: NaN }, { labels: { k: "inf" }, value: Infinity }, { labels: { k: "-inf" }, value: -Infinity }] },
      { name: "t_empty", help: "no sample", type: "gauge", samples: [] },
    ];
    const parsed = await parse(renderFamilies(families, ["a comment\nover two lines"]));
    expect(parsed.map((f) => [f.name, f.type])).toEqual([["t_gauge", "gauge"], ["t_events", "counter"], ["t_special", "gauge"], ["t_empty", "gauge"]]);
    expect(parsed[0]!.help).toBe('help with \\ and "quotes"\nand a second line');
    expect(parsed[0]!.samples.map((s) => [s.labels.v, s.labels.i, s.value])).toEqual(tricky.map((v, i) => [v, String(i), i + 0.5]));
    expect(parsed[1]!.samples).toEqual([{ name: "t_events_total", labels: {}, value: 12 }]);
    expect(parsed[2]!.samples.map((s) => [s.labels.k, s.value])).toEqual([["nan", "nan"], ["inf", "inf"], ["-inf", "-inf"]]);
  });

  test("refuses names the format does not allow, and a counter not ending in _total", () => {
    expect(() => renderFamilies([{ name: "bad-name", help: "", type: "gauge", samples: [] }])).toThrow('"bad-name" is not a valid metric name');
    expect(() => renderFamilies([{ name: "ok", help: "", type: "gauge", samples: [{ labels: { "bad-label": "x" }, value: 1 }] }])).toThrow('"bad-label" is not a valid label name');
    expect(() => renderFamilies([{ name: "ok", help: "", type: "counter", samples: [] }])).toThrow("a counter's name ends in _total");
  });
});

describe("judgeAlive", () => {
  const now = Date.parse("2026-01-01T12:00:00Z");
  const kafka = (recentRecords: number, members: number): Part<KafkaDetail> => ({
    ok: true, topic: "t", group: "g", messages: 10, partitions: 1, lag: 0, byPartition: [], members, groupState: members ? "Stable" : "Empty", recentRecords,
  });
  const database = (loaderSessions: number, lastLoadAt: string | null): Part<DatabaseFacts> => ({
    ok: true, rowsLoaded: 0, filesLoaded: 0, rejectedOpen: 0, rowsWithWarnings: 0, rowsCrossSource: 0, lastLoadAt, ledgerInserted: 0, ledgerDuplicates: 0, ledgerRejected: 0, loaderSessions,
  });
  const alive = (k: Part<KafkaDetail>, d: Part<DatabaseFacts>) => {
    const a = judgeAlive(k, d, now);
    return [a.producer.alive, a.consumer.alive, a.loader.alive];
  };

  test("producer by recent records, consumer by members, loader by a session or a load within the window", () => {
    expect(alive(kafka(0, 0), database(0, null))).toEqual([false, false, false]);
    expect(alive(kafka(5, 1), database(1, null))).toEqual([true, true, true]);
    expect(alive(kafka(0, 0), database(0, "2026-01-01T11:59:01Z"))).toEqual([false, false, true]);
    expect(alive(kafka(0, 0), database(0, "2026-01-01T11:58:59Z"))).toEqual([false, false, false]);
    expect(judgeAlive(kafka(0, 0), database(0, "2026-01-01T11:58:59Z"), now).loader.why).toBe("no session named load, last load 1m01s ago");
  });

  test("says unknown, not dead, when the part that would tell cannot be read", () => {
    expect(alive({ ok: false, error: "away" }, { ok: false, error: "away" })).toEqual([null, null, null]);
    expect(judgeAlive({ ok: false, error: "away" }, database(0, null), now).consumer.why).toBe("Kafka cannot be read");
  });
});

/** Records per partition and the group's lag per partition, from Kafka directly. */
async function kafkaFacts(topic: string, group: string): Promise<{ records: Record<string, number>; lag: Record<string, number> }> {
  return withAdmin(BROKERS, async (admin) => {
    const ends = await admin.fetchTopicOffsets(topic);
    const [committed] = await admin.fetchOffsets({ groupId: group, topics: [topic] });
    const at = new Map(committed!.partitions.map((p) => [p.partition, Number(p.offset)]));
    const records: Record<string, number> = {};
    const lag: Record<string, number> = {};
    for (const p of ends) {
      records[p.partition] = Number(p.high) - Number(p.low);
      lag[p.partition] = Number(p.high) - ((at.get(p.partition) ?? -1) < 0 ? Number(p.low) : at.get(p.partition)!);
    }
    return { records, lag };
  });
}

/** The ledger's sums and the time of the last load, from loaded_files directly. */
async function ledgerFacts(db: TestDatabase) {
  const [row] = await db.sql<{ inserted: number; duplicates: number; rejected: number; files: number; last: number }[]>`
    select sum(inserted)::int as inserted, sum(duplicates)::int as duplicates, sum(rejected)::int as rejected,
           count(*)::int as files, extract(epoch from max(loaded_at))::float8 as last
    from loaded_files
  `;
  return row!;
}

describe.skipIf(noParser !== undefined)("/metrics of the dashboard", () => {
  const tmp = tempDir("sales-metrics-");
  const topic = uniqueName("metrics");
  const group = uniqueName("g");
  const file = join(tmp.path, "orders.csv");
  let db: TestDatabase;
  let env: Record<string, string>;
  let dashboard: { url: string; server: Running };
  let blind: { url: string; server: Running };

  async function startDashboard(extra: Record<string, string>): Promise<{ url: string; server: Running }> {
    const [port] = freePorts(1) as [number];
    const server = startScript("dashboard.ts", ["--port", String(port)], { ...env, ...extra, LOG_LEVEL: "info" });
    await server.waitForOutput(/dashboard at http:\/\//);
    return { url: `http://127.0.0.1:${port}/metrics`, server };
  }

  /** One scrape, parsed; the content type checked on the way. */
  async function scrape(url = dashboard.url): Promise<Parsed[]> {
    const response = await fetch(url);
    expect(response.headers.get("content-type")).toBe(METRICS_CONTENT_TYPE);
    return parse(await response.text());
  }

  /** Scrapes until `check` holds (a scrape is kept a second, so a change shows within about one). */
  async function scrapeUntil(what: string, check: (page: Parsed[]) => boolean): Promise<Parsed[]> {
    let page: Parsed[] = [];
    await waitFor(() => `${what}; last page: ${JSON.stringify(page)}`, async () => check((page = await scrape())), 30_000, 200);
    return page;
  }
  const up = (page: Parsed[]) => values(page, "sales_pipeline_up", "component");

  beforeAll(async () => {
    db = await createTestDatabase();
    env = { ...pipelineEnv({ topic, group, dir: join(tmp.path, "batches"), databaseUrl: db.url }), KAFKA_PARTITIONS: "2" };
    mkdirSync(env.BATCHES_DIR!);
    await runOk("make_data.ts", ["--out", file, "--rows", "40"], {});
    // Row 1's order date made impossible: one rejected row per send.
    writeFileSync(file, readFileSync(file, "latin1").replace("11/8/2016", "13/45/2016"), "latin1");
    [dashboard, blind] = await Promise.all([
      startDashboard({}),
      startDashboard({ KAFKA_BROKERS: "127.0.0.1:1", DATABASE_URL: "postgres://postgres@127.0.0.1:1/sales", BATCHES_DIR: join(tmp.path, "blind") }),
    ]);
  });
  afterAll(async () => {
    for (const d of [dashboard, blind]) {
      d?.server.child.kill("SIGTERM");
      await d?.server.finish();
    }
    await db?.drop();
    tmp.remove();
  });

  test("before anything ran, nothing is alive; a session named load makes the loader alive until it closes", async () => {
    const first = await scrape();
    expect(up(first)).toEqual({ producer: 0, consumer: 0, loader: 0 });
    expect(values(first, "sales_pipeline_kafka_consumer_lag")).toEqual({});
    expect(values(first, "sales_pipeline_read_success", "source")).toEqual({ kafka: 1, postgresql: 1 });
    const loader = connect(db.target, createLogger("test", "silent"), { max: 1, parameters: { application_name: "load" } });
    try {
      await loader`select 1`;
      const page = await scrapeUntil("the loader up", (p) => up(p).loader === 1);
      expect(values(page, "sales_pipeline_loader_sessions")).toEqual({ "": 1 });
      // What /metrics reads of PostgreSQL, bi_reader may read: the view, and other roles' session names.
      await db.sql.begin(async (tx) => {
        await tx`set local role bi_reader`;
        expect(await databaseHealth(tx, db.target)).toMatchObject({ ok: true, ledgerInserted: 0, ledgerDuplicates: 0, ledgerRejected: 0 });
        expect(await loaderSessions(tx)).toBe(1);
        await expect(tx.savepoint((sp) => sp`select 1 from loaded_files`)).rejects.toThrow("permission denied for table loaded_files");
      });
    } finally {
      await loader.end({ timeout: 1 });
    }
    await scrapeUntil("the loader down again", (p) => up(p).loader === 0);
  });

  test("lag and records per partition, the consumer alive while it runs, the ledger's counters and the files, as Kafka and PostgreSQL say", async () => {
    await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
    await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
    const consumer = startScript("consumer_batch_to_csv.ts", ["--max-age", "1"], env);
    const running = await scrapeUntil("the consumer up, every record committed", (p) => up(p).consumer === 1 && Object.values(values(p, "sales_pipeline_kafka_consumer_lag", "partition")).join() === "0,0");
    expect(values(running, "sales_pipeline_kafka_consumer_group_members", "group")).toEqual({ [group]: 1 });
    consumer.child.kill("SIGTERM");
    expect((await consumer.finish()).code).toBe(0);
    await scrapeUntil("the consumer down once it stopped", (p) => up(p).consumer === 0);

    // 40 more records, not consumed; the files the consumer wrote loaded; one file more, one set aside.
    await runOk("producer.ts", ["--file", file, "--rate", "max"], env);
    await runOk("load.ts", [], env);
    const names = readdirSync(env.BATCHES_DIR!).filter((f) => f.endsWith(".csv"));
    copyFileSync(join(env.BATCHES_DIR!, names[0]!), join(env.BATCHES_DIR!, "not_loaded_yet.csv"));
    mkdirSync(join(env.BATCHES_DIR!, "failed"));
    writeFileSync(join(env.BATCHES_DIR!, "failed", "broken.csv"), "x\n");
    const page = await scrapeUntil("the pending file", (p) => values(p, "sales_pipeline_batch_files_pending")[""] === 1);

    const kafka = await kafkaFacts(topic, group);
    expect(Object.values(kafka.lag).every((n) => n > 0)).toBe(true);
    expect(values(page, "sales_pipeline_kafka_consumer_lag", "partition")).toEqual(kafka.lag);
    expect(values(page, "sales_pipeline_kafka_partition_records", "partition")).toEqual(kafka.records);
    expect(Object.values(kafka.lag).reduce((a, b) => a + b)).toBe(40);
    const lagFamily = page.find((f) => f.name === "sales_pipeline_kafka_consumer_lag")!;
    expect(lagFamily.samples.map((s) => s.labels)).toEqual(["0", "1"].map((partition) => ({ topic, partition, group })));

    const ledger = await ledgerFacts(db);
    expect({ inserted: ledger.inserted, duplicates: ledger.duplicates, rejected: ledger.rejected }).toEqual({ inserted: 39, duplicates: 40, rejected: 1 });
    expect(values(page, "sales_pipeline_rows_loaded_total")).toEqual({ "": ledger.inserted });
    expect(values(page, "sales_pipeline_rows_duplicate_total")).toEqual({ "": ledger.duplicates });
    expect(values(page, "sales_pipeline_rows_rejected_total")).toEqual({ "": ledger.rejected });
    expect(values(page, "sales_pipeline_batch_files_loaded_total")).toEqual({ "": ledger.files });
    expect(values(page, "sales_pipeline_batch_files_failed")).toEqual({ "": 1 });
    // PostgreSQL keeps microseconds, JavaScript's Date milliseconds.
    expect(Math.abs((values(page, "sales_pipeline_last_load_timestamp_seconds")[""] as number) - ledger.last)).toBeLessThan(0.001);
    expect(up(page)).toEqual({ producer: 1, consumer: 0, loader: 1 });

    // make status prints the same facts.
    const status = (await runOk("status.ts", [], env)).stdout;
    expect(status).toContain(`  lag by partition: p0 ${kafka.lag[0]}, p1 ${kafka.lag[1]}\n`);
    expect(status).toContain(`  ledger: inserted ${ledger.inserted}, duplicates ${ledger.duplicates}, rejected ${ledger.rejected}; loader sessions 0\n`);
    expect(status).toContain(`batches:    ${names.length + 1} files in ${env.BATCHES_DIR}/, 1 not loaded yet, 1 set aside in failed/\n`);
    expect(status).toContain(`alive:      producer yes: 120 records appended to ${topic} in the last 60 s\n`);
    expect(status).toContain(`            consumer no: group ${group} has no member (Empty)\n`);
    expect(status).toMatch(/\n {12}loader yes: no session named load, last load [\d.]+s ago\n/);
  });

  test("a dashboard that can read neither Kafka nor PostgreSQL says so, and leaves out what it cannot know", async () => {
    const page = await scrape(blind.url);
    expect(values(page, "sales_pipeline_read_success", "source")).toEqual({ kafka: 0, postgresql: 0 });
    for (const name of ["sales_pipeline_up", "sales_pipeline_kafka_consumer_lag", "sales_pipeline_rows_loaded_total", "sales_pipeline_batch_files_pending"]) {
      expect(values(page, name)).toEqual({});
    }
    expect(values(page, "sales_pipeline_batch_files_failed")).toEqual({ "": 0 });
    const text = await (await fetch(blind.url)).text();
    expect(text).toContain("# kafka: ");
    expect(text).toContain("# postgresql: PostgreSQL at 127.0.0.1:1/sales is unreachable");
  });
});

describe("pipelineFamilies", () => {
  test("names every family with the common prefix, and a HELP for each", () => {
    const health: PipelineHealth = {
      at: new Date(0),
      kafka: { ok: false, error: "away" },
      database: { ok: false, error: "away" },
      files: { dir: "batches", total: 0, pending: 0, failed: 0, ledgerError: "away" },
      alive: judgeAlive({ ok: false, error: "away" }, { ok: false, error: "away" }, 0),
    };
    for (const family of pipelineFamilies(health)) {
      expect(family.name).toStartWith("sales_pipeline_");
      expect(family.help.length).toBeGreaterThan(10);
    }
  });
});
