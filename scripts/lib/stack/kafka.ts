// Local Kafka: the Apache Kafka version of the compose image, from the official artifacts on Maven Central
// (Java 17 + Maven), on 127.0.0.1: one KRaft node that is broker and controller, or three such nodes (the
// compose file's cluster profile, KAFKA_NODES=3). Each node's settings are its compose service's KAFKA_*
// variables; only where it listens is replaced.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, openSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Config } from "../config.ts";
import { describeBrokers, kafkaAnswers } from "../kafka.ts";
import { whatListens } from "../kafka_errors.ts";
import type { Logger } from "../log.ts";
import { COMPOSE_FILE, type ComposeFacts } from "./compose.ts";
import { has, pidAlive, run, tail, waitForService } from "./process.ts";
import { STATE_DIR } from "./state.ts";

/** KAFKA_FOO_BAR -> foo.bar, as the apache/kafka image does (KAFKA___ -> "-", KAFKA__ -> "_"). */
export function propertyName(variable: string): string {
  return variable
    .replace(/^KAFKA_/, "")
    .toLowerCase()
    .replace(/___/g, "-")
    .replace(/__/g, "\u0000")
    .replace(/_/g, ".")
    .replace(/\u0000/g, "_");
}

/** Settings about where the broker listens; local mode replaces them, everything else comes from compose. */
export const NETWORK_PROPERTIES = [
  "listeners",
  "advertised.listeners",
  "listener.security.protocol.map",
  "inter.broker.listener.name",
  "controller.listener.names",
  "controller.quorum.voters",
  "log.dirs",
] as const;

/** One node of a local cluster: its id, the port clients use, the port of its controller. */
export interface LocalNode {
  readonly id: number;
  readonly port: number;
  readonly controllerPort: number;
}

/** controller.quorum.voters for nodes on `host`: "1@127.0.0.1:9093,2@127.0.0.1:9095,...". */
export function quorumVoters(host: string, nodes: readonly LocalNode[]): string {
  return nodes.map((n) => `${n.id}@${host}:${n.controllerPort}`).join(",");
}

/**
 * A node's server.properties for local mode: its compose service's settings (`env`, the KAFKA_* variables),
 * listening on host:port only; `voters` lists the quorum when the node is one of a cluster.
 */
export function localServerProperties(
  env: Readonly<Record<string, string>>,
  where: { host: string; port: number; controllerPort: number; logDir: string; voters?: string },
): Record<string, string> {
  const props: Record<string, string> = {};
  for (const [variable, value] of Object.entries(env)) {
    if (variable.startsWith("KAFKA_")) props[propertyName(variable)] = value;
  }
  return {
    ...props,
    listeners: `PLAINTEXT://${where.host}:${where.port},CONTROLLER://${where.host}:${where.controllerPort}`,
    "advertised.listeners": `PLAINTEXT://${where.host}:${where.port}`,
    "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    "inter.broker.listener.name": "PLAINTEXT",
    "controller.listener.names": "CONTROLLER",
    "controller.quorum.voters": where.voters ?? `${props["node.id"] ?? "1"}@${where.host}:${where.controllerPort}`,
    "log.dirs": where.logDir,
  };
}

/** log4j2 settings for a Kafka JVM (broker, Connect): INFO and above into `logFile`, plus `extra` lines. */
export function log4jToFile(logFile: string, extra: readonly string[] = []): string {
  const lines = [
    "status = warn",
    "appender.file.type = File",
    "appender.file.name = file",
    `appender.file.fileName = ${logFile}`,
    "appender.file.layout.type = PatternLayout",
    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
    "rootLogger.level = info",
    "rootLogger.appenderRef.file.ref = file",
    ...extra,
  ];
  return `${lines.join("\n")}\n`;
}

/** The broker's: state changes only from WARN (each partition's every move is logged at INFO). */
const LOG4J2 = (logFile: string) => log4jToFile(logFile, ["logger.state.name = state.change.logger", "logger.state.level = warn"]);

