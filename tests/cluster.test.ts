// Exactly once on a three-broker cluster: leaders that move while rows stream. A cluster of its own (three KRaft
// nodes with the compose file's cluster settings: replication factor 3, min.insync.replicas 2, no unclean
// election) is started here so its nodes can be killed, paused and restarted. Every fault runs with a control
// beside it: kcat (librdkafka) producing the same rows through the same fault, so a pass means the pipeline
// held, not that the fault missed. `make test` runs each case once with a few thousand rows; `make chaos` runs
// them CHAOS_RUNS times with CHAOS_ROWS rows.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createRequire } from "node:module";
import type * as KafkaJS from "kafkajs";
import { readConfig } from "../scripts/lib/config.ts";
import { createKafka, keyPartitioner } from "../scripts/lib/kafka.ts";
import { createLogger } from "../scripts/lib/log.ts";
import {
  clusterPrerequisites,
  kcatSend,
  partitionLeaders,
  startPrivateCluster,
  tempDir,
  topicKeys,
  uniqueName,
  waitFor,
  type PrivateCluster,
} from "./helpers.ts";

const require = createRequire(import.meta.url);
const missing = clusterPrerequisites();

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

describe.skipIf(missing.length > 0)("a leader that moves mid-send", () => {
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
});

/** Two partitions whose leaders the test chooses: partition 0 on node 1, partition 1 on node 2 then node 1. */
async function createPinnedTopics(broker: string, topics: string[]): Promise<void> {
  const admin = createKafka(readConfig({ KAFKA_BROKERS: broker }), createLogger("test", "silent")).admin();
  await admin.connect();
  try {
    await admin.createTopics({
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
