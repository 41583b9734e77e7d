// Exactly once on a three-broker cluster: leaders that move while rows stream. A cluster of its own (three KRaft
// nodes with the compose file's cluster settings: replication factor 3, min.insync.replicas 2, no unclean
// election) is started here so its nodes can be killed, paused and restarted. Every fault runs with a control
// beside it: kcat (librdkafka) producing the same rows through the same fault, so a pass means the pipeline
// held, not that the fault missed. `make test` runs each case once with a few thousand rows; `make chaos` runs
// them CHAOS_RUNS times with CHAOS_ROWS rows. The dashboard's /metrics is scraped through a leader's stop and
// start too: with two nodes of three up it still reads Kafka, and no scrape shows a wrong lag.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import type * as KafkaJS from "kafkajs";
import { readConfig } from "../scripts/lib/config.ts";
import { createKafka, ensureTopic, keyPartitioner } from "../scripts/lib/kafka.ts";
import { pidAlive } from "../scripts/lib/stack/process.ts";
import { createLogger } from "../scripts/lib/log.ts";
import {
  BASE,
  clusterPrerequisites,
  createDatabaseOn,
  createTestDatabase,
  freePorts,
  groupLag,
  runOk,
  startScript,
  type Running,
  type TestDatabase,
  kcatSend,
  partitionLeaders,
  startPrivateCluster,
  tempDir,
  topicKeys,
  topicSize,
  uniqueName,
  waitFor,
  type PrivateCluster,
} from "./helpers.ts";

const require = createRequire(import.meta.url);
const missing = clusterPrerequisites();
const { chaosRuns: RUNS, chaosRows: ROWS } = readConfig();
/** Rows per second: at least ten seconds of stream, so a fault lands in the middle of it; at most 2,000/s. */
const RATE = Math.max(100, Math.min(2000, Math.round(ROWS / 10)));

/** kafkajs 2.2.4 as published: a module graph of its own, loaded aside from the patched one and put back. */
function publishedKafkajs(): typeof KafkaJS {
  const isKafkajs = (path: string) => path.includes("/node_modules/kafkajs/");
  const saved = Object.entries(require.cache).filter(([path]) => isKafkajs(path));
  for (const [path] of saved) delete require.cache[path];
  try {
    return require("kafkajs") as typeof KafkaJS;
  } finally {
    for (const path of Object.keys(require.cache)) if (isKafkajs(path)) delete require.cache[path];
    for (const [path, module] of saved) require.cache[path] = module;
  }
}