function kafkaPom(version: string): string {
  return `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by scripts/lib/stack/kafka.ts: the Apache Kafka ${version} broker, its tools and their runtime jars. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.sales-stream</groupId>
  <artifactId>kafka-broker-runtime</artifactId>
  <version>${version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${version}</version></dependency>
    <!-- As in the binary distribution's libs/: Kafka's own tools, for make bench (ProducerPerformance, ConsumerPerformance). -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>${version}</version></dependency>
    <!-- The binary distribution logs through log4j2; this binds Kafka's slf4j 1.7 calls to it. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
`;
}

function javaMajor(): number | undefined {
  const result = run("java", ["-version"], { quiet: true });
  if (result.missing) return undefined;
  const m = /version "(\d+)(?:\.(\d+))?/.exec(result.out);
  if (!m) return undefined;
  return m[1] === "1" ? Number(m[2]) : Number(m[1]);
}

/** The jars of Kafka `version`, fetched from Maven Central the first time (Maven's cache serves the next). */
export function kafkaJars(version: string, log: Logger): string {
  const home = resolve(STATE_DIR, "kafka", version);
  const libs = join(home, "libs");
  const marker = join(libs, `.complete-${version}-with-tools`);
  if (existsSync(marker)) return libs;
  const java = javaMajor();
  if (java === undefined || java < 17) {
    throw new Error(
      `local mode runs Kafka ${version} on Java 17 or newer (found ${java ?? "no java"}): ` +
        "install openjdk-17-jre-headless, or use Docker",
    );
  }
  if (!has("mvn")) throw new Error("local mode fetches Kafka from Maven Central with Maven: install maven, or use Docker");
  mkdirSync(home, { recursive: true });
  writeFileSync(join(home, "pom.xml"), kafkaPom(version));
  log.info(`fetching Apache Kafka ${version} from Maven Central (once)...`);
  rmSync(libs, { recursive: true, force: true });
  const fetched = run("mvn", ["-q", "-B", "-f", join(home, "pom.xml"), "dependency:copy-dependencies", `-DoutputDirectory=${libs}`, "-DincludeScope=runtime"]);
  if (!fetched.ok) throw new Error(`Maven could not fetch org.apache.kafka:kafka_2.13:${version} and kafka-tools (see its output above)`);
  writeFileSync(marker, "");
  return libs;
}

export interface BrokerOptions {
  /** folder for server.properties, the logs and (in data/) the broker's storage */
  readonly dir: string;
  /** folder of the broker's jars (kafkaJars) */
  readonly libs: string;
  readonly port: number;
  readonly controllerPort: number;
  /** the node's compose environment (ComposeFacts.kafkaNodes[i].env) */
  readonly env: Readonly<Record<string, string>>;
  /** the quorum, for a node of a cluster (quorumVoters); one node alone is its own quorum */
  readonly voters?: string;
  /** properties that replace the ones derived from compose (a test's extra listener, say) */
  readonly overrides?: Readonly<Record<string, string>>;
  /** more arguments for the first `kafka-storage format` (a test's SCRAM users: "--add-scram", "SCRAM-SHA-256=[...]") */
  readonly formatArgs?: readonly string[];
  /** JVM heap, e.g. "1g" */
  readonly heap?: string;
}

/**
 * Starts one KRaft broker+controller process on 127.0.0.1 with compose's settings, formatting its storage the
 * first time; returns the pid at once (see waitForBroker). The process outlives this script.
 */
