// docker-compose.yml: the single source of the broker's version and settings, read by local mode too, and the
// Docker Compose command that runs it where Docker can run containers.

import { has, run } from "./process.ts";

export const COMPOSE_FILE = "docker-compose.yml";
/** Compose project name: names the containers and volumes (sales-stream_kafka-data, ...). */
const COMPOSE_PROJECT = "sales-stream";

export interface ComposeFacts {
  readonly kafkaImage: string;
  readonly kafkaVersion: string;
  /** KAFKA_* environment of the kafka service, as written */
  readonly kafkaEnv: Readonly<Record<string, string>>;
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

export function readCompose(text: string): ComposeFacts {
  const doc = Bun.YAML.parse(text) as { services?: Record<string, Record<string, unknown>> };
  const kafka = doc.services?.kafka;
  const pg = doc.services?.postgres;
  if (!kafka || !pg) throw new Error(`${COMPOSE_FILE}: expected services "kafka" and "postgres"`);
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
    kafkaEnv: envOf(kafka),
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

/** Runs `compose <args>`; false when it failed or compose is missing. */
export function compose(args: string[]): boolean {
  const command = composeCommand();
  return command !== undefined && run(command[0]!, [...command.slice(1), ...args]).ok;
}
