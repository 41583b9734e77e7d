// Kafka's own edges, against a broker of its own and the real database: offsets the log no longer has when the
// group reaches them (deleteRecords, as retention does it), a topic deleted and re-created under a running
// consumer, partitions added mid-stream under --until-idle, headers and values no producer of ours writes (no
// value, not UTF-8, huge), messages with thousands of distinct keys, and headerless messages at offsets a
// re-created topic repeats. Beside each fault, kcat or Kafka's own tools go through the same fault as the
// control, showing it was real. Each case ends with every record accounted for: in orders, in rejected_rows,
// or in lost_offsets.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readConfig } from "../scripts/lib/config.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { readCompose } from "../scripts/lib/stack/compose.ts";
import { kafkaJars } from "../scripts/lib/stack/kafka.ts";
import {
  createTestDatabase,
  groupLag,
  ROOT,
  runOk,
  runScript,
  startPrivateKafka,
  startScript,
  superstoreRows,
  tempDir,
  uniqueName,
  waitFor,
  withAdmin,
  type PrivateKafka,
  type RunResult,
  type TestDatabase,
} from "./helpers.ts";

const missing = ["java", "mvn", "kcat"].filter((tool) => !Bun.which(tool));
if (missing.length > 0) {
  const why = `the Kafka edge tests start a broker of their own and compare with kcat, and need ${missing.join(", ")}`;
  if (readConfig().requireAllTests) throw new Error(why);
  console.warn(`skipping: ${why}`);
}