describe.skipIf(missing.length > 0)("on three brokers", () => {
  let tmp: ReturnType<typeof tempDir>;
  let cluster: PrivateCluster;

  beforeAll(async () => {
    tmp = tempDir("sales-leader-");
    cluster = await startPrivateCluster(tmp.path);
  });

  afterAll(async () => {
    await cluster?.stopAll();
    tmp?.remove();
  });

  // Partition 0 is led by node 1, partition 1 by node 2 with node 1 next in line. Node 2 hangs (SIGSTOP) while
  // a send is in flight: node 1 writes partition 0 and answers; the cluster fences node 2 and makes node 1
  // leader of partition 1; then node 2 dies (SIGKILL) and the request waiting on it fails. The retry must
  // send partition 1 to node 1, a broker that has already answered this send. kafkajs as published does not.
  test("the partition is sent again to its new leader: published kafkajs loses it, kcat and ours keep every row", async () => {
    const node1 = cluster.brokers.split(",")[0]!;
    const topics = { published: uniqueName("moved_published"), ours: uniqueName("moved_ours"), kcat: uniqueName("moved_kcat") };
    await createPinnedTopics(node1, Object.values(topics));
    const rows = (tag: string) => Array.from({ length: 100 }, (_, i) => ({ key: `${tag}:${i}`, value: `${tag} row ${i}` }));

    const published = publishedProducer(cluster.brokers);
    const ours = createKafka(readConfig({ KAFKA_BROKERS: cluster.brokers }), createLogger("test", "silent")).producer({
      createPartitioner: keyPartitioner,
      idempotent: true,
      maxInFlightRequests: 1,
    });
    await Promise.all([published.producer.connect(), ours.connect()]);
    try {
      await published.producer.send({ topic: topics.published, acks: -1, messages: rows("a") });
      await ours.send({ topic: topics.ours, acks: -1, messages: rows("a") });
      await kcatSend(cluster.brokers, topics.kcat, rows("a"));

      cluster.pause(2);
      const answeredBefore = published.answersFrom(node1);
      const sends = [
        published.producer.send({ topic: topics.published, acks: -1, messages: rows("b") }),
        ours.send({ topic: topics.ours, acks: -1, messages: rows("b") }),
      ];
      const kcat = kcatSend(cluster.brokers, topics.kcat, rows("b"));
      await waitFor(
        "node 1 to lead partition 1 and to have answered the published producer's second send",
        async () =>
          published.answersFrom(node1) > answeredBefore &&
          (await partitionLeaders(node1, Object.values(topics))).every((leaders) => leaders[1] === 1),
        90_000,
        250,
      );
      cluster.kill(2);
      await Promise.all(sends); // both resolve: each says every message was sent
      await kcat;

      const kept = async (topic: string) => new Set(await topicKeys(node1, topic)).size;
      expect({ published: await kept(topics.published), ours: await kept(topics.ours), kcat: await kept(topics.kcat) }).toEqual({
        published: 200 - rows("b").filter((m) => partitionOf(m.key) === 1).length, // the fault was real
        ours: 200,
        kcat: 200,
      });
      expect(await topicKeys(node1, topics.ours)).toHaveLength(200); // and none twice
    } finally {
      await Promise.all([published.producer.disconnect(), ours.disconnect()]);
      await cluster.start(2);
      await cluster.waitInSync();
    }
  });

  /** A topic of six partitions, its group, a database, and three "hosts": each a batch folder of its own. */
  async function stream(name: string): Promise<Stream> {
    const id = uniqueName(name);
    const dir = join(tmp.path, id);
    mkdirSync(dir);
    const db = await createDatabaseOn(BASE.database, "cluster");
    const file = join(dir, "input.csv");
    // The sample holds 9,994 rows; more are copies of it with fresh Row IDs (the producer stops at ROWS).
    const size = ROWS <= 9994 ? ["--rows", String(ROWS)] : ["--copies", String(Math.ceil(ROWS / 9994))];
    await runOk("make_data.ts", ["--out", file, ...size], {});
    const env = { KAFKA_BROKERS: cluster.brokers, KAFKA_TOPIC: id, KAFKA_GROUP_ID: `${id}-g`, KAFKA_PARTITIONS: "6", DATABASE_URL: db.url };
    const hosts = [1, 2, 3].map((host) => join(dir, `host-${host}`));
    return { id, env, db, file, hosts, kcatTopic: `${id}-kcat`, consumers: [], loaders: [] };
  }

  /** On each host, a consumer writing its batch folder and a loader watching it, as three machines would run them. */
  function startHosts(s: Stream): void {
    for (const dir of s.hosts) {
      s.consumers.push(startScript("consumer_batch_to_csv.ts", ["--quiet", "2"], { ...s.env, BATCHES_DIR: dir }));
      s.loaders.push(startScript("load.ts", ["--watch"], { ...s.env, BATCHES_DIR: dir }));
    }
  }

  /** Our producer at RATE rows/s, and beside it kcat sending the same rows to a topic of its own, at the same pace. */
  function startProducers(s: Stream): { ours: Running; kcat: Promise<void> } {
    const ours = startScript("producer.ts", ["--file", s.file, "--rate", String(RATE), "--limit", String(ROWS)], { ...s.env, LOG_LEVEL: "info" });
    const lines = readFileSync(s.file, "latin1").split("\r\n").slice(1, ROWS + 1);
    return { ours, kcat: kcatStream(s.kcatTopic, lines) };
  }

  /** kcat through the same fault: a chunk of lines every tenth of the stream, each chunk delivered before the next. */
  async function kcatStream(topic: string, lines: string[]): Promise<void> {
    await createTopic(topic);
    const chunk = Math.ceil(lines.length / 10);
    for (let from = 0; from < lines.length; from += chunk) {
      const started = performance.now();
      await kcatSend(cluster.brokers, topic, lines.slice(from, from + chunk).map((value, i) => ({ key: `line:${from + i + 2}`, value })));
      await waitFor("the next kcat chunk's turn", () => performance.now() - started >= (chunk * 1000) / RATE, 60_000, 20);
    }
  }

  async function createTopic(topic: string): Promise<void> {
    const admin = createKafka(readConfig({ KAFKA_BROKERS: cluster.brokers }), createLogger("test", "silent")).admin();
    await admin.connect();
    try {
      await ensureTopic(admin, topic, 6);
    } finally {
      await admin.disconnect();
    }
  }

  const inTopic = (s: Stream) => topicSize(cluster.brokers, s.id).catch(() => 0);

  /**
   * The end of every case: both producers finished, every row reached orders once (or rejected_rows), the
   * hosts stop cleanly and the group has no lag; ours and kcat each left every row in their topic.
   */
  async function expectExactlyOnce(s: Stream, producers: { ours: Running; kcat: Promise<void> }): Promise<void> {
    const produced = await producers.ours.finish(600_000);
    expect({ code: produced.code, summary: /done: sent=(\d+)/.exec(produced.stderr)?.[1] }).toEqual({ code: 0, summary: String(ROWS) });
    await producers.kcat;
    await waitFor(
      () => `all ${ROWS} rows in PostgreSQL\n${[...s.consumers, ...s.loaders].map((p) => p.output()).join("\n")}`,
      async () => (await s.db.sql`select (select count(*) from orders) + (select count(*) from rejected_rows) as n`)[0]!.n >= ROWS,
      300_000,
      500,
    );
    for (const p of [...s.consumers, ...s.loaders]) if (p.child.exitCode === null) p.child.kill("SIGTERM");
    for (const p of [...s.consumers, ...s.loaders]) {
      const { code, stderr } = await p.finish(60_000);
      expect(code === 0 || code === 137, `exit ${code} (137: the consumer a case killed on purpose)\n${stderr}`).toBe(true);
    }
    const lines = await s.db.sql<{ line: number }[]>`
      select source_line as line from orders union all select source_line from rejected_rows order by 1
    `;
    expect(lines.map((r) => r.line)).toEqual(Array.from({ length: ROWS }, (_, i) => i + 2));
    expect(new Set(await topicKeys(cluster.brokers, s.id)).size).toBe(ROWS);
    expect(new Set(await topicKeys(cluster.brokers, s.kcatTopic)).size).toBe(ROWS);
    const lag = await groupLag(cluster.brokers, s.env.KAFKA_GROUP_ID!, s.id);
    expect(lag, `group lag after every host stopped\n${s.consumers.map((c) => c.output()).join("\n")}`).toBe(0);
  }

  async function afterCase(s: Stream): Promise<void> {
    for (const p of [...s.consumers, ...s.loaders]) p.child.kill("SIGKILL");
    await s.db.drop();
    await Promise.all(cluster.nodes.map((n) => (pidAlive(n.pid) ? undefined : cluster.start(n.id))));
    await cluster.waitInSync();
  }

  /** The samples of `name` on a /metrics page (the text format: `name{labels} value` lines), by their labels. */
  function samples(page: string, name: string): Map<string, number> {
    const found = new Map<string, number>();
    for (const line of page.split("\n")) {
      const match = new RegExp(`^sales_pipeline_${name}(\\{[^}]*\\})? (\\S+)$`).exec(line);
      if (match) found.set(match[1] ?? "", Number(match[2]));
    }
    return found;
  }

  // The dashboard's Kafka facts through a leader's clean stop and start: each scrape either read Kafka and tells
  // the truth (every partition, every record, no lag) or says it could not and leaves the facts out. The
  // control: the partition's leader did move, and kcat reads the topic's offsets through the same stop.
  test("/metrics through a leader's clean stop and start: each scrape tells the true lag, or says it could not read Kafka", async () => {
    const topic = uniqueName("metrics_moved");
    const dir = join(tmp.path, topic);
    mkdirSync(dir);
    const db = await createTestDatabase("cluster");
    const env = { KAFKA_BROKERS: cluster.brokers, KAFKA_TOPIC: topic, KAFKA_GROUP_ID: `${topic}-g`, BATCHES_DIR: dir, DATABASE_URL: db.url };
    const [port] = freePorts(1) as [number];
    const dashboard = startScript("dashboard.ts", ["--port", String(port)], { ...env, LOG_LEVEL: "info" });
    try {
      await createTopic(topic);
      await kcatSend(cluster.brokers, topic, Array.from({ length: 300 }, (_, i) => ({ key: `line:${i + 2}`, value: `row ${i}` })));
      await runOk("consumer_batch_to_csv.ts", ["--until-idle", "2"], env);
      await dashboard.waitForOutput(/dashboard at http:\/\//);
      const pages: { at: string; page: string }[] = [];
      let phase = "before";
      let scraping = true;
      const scraper = (async () => {
        while (scraping) {
          pages.push({ at: phase, page: await (await fetch(`http://127.0.0.1:${port}/metrics`)).text() });
          await Bun.sleep(250); // a scrape interval, not a wait for a condition
        }
      })();
      const [leader] = (await partitionLeaders(cluster.brokers, [topic]))[0]!;
      phase = "stopping";
      await cluster.stop(leader!);
      phase = "stopped";
      const survivor = cluster.nodes.find((n) => n.id !== leader)!;
      await waitFor("partition 0 to have another leader", async () => {
        const [now] = (await partitionLeaders(`127.0.0.1:${survivor.port}`, [topic]))[0]!;
        return now !== undefined && now >= 0 && now !== leader;
      }, 60_000, 250);
      const kcatOffsets = Bun.spawnSync(["kcat", "-Q", "-b", `127.0.0.1:${survivor.port}`, "-t", `${topic}:0:-1`], { stderr: "pipe" });
      expect(kcatOffsets.exitCode, kcatOffsets.stderr.toString()).toBe(0);
      await waitFor("scrapes while the leader is away", () => pages.filter((p) => p.at === "stopped").length >= 8, 60_000, 100);
      phase = "starting";
      await cluster.start(leader!);
      await cluster.waitInSync();
      phase = "after";
      await waitFor("a scrape that read Kafka after the restart", () => pages.some((p) => p.at === "after" && samples(p.page, "read_success").get('{source="kafka"}') === 1), 60_000, 100);
      scraping = false;
      await scraper;

      const truth = { read: 1, partitions: 6, records: 300, lag: 0 };
      const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
      const told = pages.map(({ at, page }) => {
        const read = samples(page, "read_success").get('{source="kafka"}');
        const lag = samples(page, "kafka_consumer_lag");
        const facts = { read, partitions: lag.size, records: sum(samples(page, "kafka_partition_records")), lag: sum(lag) };
        return { at, ...(read === 1 ? facts : { read, partitions: lag.size }) };
      });
      for (const page of told) expect(page).toEqual(page.read === 1 ? { at: page.at, ...truth } : { at: page.at, read: 0, partitions: 0 });
      const readWhileAway = told.filter((p) => p.at === "stopped" && p.read === 1).length;
      expect(readWhileAway, JSON.stringify(told)).toBeGreaterThan(0); // two nodes of three still answer
    } finally {
      dashboard.child.kill("SIGTERM");
      await dashboard.finish();
      await db.drop();
    }
  });

  for (let run = 1; run <= RUNS; run++) {
    const tag = RUNS > 1 ? ` (run ${run} of ${RUNS})` : "";

    test(`the leader of a partition killed mid-stream and started again: every row once${tag}`, async () => {
      const s = await stream("leader_kill");
      try {
        startHosts(s);
        const producers = startProducers(s);
        await waitFor("a quarter of the rows in the topic", async () => (await inTopic(s)) >= ROWS / 4, 120_000, 200);
        const [leader] = (await partitionLeaders(cluster.brokers, [s.id]))[0]!;
        cluster.kill(leader!);
        const survivor = cluster.nodes.find((n) => n.id !== leader)!;
        await waitFor("partition 0 to have another leader", async () => {
          const [now] = (await partitionLeaders(`127.0.0.1:${survivor.port}`, [s.id]))[0]!;
          return now !== undefined && now >= 0 && now !== leader;
        }, 60_000, 250);
        await cluster.start(leader!);
        await expectExactlyOnce(s, producers);
      } finally {
        await afterCase(s);
      }
    });

    test(`a rolling restart mid-stream, each node stopped with SIGTERM and started again in turn: every row once${tag}`, async () => {
      const s = await stream("rolling");
      try {
        startHosts(s);
        const producers = startProducers(s);
        await waitFor("a tenth of the rows in the topic", async () => (await inTopic(s)) >= ROWS / 10, 120_000, 200);
        for (const node of cluster.nodes) {
          await cluster.stop(node.id);
          await cluster.start(node.id);
          await cluster.waitInSync();
        }
        await expectExactlyOnce(s, producers);
      } finally {
        await afterCase(s);
      }
    });

    test(`a consumer killed on one host mid-stream: the others take over its partitions, every row once${tag}`, async () => {
      const s = await stream("consumer_kill");
      try {
        startHosts(s);
        const producers = startProducers(s);
        await waitFor("host 2 to have written a batch file", () => batchPartitions(s.hosts[1]!).size > 0, 120_000, 200);
        s.consumers[1]!.child.kill("SIGKILL");
        const hadPartitions = batchPartitions(s.hosts[1]!);
        await expectExactlyOnce(s, producers);
        // The control: the partitions host 2 was writing were taken over (the fault bit), not left idle.
        const others = new Set([...batchPartitions(s.hosts[0]!), ...batchPartitions(s.hosts[2]!)]);
        expect([...hadPartitions].filter((p) => others.has(p))).toEqual([...hadPartitions]);
      } finally {
        await afterCase(s);
      }
    });

    test(`two brokers down, so min.insync.replicas cannot be met: the producer waits, then finishes, every row once${tag}`, async () => {
      const s = await stream("min_isr");
      try {
        startHosts(s);
        const producers = startProducers(s);
        await waitFor("a quarter of the rows in the topic", async () => (await inTopic(s)) >= ROWS / 4, 120_000, 200);
        cluster.kill(2);
        cluster.kill(3);
        // Nothing can be acknowledged now: the producer must wait (not exit, not count rows as sent).
        await producers.ours.waitForOutput(/waiting .* for Kafka to acknowledge \d+ messages from line \d+/, 120_000);
        expect(producers.ours.child.exitCode).toBeNull();
        await Promise.all([cluster.start(2), cluster.start(3)]);
        await expectExactlyOnce(s, producers);
      } finally {
        await afterCase(s);
      }
    });
  }

});

interface Stream {
  readonly id: string;
  readonly env: Record<string, string>;
  readonly db: TestDatabase;
  readonly file: string;
  /** each host's batch folder */
  readonly hosts: string[];
  readonly kcatTopic: string;
  readonly consumers: Running[];
  readonly loaders: Running[];
}

/** Partitions a host's consumer has written batch files for (their names say: topic_p3_...). */
function batchPartitions(dir: string): Set<number> {
  if (!existsSync(dir)) return new Set();
  return new Set(readdirSync(dir).flatMap((f) => /_p(\d+)_\d+-\d+_[0-9a-f]+\.csv$/.exec(f)?.[1] ?? []).map(Number));
}

/** Two partitions whose leaders the test chooses: partition 0 on node 1, partition 1 on node 2 then node 1. */
async function createPinnedTopics(broker: string, topics: string[]): Promise<void> {
  const admin = createKafka(readConfig({ KAFKA_BROKERS: broker }), createLogger("test", "silent")).admin();
  await admin.connect();
  try {
    await admin.createTopics({
      waitForLeaders: false, // kafkajs gives up on the first "unknown topic": waited for below
      topics: topics.map((topic) => ({
        topic,
        replicaAssignment: [
          { partition: 0, replicas: [1, 3, 2] },
          { partition: 1, replicas: [2, 1, 3] },
        ],
      })),
    });
  } finally {
    await admin.disconnect();
  }
  await waitFor("every node to know the new topics' leaders", async () => {
    const leaders = await partitionLeaders(broker, topics).catch(() => []);
    return leaders.length === topics.length && leaders.every((l) => l[0] === 1 && l[1] === 2);
  });
}

const keyed = keyPartitioner();
/** The partition of two that kafkajs' DefaultPartitioner (and ours) gives a key. */
function partitionOf(key: string): number {
  const partitionMetadata = [0, 1].map((partitionId) => ({ partitionId, leader: 0, partitionErrorCode: 0, replicas: [], isr: [] }));
  return keyed({ topic: "t", partitionMetadata, message: { key, value: null } });
}

/** The published kafkajs' idempotent producer, and how many produce answers it has had from a broker. */
function publishedProducer(brokers: string) {
  const kafkajs = publishedKafkajs();
  const kafka = new kafkajs.Kafka({ brokers: brokers.split(","), logLevel: kafkajs.logLevel.NOTHING, requestTimeout: 120_000 });
  const producer = kafka.producer({ createPartitioner: kafkajs.Partitioners.DefaultPartitioner, idempotent: true, maxInFlightRequests: 1 });
  const answers = new Map<string, number>();
  producer.on(producer.events.REQUEST, ({ payload }) => {
    if (payload.apiName === "Produce") answers.set(payload.broker, (answers.get(payload.broker) ?? 0) + 1);
  });
  return { producer, answersFrom: (broker: string) => answers.get(broker) ?? 0 };
}
