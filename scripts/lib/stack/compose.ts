// docker-compose.yml: the single source of the broker's version and settings, read by local mode too, and the
// Docker Compose command that runs it where Docker can run containers.

import { projectPath } from "../config.ts";
import { has, run } from "./process.ts";

export const COMPOSE_FILE = projectPath("docker-compose.yml");
/** Compose project name: names the containers and volumes (sales-stream_kafka-data, ...). */
const COMPOSE_PROJECT = "sales-stream";

/** One Kafka node of the compose file: its service, environment (variables resolved) and host port. */
export interface ComposeKafkaNode {
  readonly service: string;
  readonly env: Readonly<Record<string, string>>;
  /** the port published on 127.0.0.1 for clients on the host */
  readonly port: number;
}

export interface ComposeFacts {
  readonly kafkaImage: string;
  readonly kafkaVersion: string;
  /** KAFKA_* environment of the kafka service (node 1), variables resolved for the chosen node count */
  readonly kafkaEnv: Readonly<Record<string, string>>;
  /** the Kafka nodes for the chosen count: kafka alone, or kafka, kafka-2 and kafka-3 (the cluster profile) */
  readonly kafkaNodes: readonly ComposeKafkaNode[];
  /** the variables `make up KAFKA_NODES=3` sets for compose (x-cluster); empty for one node */
  readonly variables: Readonly<Record<string, string>>;
  readonly postgresImage: string;
  readonly postgresMajor: number;
  readonly postgresEnv: Readonly<Record<string, string>>;
  readonly ports: Readonly<Record<string, readonly string[]>>;
}

function envOf(service: Record<string, unknown>): Record<string, string> {
  const env = service.environment;
  const out: Record<string, string> = {};
  if (Array.isArray(env)) {
    for (const item of env) {
      const [k, ...v] = String(item).split("=");
      out[k!] = v.join("=");
    }
  } else if (env && typeof env === "object") {
    for (const [k, v] of Object.entries(env)) out[k] = String(v);
  }
  return out;
}

/** Node counts local mode and the compose file support: one node, or the cluster profile. */
export const KAFKA_NODE_COUNTS = [1, 3] as const;
/** The compose services of the cluster profile, in node-id order. */
const CLUSTER_SERVICES = ["kafka", "kafka-2", "kafka-3"];

/** Compose's `${NAME:-default}` and `${NAME}`, resolved from `variables` (else the default) as compose does. */
export function interpolate(value: string, variables: Readonly<Record<string, string>>): string {
  return value.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}/g, (_, name: string, fallback?: string) => variables[name] || (fallback ?? ""));
}

/** The compose file's facts for a stack of `nodes` Kafka nodes (1, or 3 with the cluster profile). */
export function readCompose(text: string, nodes = 1): ComposeFacts {
  const doc = Bun.YAML.parse(text) as { services?: Record<string, Record<string, unknown>>; "x-cluster"?: Record<string, unknown> };
  const kafka = doc.services?.kafka;
  const pg = doc.services?.postgres;
  if (!kafka || !pg) throw new Error(`${COMPOSE_FILE}: expected services "kafka" and "postgres"`);
  if (!(KAFKA_NODE_COUNTS as readonly number[]).includes(nodes)) throw new Error(`KAFKA_NODES must be 1 or 3, got ${nodes}`);
  const variables: Record<string, string> = {};
  if (nodes > 1) for (const [k, v] of Object.entries(doc["x-cluster"] ?? {})) variables[k] = String(v);
  const resolved = (env: Record<string, string>) => Object.fromEntries(Object.entries(env).map(([k, v]) => [k, interpolate(v, variables)]));
  const kafkaNodes = CLUSTER_SERVICES.slice(0, nodes).map((service) => {
    const spec = doc.services?.[service];
    if (!spec) throw new Error(`${COMPOSE_FILE}: expected a service "${service}" for a ${nodes}-node cluster`);
    const published = ((spec.ports as unknown[]) ?? []).map(String)[0] ?? "";
    const port = Number(/^127\.0\.0\.1:(\d+):/.exec(published)?.[1]);
    if (!port) throw new Error(`${COMPOSE_FILE}: service ${service} must publish its port as 127.0.0.1:PORT:PORT`);
    return { service, env: resolved(envOf(spec)), port };
  });
  const kafkaImage = String(kafka.image);
  const postgresImage = String(pg.image);
  const kafkaVersion = /^apache\/kafka:(\d+\.\d+\.\d+)$/.exec(kafkaImage)?.[1];
  if (!kafkaVersion) throw new Error(`${COMPOSE_FILE}: kafka image must be apache/kafka:X.Y.Z, got ${kafkaImage}`);
  const postgresMajor = Number(/^postgres:(\d+)/.exec(postgresImage)?.[1]);
  if (!postgresMajor) throw new Error(`${COMPOSE_FILE}: postgres image must be postgres:MAJOR..., got ${postgresImage}`);
  const ports = (service: Record<string, unknown>) => ((service.ports as unknown[]) ?? []).map(String);
  return {
    kafkaImage,
    kafkaVersion,
    kafkaEnv: kafkaNodes[0]!.env,
    kafkaNodes,
    variables,
    postgresImage,
    postgresMajor,
    postgresEnv: envOf(pg),
    ports: { kafka: ports(kafka), postgres: ports(pg) },
  };
}

/** `docker compose` (v2) or `docker-compose` (v1) with this project's name and file; undefined when neither. */
export function composeCommand(): string[] | undefined {
  const file = ["-p", COMPOSE_PROJECT, "-f", COMPOSE_FILE];
  if (has("docker") && run("docker", ["compose", "version"], { quiet: true, timeout: 10_000 }).ok) return ["docker", "compose", ...file];
  if (has("docker-compose")) return ["docker-compose", ...file];
  return undefined;
}

/** Docker mode needs an engine that answers, not only the client. */
export function dockerRuns(): boolean {
  return has("docker") && run("docker", ["info"], { quiet: true, timeout: 10_000 }).ok && composeCommand() !== undefined;
}

/**
 * The compose command, or an error that says which of the two is missing and what to do. `who` is what asked
 * for Docker mode ("STACK_MODE=docker"), for the message.
 */
export function requireCompose(who: string): string[] {
  const command = composeCommand();
  if (command) return command;
  const missing = has("docker")
    ? 'docker is installed but "docker compose version" fails (no Compose plugin), and docker-compose is not on PATH'
    : 'neither docker (for "docker compose") nor docker-compose is on PATH';
  throw new Error(
    `${who} runs the stack with Docker Compose, but ${missing}: ` +
      "install Docker Compose (apt-get install docker-compose-plugin, or docker-compose), or run without Docker: STACK_MODE=local (or unset STACK_MODE)",
  );
}

/**
 * Runs `compose <args>` for the stack of `facts` (the cluster profile and its variables when it has three
 * Kafka nodes); false when it failed (compose says why on the terminal). Throws when compose is not installed.
 */
export function compose(args: string[], facts?: ComposeFacts, who = "Docker mode"): boolean {
  const command = requireCompose(who);
  const profile = facts && facts.kafkaNodes.length > 1 ? ["--profile", "cluster"] : [];
  return run(command[0]!, [...command.slice(1), ...profile, ...args], { env: facts?.variables }).ok;
}