/** Runs kcat with `args` (and `input` on its standard input); its standard output, or an error with its stderr. */
async function kcat(args: string[], input?: string | Uint8Array): Promise<string> {
  const child = Bun.spawn(["kcat", ...args], { stdin: input === undefined ? "ignore" : "pipe", stdout: "pipe", stderr: "pipe" });
  if (input !== undefined) {
    const stdin = child.stdin as import("bun").FileSink;
    stdin.write(input);
    await stdin.end();
  }
  const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
  const [out, err, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearTimeout(timer);
  if (code !== 0) throw new Error(`kcat ${args.join(" ")} exited ${code}: ${err}`);
  return out;
}

/** Peak resident memory (VmHWM, MB) of a script run to its end, and its result. */
async function measured(script: string, args: string[], env: Record<string, string>): Promise<RunResult & { peakMb: number }> {
  const child = Bun.spawn([process.execPath, join("scripts", script), ...args], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: "warn", ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  let peakKb = 0;
  const sample = () => {
    const status = existsSync(`/proc/${child.pid}/status`) ? readFileSync(`/proc/${child.pid}/status`, "utf8") : "";
    peakKb = Math.max(peakKb, Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0));
  };
  const sampler = setInterval(sample, 20);
  const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  clearInterval(sampler);
  return { code, stdout, stderr, peakMb: Math.round(peakKb / 1024) };
}

describe.skipIf(missing.length > 0)("Kafka's own edges", () => {
  let tmp: ReturnType<typeof tempDir>;
  let kafka: PrivateKafka;
  let db: TestDatabase;

  beforeAll(async () => {
    tmp = tempDir("sales-edges-");
    mkdirSync(join(tmp.path, "kafka"));
    [kafka, db] = await Promise.all([startPrivateKafka(join(tmp.path, "kafka")), createTestDatabase("edges")]);
  });

  afterAll(async () => {
    await kafka?.stop();
    await db?.drop();
    tmp?.remove();
  });

  interface Case {
    readonly topic: string;
    readonly group: string;
    readonly dir: string;
    readonly env: Record<string, string>;
    /** the case's rows: a Superstore file and its source name (orders.source_file) */
    readonly file: string;
    readonly source: string;
  }

  /** A topic (created here with `partitions`), group, batch folder and source file of its own; the database is shared. */
  async function newCase(rows: number, partitions = 1, topicConfig: Record<string, string> = {}): Promise<Case> {
    const topic = uniqueName("edge");
    const dir = join(tmp.path, topic);
    mkdirSync(dir);
    const file = join(dir, `${topic}.csv`);
    if (rows > 0) await runOk("make_data.ts", ["--out", file, "--rows", String(rows)], {});
    await withAdmin(kafka.brokers, (admin) =>
      admin.createTopics({ topics: [{ topic, numPartitions: partitions, configEntries: Object.entries(topicConfig).map(([name, value]) => ({ name, value })) }] }),
    );
    const env = { KAFKA_BROKERS: kafka.brokers, KAFKA_TOPIC: topic, KAFKA_GROUP_ID: `${topic}-g`, BATCHES_DIR: join(dir, "batches"), DATABASE_URL: db.url };
    // The source's name is the file's (unique per case): a longer one would make the producer's sends of 2,000
    // rows outgrow the broker's 1 MB, since it budgets only their values.
    return { topic, group: env.KAFKA_GROUP_ID, dir, env, file, source: `${topic}.csv` };
  }

  /** Sends lines `from`..`to` of the case's file (line 1 is the header) through our producer. */
  const produce = (c: Case, from: number, to: number) =>
    runOk("producer.ts", ["--file", c.file, "--rate", "max", "--source", c.source, "--from-line", String(from), "--limit", String(to - from + 1)], c.env);

  /** Source lines of the case in orders, and in open rejections. */
  async function landed(c: Case): Promise<{ orders: number[]; rejected: number[] }> {
    const orders = await db.sql<{ line: number }[]>`select source_line as line from orders where source_file = ${c.source} order by 1`;
    const rejected = await db.sql<{ line: number }[]>`
      select source_line as line from rejected_rows where source_file = ${c.source} and status = 'open' order by 1
    `;
    return { orders: orders.map((r) => r.line), rejected: rejected.map((r) => r.line) };
  }

  async function lostOffsets(c: Case) {
    return db.sql<{ partition: number; first: string; last: string | null; records: string | null; kind: string }[]>`
      select kafka_partition as partition, first_offset::text as first, last_offset::text as last, records::text as records, kind
      from lost_offsets where kafka_topic = ${c.topic} order by kafka_partition, first_offset
    `.then((rows) => rows.map((r) => ({ ...r })));
  }

  const committed = (c: Case) =>
    withAdmin(kafka.brokers, async (admin) => (await admin.fetchOffsets({ groupId: c.group, topics: [c.topic] }))[0]!.partitions.map((p) => p.offset));

  const deleteRecordsBefore = (c: Case, partition: number, offset: number) =>
    withAdmin(kafka.brokers, async (admin) => {
      await admin.fetchTopicOffsets(c.topic); // kafkajs needs the topic's metadata loaded first
      await admin.deleteTopicRecords({ topic: c.topic, partitions: [{ partition, offset: String(offset) }] });
    });

  /** kcat reading the whole topic from its start: "partition offset" of every message. */
  const kcatOffsets = async (topic: string) =>
    (await kcat(["-C", "-b", kafka.brokers, "-t", topic, "-e", "-q", "-f", "%p %o\n"])).split("\n").filter((l) => l !== "");

  const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

  describe("offsets the log no longer has", () => {
    test("deleted before a stopped group reached them: the consumer stops naming them until --allow-gaps records the range", async () => {
      const c = await newCase(600);
      await produce(c, 2, 201); // offsets 0-199
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
      expect(await committed(c)).toEqual(["200"]);
      await produce(c, 202, 601); // offsets 200-599
      await deleteRecordsBefore(c, 0, 400); // as retention would: the log now starts at 400

      // The control: a standard client reading the whole topic finds it starts at 400.
      const offsets = await kcatOffsets(c.topic);
      expect([offsets.length, offsets[0]]).toEqual([200, "0 400"]);

      // Without --allow-gaps: exit 1 naming topic, partition and offsets, every time, and nothing committed past them.
      for (let run = 1; run <= 2; run++) {
        const stopped = await runScript("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
        expect(stopped.code, stopped.stderr).toBe(1);
        expect(stopped.stderr).toContain(`offsets 200-399 of topic ${c.topic} partition 0 were deleted before group ${c.group} read them`);
        expect(stopped.stderr).toContain("run again with --allow-gaps");
        expect(await committed(c)).toEqual(["200"]);
      }
      const gapFiles = readdirSync(c.env.BATCHES_DIR!).filter((f) => f.includes("_lost_"));
      expect(gapFiles).toEqual([expect.stringMatching(/_p0_000000000200-000000000399_lost_[0-9a-f]{12}\.csv$/)]);

      const goingOn = await runScript("consumer_batch_to_csv.ts", ["--until-idle", "2", "--allow-gaps"], { ...c.env, LOG_LEVEL: "info" });
      expect(goingOn.code, goingOn.stderr).toBe(0);
      expect(goingOn.stderr).toContain("going on (--allow-gaps)");
      expect(await committed(c)).toEqual(["600"]);

      const load = await runOk("load.ts", [], { ...c.env, LOG_LEVEL: "info" });
      expect(load.stderr).toContain("lost_offsets=1");
      expect(await landed(c)).toEqual({ orders: [...range(2, 201), ...range(402, 601)], rejected: [] });
      expect(await lostOffsets(c)).toEqual([{ partition: 0, first: "200", last: "399", records: "200", kind: "deleted" }]);
      const status = await runOk("status.ts", [], c.env);
      expect(status.stdout).toContain("lost offsets 1 range, 200 records");
    });

    test("deleted under a running consumer (stopped within its session): it stops at the gap, and the next run stops there too", async () => {
      const c = await newCase(6201);
      await produce(c, 2, 201);
      const consumer = startScript("consumer_batch_to_csv.ts", ["--quiet", "1"], c.env);
      await waitFor("the first 200 offsets committed", async () => (await committed(c))[0] === "200", 60_000);
      // Frozen for a few seconds (less than its 10 s session: it stays in the group) while 6,000 rows arrive and
      // the log is cut at 4000. A fetch it had in flight may still bring it the first of them (at most 1 MB of
      // a partition, about 2,000 rows): the gap starts where its position then is.
      consumer.child.kill("SIGSTOP");
      try {
        await produce(c, 202, 6201); // offsets 200-6199
        await deleteRecordsBefore(c, 0, 4000);
      } finally {
        consumer.child.kill("SIGCONT");
      }
      // kafkajs, asked for an offset before 4000, resets to the earliest one and commits it; the consumer
      // notices the jump, puts the group back and stops.
      const stopped = await consumer.finish(60_000);
      expect(stopped.code, stopped.stderr).toBe(1);
      const first = new RegExp(`offsets (\\d+)-3999 of topic ${c.topic} partition 0 were deleted before group ${c.group} read them`).exec(stopped.stderr)?.[1] ?? "none";
      expect(Number(first)).toBeGreaterThanOrEqual(200);
      expect(await committed(c)).toEqual([first]);

      const again = await runScript("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
      expect(again.code, again.stderr).toBe(1);
      expect(again.stderr).toContain(`offsets ${first}-3999 of topic ${c.topic} partition 0 were deleted`);
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", "--allow-gaps"], c.env);
      await runOk("load.ts", [], c.env);
      const at = Number(first);
      expect(await landed(c)).toEqual({ orders: [...range(2, at + 1), ...range(4002, 6201)], rejected: [] });
      expect(await lostOffsets(c)).toEqual([{ partition: 0, first: String(at), last: "3999", records: String(4000 - at), kind: "deleted" }]);
      expect(await groupLag(kafka.brokers, c.group, c.topic)).toBe(0);
    });
  });

  /** Deletes the topic, waits until the broker has forgotten it, and creates it again with `partitions`. */
  async function recreate(topic: string, partitions = 1): Promise<void> {
    await withAdmin(kafka.brokers, (admin) => admin.deleteTopics({ topics: [topic] }));
    await waitFor(`${topic} to be deleted`, () => withAdmin(kafka.brokers, async (admin) => !(await admin.listTopics()).includes(topic)), 60_000, 200);
    // A deletion still in progress refuses the name for a moment: try until the broker takes it.
    await waitFor(
      `${topic} to be created again`,
      () => withAdmin(kafka.brokers, (admin) => admin.createTopics({ topics: [{ topic, numPartitions: partitions }], waitForLeaders: true }).then(() => true)),
      60_000,
      200,
    );
  }

  describe("a topic deleted and re-created under the same name", () => {
    type Way = "at once" | "frozen" | "after a reset";
    /**
     * One round: 300 rows read and committed, then the topic re-created and 600 other rows written to it (by kcat,
     * without source headers) while the consumer runs. The three ways kafkajs meets the new topic: written at
     * once, its next fetch at the old position 300 finds records there and it reads on, skipping 0-299 (what
     * kafkajs alone does); frozen meanwhile (within its session), its fetch in flight fails and it rejoins;
     * written only after it has fetched from the empty new topic, it finds 300 out of range and resets.
     */
    async function round(way: Way, args: string[]): Promise<{ c: Case; consumer: ReturnType<typeof startScript> }> {
      const c = await newCase(301);
      await produce(c, 2, 301); // offsets 0-299 of the old topic
      const consumer = startScript("consumer_batch_to_csv.ts", ["--quiet", "1", ...args], { ...c.env, LOG_LEVEL: "info" });
      await waitFor("offsets 0-299 committed", async () => (await committed(c))[0] === "300", 60_000);
      const rows = await jsonRows(600, 7001);
      if (way === "frozen") consumer.child.kill("SIGSTOP");
      try {
        await recreate(c.topic);
        if (way === "after a reset") await consumer.waitForOutput(/Offset out of range/, 60_000);
        await kcat(["-P", "-b", kafka.brokers, "-t", c.topic], `${rows.join("\n")}\n`); // offsets 0-599 of the new topic
      } finally {
        if (way === "frozen") consumer.child.kill("SIGCONT");
      }
      // The control: the new topic holds offsets 0-599; a reader going on at the old position 300 gets only half.
      expect(await kcatOffsets(c.topic)).toEqual(range(0, 599).map((o) => `0 ${o}`));
      const onward = await kcat(["-C", "-b", kafka.brokers, "-t", c.topic, "-o", "300", "-e", "-q", "-f", "%o\n"]);
      expect(onward.split("\n").filter((l) => l !== "").length).toBe(300);
      return { c, consumer };
    }

    /** Row IDs of the new topic's rows in orders (they have no source headers). */
    const newTopicRows = (c: Case) =>
      db.sql<{ id: number }[]>`
        select source_row_id::int as id from orders where kafka_topic = ${c.topic} and source_file like 'kafka:%' order by 1
      `.then((rows) => rows.map((r) => r.id));

    test("with --allow-gaps, six rounds, each way twice: every row of the new topic is read, and the re-creation is recorded", async () => {
      const ways: Way[] = ["at once", "frozen", "after a reset", "at once", "frozen", "after a reset"];
      const seen: string[] = [];
      for (const [n, way] of ways.entries()) {
        const { c, consumer } = await round(way, ["--allow-gaps"]);
        await waitFor(() => `round ${n + 1} (${way}): the new topic read to its end\n${consumer.output()}`, async () => (await committed(c))[0] === "600", 90_000);
        consumer.child.kill("SIGTERM");
        const stopped = await consumer.finish(30_000);
        expect(stopped.code, stopped.stderr).toBe(0);
        seen.push(`${way}: ${/\(([^)]*)\): records of the old log/.exec(stopped.stderr)?.[1] ?? "not noticed"}`);
        await runOk("load.ts", [], c.env);
        expect(await landed(c)).toEqual({ orders: range(2, 301), rejected: [] });
        expect(await newTopicRows(c)).toEqual(range(7001, 7600));
        expect(await lostOffsets(c)).toEqual([{ partition: 0, first: "300", last: null, records: null, kind: "recreated" }]);
      }
      console.info(`re-creation noticed by: ${seen.join("; ")}`);
    });

    test("without --allow-gaps the consumer stops naming the topic; the next run reads the new topic from its start", async () => {
      const { c, consumer } = await round("at once", []);
      const stopped = await consumer.finish(90_000);
      expect(stopped.code, stopped.stderr).toBe(1);
      expect(stopped.stderr).toContain(`topic ${c.topic} was deleted and re-created, or its log truncated, while group ${c.group} read partition 0`);
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
      expect(await committed(c)).toEqual(["600"]);
      await runOk("load.ts", [], c.env);
      expect(await landed(c)).toEqual({ orders: range(2, 301), rejected: [] });
      expect(await newTopicRows(c)).toEqual(range(7001, 7600));
      expect(await lostOffsets(c)).toEqual([{ partition: 0, first: "300", last: null, records: null, kind: "recreated" }]);
    });

    test("headerless messages at the offsets a re-created topic repeats are rejections of their own; a replay adds none", async () => {
      const c = await newCase(0);
      const rejections = () =>
        db.sql<{ raw: string }[]>`select raw_text as raw from rejected_rows where kafka_topic = ${c.topic} and status = 'open' order by raw_text`.then((r) =>
          r.map((x) => x.raw),
        );
      const send = (lines: string[]) => kcat(["-P", "-b", kafka.brokers, "-t", c.topic], `${lines.join("\n")}\n`);
      const first = range(1, 5).map((i) => `first life ${i}`);
      const second = range(1, 5).map((i) => `second life ${i}`);
      await send(first);
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
      await runOk("load.ts", [], c.env);
      expect(await rejections()).toEqual(first);

      await recreate(c.topic);
      await send(second);
      // The control: the new topic repeats offsets 0-4.
      expect(await kcatOffsets(c.topic)).toEqual(range(0, 4).map((o) => `0 ${o}`));
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
      await runOk("load.ts", [], c.env);
      expect(await rejections()).toEqual([...first, ...second]);

      // Files of 3 records: other files than before, which the loader reads and judges.
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2", "--from-beginning", "--group", `${c.group}-replay`, "--batch-size", "3"], c.env);
      const replay = await runOk("load.ts", [], { ...c.env, LOG_LEVEL: "info" });
      expect(replay.stderr).toContain("inserted=0 duplicates=5 rejected=0");
      expect(await rejections()).toEqual([...first, ...second]);
    });
  });

  test("partitions added mid-stream: --until-idle goes on until every partition is read to its end", async () => {
    const c = await newCase(300);
    await produce(c, 2, 101);
    const consumer = startScript("consumer_batch_to_csv.ts", ["--until-idle", "5"], { ...c.env, LOG_LEVEL: "info" });
    await waitFor("the first 100 rows committed", async () => (await committed(c))[0] === "100", 60_000);
    // Frozen (within its session) while the topic gets two partitions and 200 rows: when it wakes, it has been
    // quiet for longer than --until-idle, and its picture of the topic still has one partition.
    consumer.child.kill("SIGSTOP");
    try {
      await withAdmin(kafka.brokers, (admin) => admin.createPartitions({ topicPartitions: [{ topic: c.topic, count: 3 }] }));
      await produce(c, 102, 301);
    } finally {
      consumer.child.kill("SIGCONT");
    }
    // The control: kcat finds rows on the new partitions.
    const perPartition = Object.groupBy(await kcatOffsets(c.topic), (line) => line.split(" ")[0]!);
    expect(Object.keys(perPartition).sort()).toEqual(["0", "1", "2"]);
    expect(Object.values(perPartition).reduce((n, lines) => n + lines!.length, 0)).toBe(300);

    const done = await consumer.finish(90_000);
    expect(done.code, done.stderr).toBe(0);
    expect(done.stderr).toContain("every partition read to its end (--until-idle)");
    expect(done.stderr).toMatch(/done: received=\d+ .*every_partition_read=yes/);
    expect(await groupLag(kafka.brokers, c.group, c.topic)).toBe(0);
    await runOk("load.ts", [], c.env);
    expect(await landed(c)).toEqual({ orders: range(2, 301), rejected: [] });
  });

  /** The Kaggle header, for messages written by hand. */
  const COLUMNS = [
    "Row ID", "Order ID", "Order Date", "Ship Date", "Ship Mode", "Customer ID", "Customer Name", "Segment", "Country",
    "City", "State", "Postal Code", "Region", "Product ID", "Category", "Sub-Category", "Product Name", "Sales",
    "Quantity", "Discount", "Profit",
  ];

  /** Superstore rows as JSON message values, as our producer writes them, with Row IDs from `firstId`. */
  async function jsonRows(count: number, firstId: number, more: (i: number) => Record<string, string> = () => ({})): Promise<string[]> {
    return (await superstoreRows()).slice(0, count).map((r, i) => {
      const row: Record<string, string> = {};
      for (const column of COLUMNS) row[column] = r[column]!;
      row["Row ID"] = String(firstId + i);
      return JSON.stringify({ ...row, ...more(i) });
    });
  }

  test("headers and values no producer of ours writes become rejections; the rows around them load", async () => {
    const c = await newCase(101, 1, { "max.message.bytes": "3000000" });
    await produce(c, 2, 51);
    const [a, b, cc, d, e, h] = await jsonRows(6, 9001);
    const send = (args: string[], input: string | Uint8Array) =>
      kcat(["-P", "-b", kafka.brokers, "-t", c.topic, "-X", "message.max.bytes=3000000", ...args], input);
    await send(["-H", "source_file", "-H", "source_line=9001"], `${a}\n`); // a header without a value
    // Kafka's own console producer writes a header (or a value) without a value for its null marker.
    const libs = kafkaJars(readCompose(readFileSync(join(ROOT, "docker-compose.yml"), "utf8")).kafkaVersion, createLogger("test", "silent"));
    const consoleProducer = (line: string) => {
      const args = ["--bootstrap-server", kafka.brokers, "--topic", c.topic, "--property", "parse.headers=true", "--property", "parse.key=true"];
      const run = Bun.spawnSync(["java", "-cp", join(libs, "*"), "org.apache.kafka.tools.ConsoleProducer", ...args, "--property", "null.marker=NULL"], {
        stdin: Buffer.from(`${line}\n`),
      });
      expect(run.exitCode).toBe(0);
    };
    consoleProducer(`source_file:NULL,source_line:NULL\tkey-b\t${b}`);
    // A header that is not UTF-8: through bash, since arguments from here are UTF-8 text.
    const latin = Bun.spawnSync(["bash", "-c", `kcat -P -b ${kafka.brokers} -t ${c.topic} -H $'source_file=\\xff\\xfe.csv'`], { stdin: Buffer.from(`${cc}\n`) });
    expect(latin.exitCode).toBe(0);
    await send(["-H", `source_line=${"9".repeat(70_000)}`], `${d}\n`); // 70 KB
    await send([], Buffer.concat([Buffer.from(e!.replace("}", ',"Note":"')), Buffer.from([0xe9, 0xff]), Buffer.from('"}\n')])); // a value not UTF-8
    const big = `{"Row ID":"9006","Notes":"${"x".repeat(1_500_000)}"}`;
    await send([], `${big}\n`); // 1.5 MB
    await send(["-H", "parse_error"], "just some words\n");
    await send(["-H", "source_file=twice-a.csv", "-H", "source_file=twice-b.csv", "-H", "source_line=7"], `${h}\n`);
    consoleProducer("source_file:nothing.csv\tkey-z\tNULL"); // no value at all
    await produce(c, 52, 101);

    // The control: kcat shows the headers as written, values missing where there are none.
    const written = (await kcat(["-C", "-b", kafka.brokers, "-t", c.topic, "-e", "-q", "-J", "-X", "fetch.message.max.bytes=4000000"]))
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as { headers?: (string | null)[]; payload: string | null });
    expect(written).toHaveLength(109);
    expect(written[50]!.headers).toEqual(["source_file", null, "source_line", "9001"]);
    expect(written[51]!.headers).toEqual(["source_file", null, "source_line", null]);
    expect(written[58]!.payload).toBeNull();

    const consumed = await runScript("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
    expect(consumed.code, consumed.stderr).toBe(0);
    expect(consumed.stderr).not.toMatch(/TypeError|is not an object|undefined is not/);
    await runOk("load.ts", [], c.env);
    expect(await landed(c)).toEqual({ orders: range(2, 101), rejected: [] });
    const rows = await db.sql<{ place: string; offset: string; file: string; reason: string | null }[]>`
      select 'orders' as place, kafka_offset::text as offset, source_file as file, null as reason from orders
      where kafka_topic = ${c.topic} and source_file <> ${c.source}
      union all
      select 'rejected', kafka_offset::text, source_file, reason from rejected_rows where kafka_topic = ${c.topic} and status = 'open'
    `;
    rows.sort((x, y) => Number(x.offset) - Number(y.offset));
    expect(rows.map((r) => [r.offset, r.place, r.place === "orders" ? r.file.replace(/#[0-9a-f]{12}$/, "#hash") : r.reason])).toEqual([
      ["50", "orders", `kafka:${c.topic}/0#hash`],
      ["51", "orders", `kafka:${c.topic}/0#hash`],
      ["52", "rejected", "line could not be split into fields: header source_file is not UTF-8 text"],
      ["53", "rejected", "line could not be split into fields: header source_line is 70000 bytes, more than 65536"],
      ["54", "rejected", "line could not be split into fields: message value is not UTF-8 text"],
      ["55", "rejected", `line could not be split into fields: message value is ${big.length} bytes, more than 1048576; its first 65536 bytes are kept`],
      ["56", "rejected", "line could not be split into fields: message value is not a JSON object"],
      ["57", "orders", "twice-a.csv"],
      ["58", "rejected", "line could not be split into fields: message has no value"],
    ]);
  });

  test("messages with thousands of distinct keys: batch files stay narrow, every row loads, memory stays bounded", async () => {
    const c = await newCase(101);
    await produce(c, 2, 51);
    // 100 rows, each with 1,500 keys of its own (150,000 distinct keys, about 4.8 MB): Superstore fields and more.
    const wide = await jsonRows(100, 5001, (i) => Object.fromEntries(range(1, 1500).map((k) => [`m${i}_k${k}`, "x".repeat(16)])));
    await kcat(["-P", "-b", kafka.brokers, "-t", c.topic], `${wide.join("\n")}\n`);
    await produce(c, 52, 101);
    // The control: a standard client reads the same messages.
    const bytes = (await kcat(["-C", "-b", kafka.brokers, "-t", c.topic, "-e", "-q", "-f", "%S\n"])).split("\n").filter((l) => l !== "").map(Number);
    const megabytes = bytes.reduce((n, b) => n + b, 0) / 1e6;
    expect(megabytes).toBeGreaterThan(4.5);

    const consumer = await measured("consumer_batch_to_csv.ts", ["--until-idle", "2"], c.env);
    expect(consumer.code, consumer.stderr).toBe(0);
    const files = readdirSync(c.env.BATCHES_DIR!).filter((f) => f.endsWith(".csv"));
    const widths = files.map((f) => readFileSync(join(c.env.BATCHES_DIR!, f), "utf8").split("\n", 1)[0]!.split(",").length);
    expect(Math.max(...widths)).toBeLessThanOrEqual(110);
    const loader = await measured("load.ts", [], c.env);
    expect(loader.code, loader.stderr).toBe(0);
    console.info(`${megabytes.toFixed(1)} MB of messages, files at most ${Math.max(...widths)} columns: peak RSS consumer ${consumer.peakMb} MB, loader ${loader.peakMb} MB`);

    expect(await landed(c)).toEqual({ orders: range(2, 101), rejected: [] });
    const [extra] = await db.sql<{ rows: number; keys: number }[]>`
      select count(*)::int as rows, min((select count(*) from jsonb_object_keys(extra)))::int as keys
      from orders where kafka_topic = ${c.topic} and source_file <> ${c.source}
    `;
    expect(extra).toEqual({ rows: 100, keys: 1500 });
  });
});
