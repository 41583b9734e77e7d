// A Kafka cluster of its own: three KRaft nodes (each broker and controller) with the compose file's cluster
// settings (replication factor 3, min.insync.replicas 2, no unclean leader election), on free ports of
// 127.0.0.1, data in a folder the caller names. The cluster fault tests crash and restart its nodes; the
// benchmark's scale line measures on it. Needs Java 17 and the Kafka jars local mode fetches (kafkaJars).

import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Admin } from "kafkajs";
import { projectPath, readConfig } from "../config.ts";
import { createKafka } from "../kafka.ts";
import type { Logger } from "../log.ts";
import { pollUntil } from "../retry.ts";
import { readCompose } from "./compose.ts";
import { kafkaJars, launchBroker, quorumVoters, waitForBroker } from "./kafka.ts";
import { pidAlive, stopPid } from "./process.ts";

/** Ports nothing listens on right now. */
export function freePorts(count: number): number[] {
  const servers = Array.from({ length: count }, () => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
  const ports = servers.map((s) => s.port);
  for (const s of servers) s.stop(true);
  return ports;
}

export interface ClusterNode {
  readonly id: number;
  readonly port: number;
  readonly controllerPort: number;
  readonly env: Readonly<Record<string, string>>;
  pid: number;
}

export interface PrivateCluster {
  /** host:port of every node, comma-separated, as KAFKA_BROKERS takes them */
  readonly brokers: string;
  readonly nodes: readonly ClusterNode[];
  /** SIGKILL node `id`, as a crash or a pulled plug would */
  kill(id: number): void;
  /** SIGSTOP / SIGCONT: a node that hangs without closing its sockets */
  pause(id: number): void;
  resume(id: number): void;
  /** a clean stop (SIGTERM), as in a rolling restart */
  stop(id: number): Promise<void>;
  /** start node `id` again on its ports and data, and wait until it answers */
  start(id: number): Promise<void>;
  /** wait until every node is registered and every replica of every topic is in sync again */
  waitInSync(timeoutMs?: number): Promise<void>;
  /** the end: nothing on these nodes is kept, so they go at once (SIGKILL) */
  stopAll(): Promise<void>;
}

/** An admin client on `brokers`, for the length of `fn`. */
export async function withAdmin<T>(brokers: string, log: Logger, fn: (admin: Admin) => Promise<T>): Promise<T> {
  const admin = createKafka(readConfig({ KAFKA_BROKERS: brokers }), log).admin();
  await admin.connect();
  try {
    return await fn(admin);
  } finally {
    await admin.disconnect();
  }
}

/** True when `nodes` brokers are registered and no partition of any topic lacks a replica in sync. */
async function clusterInSync(brokers: string, nodes: number, log: Logger): Promise<boolean> {
  return withAdmin(brokers, log, async (admin) => {
    const { brokers: alive } = await admin.describeCluster();
    if (alive.length < nodes) return false;
    const topics = await admin.listTopics();
    if (topics.length === 0) return true;
    const { topics: metadata } = await admin.fetchTopicMetadata({ topics });
    return metadata.every((t) => t.partitions.every((p) => p.leader >= 0 && p.isr.length === p.replicas.length));
  }).catch(() => false);
}

/** Starts `count` nodes of the compose file's cluster profile in `dir`/node-N and waits until all are in sync. */
export async function startPrivateCluster(dir: string, log: Logger, count = 3): Promise<PrivateCluster> {
  const facts = readCompose(readFileSync(projectPath("docker-compose.yml"), "utf8"), count);
  const libs = kafkaJars(facts.kafkaVersion, log);
  const ports = freePorts(2 * count);
  const nodes: ClusterNode[] = facts.kafkaNodes.map((n, i) => ({ id: Number(n.env.KAFKA_NODE_ID), port: ports[2 * i]!, controllerPort: ports[2 * i + 1]!, env: n.env, pid: 0 }));
  const voters = quorumVoters("127.0.0.1", nodes);
  const brokers = nodes.map((n) => `127.0.0.1:${n.port}`).join(",");
  const node = (id: number) => {
    const found = nodes.find((n) => n.id === id);
    if (!found) throw new Error(`the cluster has no node ${id} (it has ${nodes.map((n) => n.id).join(", ")})`);
    return found;
  };
  const nodeDir = (id: number) => join(dir, `node-${id}`);
  const launch = (id: number) => {
    const n = node(id);
    n.pid = launchBroker({ dir: nodeDir(id), libs, port: n.port, controllerPort: n.controllerPort, env: n.env, voters, heap: "512m" }, log);
  };
  const answers = (id: number) => waitForBroker(readConfig({ KAFKA_BROKERS: `127.0.0.1:${node(id).port}` }), node(id).pid, nodeDir(id), 120);
  for (const n of nodes) launch(n.id);
  await Promise.all(nodes.map((n) => answers(n.id)));
  const cluster: PrivateCluster = {
    brokers,
    nodes,
    kill: (id) => process.kill(node(id).pid, "SIGKILL"),
    pause: (id) => process.kill(node(id).pid, "SIGSTOP"),
    resume: (id) => process.kill(node(id).pid, "SIGCONT"),
    stop: (id) => stopPid(node(id).pid, `cluster node ${id}`, log, 60_000),
    async start(id) {
      launch(id);
      await answers(id);
    },
    waitInSync: (timeoutMs = 120_000) =>
      pollUntil(() => clusterInSync(brokers, nodes.length, log), { timeout: timeoutMs, every: 500, what: "every node registered and every replica in sync" }).then(() => undefined),
    async stopAll() {
      for (const n of nodes) if (pidAlive(n.pid)) process.kill(n.pid, "SIGKILL");
      await pollUntil(() => nodes.every((n) => !pidAlive(n.pid)), { timeout: 10_000, every: 100, what: "the cluster's nodes to exit" });
    },
  };
  await cluster.waitInSync();
  return cluster;
}