export function launchBroker(options: BrokerOptions, log: Logger): number {
  const { dir, libs, port, controllerPort, env, voters } = options;
  mkdirSync(dir, { recursive: true });
  const dataDir = join(dir, "data");
  const properties = { ...localServerProperties(env, { host: "127.0.0.1", port, controllerPort, logDir: dataDir, voters }), ...options.overrides };
  const propsFile = join(dir, "server.properties");
  const lines = Object.entries(properties).map(([k, v]) => `${k}=${v}`);
  writeFileSync(propsFile, `# Written by scripts/lib/stack/kafka.ts from ${COMPOSE_FILE}; edit that file, not this one.\n${lines.join("\n")}\n`);
  writeFileSync(join(dir, "log4j2.properties"), LOG4J2(join(dir, "server.log")));
  const heap = options.heap ?? "1g";
  const java = (main: string, args: string[]) => [
    "-Xms256m",
    `-Xmx${heap}`,
    `-Dlog4j2.configurationFile=${join(dir, "log4j2.properties")}`,
    "-cp",
    `${libs}/*`,
    main,
    ...args,
  ];
  if (!existsSync(join(dataDir, "meta.properties"))) {
    // Every node of a cluster is formatted with the same id: compose's CLUSTER_ID, as the image does.
    // "--cluster-id=...": an id that starts with "-" (one in 64 random ones do) would otherwise be read as an option.
    const clusterId = env.CLUSTER_ID || randomBytes(16).toString("base64url");
    const format = run("java", java("kafka.tools.StorageTool", ["format", `--cluster-id=${clusterId}`, "-c", propsFile, ...(options.formatArgs ?? [])]), { quiet: true });
    if (!format.ok) throw new Error(`formatting Kafka's storage failed:\n${format.out}`);
    log.info(`formatted KRaft storage in ${dataDir}`);
  }
  const console = openSync(join(dir, "console.log"), "a");
  const child = spawn("java", java("kafka.Kafka", [propsFile]), { detached: true, stdio: ["ignore", console, console] });
  child.unref();
  return child.pid!;
}

/** Waits until the broker at config's address answers; fails early with its log if process `pid` died. */
export async function waitForBroker(config: Config, pid: number, dir: string, seconds = 90): Promise<void> {
  await waitForService("Kafka", () => kafkaAnswers(config), seconds, () =>
    pidAlive(pid) ? undefined : `${tail(join(dir, "console.log"))}\n${tail(join(dir, "server.log"))}`,
  );
}

/**
 * Throws when another program listens at host:port, where make up is about to start `what`: a broker would not
 * bind the port (and die at start-up with a Java stack trace), or its clients would talk to that program.
 */
async function refuseHeldPort(host: string, port: number, what: string, fix: string): Promise<void> {
  const held = await whatListens(host, port);
  if (held) throw new Error(`make up starts ${what} on ${host}:${port}, but another program already listens there (${held}): stop it, or ${fix}`);
}

/**
 * Before make up starts Kafka (or waits for compose's): each address of KAFKA_BROKERS where no broker answers
 * must be free, not held by a web server or any other program.
 */
export async function checkBrokerPorts(config: Config): Promise<void> {
  for (const broker of config.kafkaBrokers) {
    if (await kafkaAnswers({ ...config, kafkaBrokers: [broker] })) continue;
    const colon = broker.lastIndexOf(":");
    await refuseHeldPort(broker.slice(0, colon), Number(broker.slice(colon + 1)), `Kafka (KAFKA_BROKERS=${describeBrokers(config)})`, "put a free port in KAFKA_BROKERS");
  }
}

/**
 * Before local mode starts `nodes` (of a stack of `count`): their clients' and controllers' ports on 127.0.0.1
 * must be free. A broker that cannot bind one dies at start-up with a Java stack trace that names no port.
 */
export async function checkNodePorts(nodes: readonly LocalNode[], count: number): Promise<void> {
  const fix = count > 1 ? "make up without KAFKA_NODES=3" : "choose another port in KAFKA_BROKERS";
  for (const node of nodes) {
    const which = count > 1 ? `Kafka node ${node.id} (KAFKA_NODES=3 uses compose's ports)` : "Kafka";
    await refuseHeldPort("127.0.0.1", node.port, which, fix);
    await refuseHeldPort("127.0.0.1", node.controllerPort, `the controller of ${which} (the port after its clients')`, fix);
  }
}

