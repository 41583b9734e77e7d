// docker-compose.yml and local mode must run the same stack: Kafka version and settings, PostgreSQL major
// version, ports and credentials. Most users run compose; these tests run where Docker cannot.

import { afterAll, describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_DATABASE_URL, readConfig } from "../scripts/lib/config.ts";
import { maintenance } from "../scripts/lib/db.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { composeCommand, readCompose } from "../scripts/lib/stack/compose.ts";
import { localServerProperties, NETWORK_PROPERTIES, propertyName, quorumVoters } from "../scripts/lib/stack/kafka.ts";
import { BASE, ROOT, runScript, tempDir } from "./helpers.ts";

const composeText = readFileSync(join(ROOT, "docker-compose.yml"), "utf8");
const facts = readCompose(composeText);
const doc = Bun.YAML.parse(composeText) as {
  services: Record<string, { ports?: string[]; healthcheck?: { test?: unknown }; volumes?: string[] }>;
  volumes: Record<string, unknown>;
};

describe("docker-compose.yml", () => {
  const compose = composeCommand();

  // .ci/run installs Debian's docker-compose, so CI always runs this; a machine with neither tool skips it.
  test.skipIf(compose === undefined)("is valid for docker compose", () => {
    const result = spawnSync(compose![0]!, [...compose!.slice(1), "config", "-q"], { cwd: ROOT, encoding: "utf8" });
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
  });

  test("pins one Kafka version (apache/kafka) and one PostgreSQL version", () => {
    expect(facts.kafkaImage).toMatch(/^apache\/kafka:\d+\.\d+\.\d+$/);
    expect(facts.postgresImage).toMatch(/^postgres:\d+\.\d+/);
  });

  test("has the settings a single KRaft broker needs", () => {
    expect(facts.kafkaEnv).toMatchObject({
      KAFKA_PROCESS_ROLES: "broker,controller",
      KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: "1",
      KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR: "1",
      KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: "1",
      KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS: "0",
    });
    // Two listeners: one for containers, one advertised to the host.
    expect(facts.kafkaEnv.KAFKA_ADVERTISED_LISTENERS).toBe("PLAINTEXT://kafka:19092,PLAINTEXT_HOST://127.0.0.1:9092");
  });

  test("has a cluster profile: three nodes, three replicas, two in sync for a write, no unclean election", () => {
    const cluster = readCompose(composeText, 3);
    expect(cluster.kafkaNodes.map((n) => [n.service, n.env.KAFKA_NODE_ID, n.port])).toEqual([
      ["kafka", "1", 9092],
      ["kafka-2", "2", 9094],
      ["kafka-3", "3", 9096],
    ]);
    for (const node of cluster.kafkaNodes) {
      expect(node.env).toMatchObject({
        KAFKA_CONTROLLER_QUORUM_VOTERS: "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093",
        KAFKA_DEFAULT_REPLICATION_FACTOR: "3",
        KAFKA_MIN_INSYNC_REPLICAS: "2",
        KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR: "3",
        KAFKA_TRANSACTION_STATE_LOG_MIN_ISR: "2",
        KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE: "false",
        CLUSTER_ID: facts.kafkaEnv.CLUSTER_ID,
      });
    }
    // Without the profile, the same file is one node: every ${...} falls back to its default.
    expect(facts.kafkaNodes).toHaveLength(1);
    expect(facts.kafkaEnv).toMatchObject({ KAFKA_CONTROLLER_QUORUM_VOTERS: "1@kafka:9093", KAFKA_MIN_INSYNC_REPLICAS: "1", KAFKA_DEFAULT_REPLICATION_FACTOR: "1" });
    expect(readConfig({ KAFKA_NODES: "3" }).kafkaBrokers).toEqual(cluster.kafkaNodes.map((n) => `127.0.0.1:${n.port}`));
  });

  test.skipIf(compose === undefined)("is valid for docker compose with the cluster profile and its variables", () => {
    const cluster = readCompose(composeText, 3);
    const result = spawnSync(compose![0]!, [...compose!.slice(1), "--profile", "cluster", "config"], {
      cwd: ROOT,
      encoding: "utf8",
      env: { ...process.env, ...cluster.variables },
    });
    expect(result.status).toBe(0);
    expect(result.stdout).toContain("kafka-3");
    expect(result.stdout).toContain("KAFKA_MIN_INSYNC_REPLICAS: '2'");
  });

  test("publishes ports on 127.0.0.1 only, with a healthcheck and a named volume for every service", () => {
    for (const [name, service] of Object.entries(doc.services)) {
      for (const port of service.ports ?? []) expect(port).toStartWith("127.0.0.1:");
      expect(service.healthcheck?.test, `${name} healthcheck`).toBeDefined();
      const volume = (service.volumes ?? [])[0]?.split(":")[0];
      expect(Object.keys(doc.volumes), `${name} volume`).toContain(volume!);
    }
  });

  test("matches the defaults the scripts use (brokers, database URL)", () => {
    const url = new URL(DEFAULT_DATABASE_URL);
    expect({
      user: facts.postgresEnv.POSTGRES_USER,
      password: facts.postgresEnv.POSTGRES_PASSWORD,
      db: facts.postgresEnv.POSTGRES_DB,
      port: facts.ports.postgres,
    }).toEqual({ user: url.username, password: url.password, db: url.pathname.slice(1), port: [`127.0.0.1:${url.port}:5432`] });
    expect(readConfig({}).kafkaBrokers).toEqual(["127.0.0.1:9092"]);
    expect(facts.ports.kafka).toEqual(["127.0.0.1:9092:9092"]);
  });
});