/** A node local mode started: enough to stop it and to say where it is. */
export interface StartedNode {
  readonly id: number;
  readonly pid: number;
  readonly port: number;
}

/** Where local mode keeps a node: .local/kafka for one node (as always), .local/kafka-cluster/node-N for a cluster. */
export function localNodeDir(id: number, nodes: number): string {
  return nodes === 1 ? resolve(STATE_DIR, "kafka") : resolve(STATE_DIR, "kafka-cluster", `node-${id}`);
}

/**
 * Local mode: the compose file's Kafka nodes on 127.0.0.1. One node listens where KAFKA_BROKERS says; a
 * cluster's three on their compose ports (9092, 9094, 9096), each with its controller one port up, and
 * KAFKA_BROKERS may name only those. Nodes in `running` are up already and are left alone.
 */
export async function startLocalKafka(
  config: Config,
  facts: ComposeFacts,
  log: Logger,
  running: readonly StartedNode[] = [],
): Promise<{ version: string; /** the jars' home, .local/kafka */ home: string; nodes: StartedNode[] }> {
  const count = facts.kafkaNodes.length;
  const firstPort = config.kafkaBrokers[0]!.split(":")[1]!;
  const ports = count === 1 ? [Number(firstPort)] : facts.kafkaNodes.map((n) => n.port);
  const foreign = config.kafkaBrokers.filter((b) => {
    const [h, p] = b.split(":") as [string, string];
    return !["127.0.0.1", "localhost"].includes(h) || (count > 1 && !ports.includes(Number(p)));
  });
  if (foreign.length > 0) {
    throw new Error(
      `local mode runs Kafka on this machine${count > 1 ? ` at ${ports.map((p) => `127.0.0.1:${p}`).join(",")}` : ""}, ` +
        `but KAFKA_BROKERS points at ${foreign.join(",")}${count > 1 ? " (unset it: KAFKA_NODES=3 names the three)" : ""}`,
    );
  }
  if (config.kafkaSsl || config.kafkaSasl) {
    const set = [config.kafkaSsl && "KAFKA_SSL", config.kafkaSasl && "KAFKA_SASL_MECHANISM"].filter(Boolean);
    const both = set.length > 1;
    throw new Error(`local mode runs Kafka without TLS or SASL, as compose does, but ${set.join(" and ")} ${both ? "are" : "is"} set: unset ${both ? "them" : "it"} for make up`);
  }
  const nodes = facts.kafkaNodes.map((n, i) => ({ id: Number(n.env.KAFKA_NODE_ID), port: ports[i]!, controllerPort: ports[i]! + 1, env: n.env }));
  await checkNodePorts(nodes.filter((n) => !running.some((r) => r.id === n.id)), count);
  const libs = kafkaJars(facts.kafkaVersion, log);
  const voters = count > 1 ? quorumVoters("127.0.0.1", nodes) : undefined;
  const started = nodes.map((node) => {
    const up = running.find((r) => r.id === node.id);
    if (up) return { ...up, dir: localNodeDir(node.id, count) };
    const dir = localNodeDir(node.id, count);
    const heap = count > 1 ? "512m" : "1g";
    const pid = launchBroker({ dir, libs, port: node.port, controllerPort: node.controllerPort, env: node.env, voters, heap }, log);
    log.info(`starting Kafka ${facts.kafkaVersion} node ${node.id} (pid ${pid}) on 127.0.0.1:${node.port}, logs in ${dir}/server.log`);
    return { id: node.id, pid, port: node.port, dir };
  });
  // A cluster's nodes answer only once a quorum of controllers is up: they are started first, then waited for.
  await Promise.all(
    started.map((n) => waitForBroker({ ...config, kafkaBrokers: [`127.0.0.1:${n.port}`] }, n.pid, n.dir, count > 1 ? 120 : 90)),
  );
  return { version: facts.kafkaVersion, home: resolve(STATE_DIR, "kafka"), nodes: started.map(({ id, pid, port }) => ({ id, pid, port })) };
}