describe("local mode", () => {
  const props = localServerProperties(facts.kafkaEnv, { host: "127.0.0.1", port: 9092, controllerPort: 9093, logDir: "/tmp/x" });

  test("runs each node of a cluster with its compose service's settings and a quorum of all three", () => {
    const cluster = readCompose(composeText, 3);
    const nodes = cluster.kafkaNodes.map((n) => ({ id: Number(n.env.KAFKA_NODE_ID), port: n.port, controllerPort: n.port + 1 }));
    const voters = quorumVoters("127.0.0.1", nodes);
    expect(voters).toBe("1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097");
    const second = localServerProperties(cluster.kafkaNodes[1]!.env, { host: "127.0.0.1", port: 9094, controllerPort: 9095, logDir: "/tmp/x", voters });
    expect(second).toMatchObject({
      "node.id": "2",
      "controller.quorum.voters": voters,
      listeners: "PLAINTEXT://127.0.0.1:9094,CONTROLLER://127.0.0.1:9095",
      "default.replication.factor": "3",
      "min.insync.replicas": "2",
      "unclean.leader.election.enable": "false",
    });
  });

  test("translates KAFKA_* variables to broker properties as the apache/kafka image does", () => {
    expect(propertyName("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR")).toBe("offsets.topic.replication.factor");
    expect(propertyName("KAFKA_LISTENER_NAME_X___Y")).toBe("listener.name.x-y");
    expect(propertyName("KAFKA_SOME__UNDERSCORE")).toBe("some_underscore");
  });

  test("runs the broker with compose's settings, changing only where it listens", () => {
    const fromCompose = Object.fromEntries(
      Object.entries(facts.kafkaEnv)
        .filter(([k]) => k.startsWith("KAFKA_"))
        .map(([k, v]) => [propertyName(k), v]),
    );
    const network = new Set<string>(NETWORK_PROPERTIES);
    const rest = (o: Record<string, string>) => Object.fromEntries(Object.entries(o).filter(([k]) => !network.has(k)));
    expect(rest(props)).toEqual(rest(fromCompose));
    expect(Object.keys(rest(props)).length).toBeGreaterThan(5);
    expect(props).toMatchObject({
      "offsets.topic.replication.factor": "1",
      "group.initial.rebalance.delay.ms": "0",
      listeners: "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
      "advertised.listeners": "PLAINTEXT://127.0.0.1:9092",
      "controller.quorum.voters": "1@127.0.0.1:9093",
    });
  });

  const state = join(ROOT, ".local", "stack.json");
  // Only when make up started the broker itself (a broker that already answered is someone else's).
  const started = existsSync(state) && (JSON.parse(readFileSync(state, "utf8")) as { mode: string; kafka?: unknown }).kafka !== undefined;

  test.skipIf(!started)("the broker make up started is the compose image's Kafka version, from Maven Central", () => {
    const { kafka } = JSON.parse(readFileSync(state, "utf8")) as { kafka?: { version: string; home: string } };
    expect(kafka?.version).toBe(facts.kafkaVersion);
    expect(existsSync(join(kafka!.home, facts.kafkaVersion, "libs", `kafka_2.13-${facts.kafkaVersion}.jar`))).toBe(true);
  });

  test("the running PostgreSQL has the compose image's major version", async () => {
    const sql = maintenance(BASE.database, createLogger("test", "silent"));
    try {
      const [row] = await sql<{ v: string }[]>`select current_setting('server_version_num') as v`;
      expect(Math.floor(Number(row!.v) / 10000)).toBe(facts.postgresMajor);
    } finally {
      await sql.end({ timeout: 5 });
    }
  });
});

describe("Docker mode without Docker Compose", () => {
  // PATH is all the script has to find compose by: an empty folder, or one whose docker has no Compose plugin.
  const bin = tempDir("sales-no-compose-");
  const withDocker = join(bin.path, "with-docker");
  mkdirSync(withDocker);
  writeFileSync(join(withDocker, "docker"), "#!/bin/sh\necho \"docker: 'compose' is not a docker command.\" >&2\nexit 1\n", { mode: 0o755 });
  afterAll(() => bin.remove());

  test.each([
    ["no docker at all", bin.path, { STACK_MODE: "docker" }, [], 'neither docker (for "docker compose") nor docker-compose is on PATH'],
    ["docker without its Compose plugin", withDocker, { STACK_MODE: "docker" }, [], 'docker is installed but "docker compose version" fails (no Compose plugin), and docker-compose is not on PATH'],
    ["--mode docker", bin.path, {}, ["--mode", "docker"], "--mode docker runs the stack"],
  ])("make up with %s says what is missing and what to do, at once, exit 1", async (_what, path, env, flags, says) => {
    const started = performance.now();
    const result = await runScript("local_stack.ts", ["up", ...flags], { ...env, PATH: path }, 30_000);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(says);
    expect(result.stderr).toContain("STACK_MODE=local");
    expect(result.stderr).not.toContain("see above");
    expect(performance.now() - started).toBeLessThan(10_000);
  });
});
