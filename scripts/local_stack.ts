// The stack under the pipeline: Kafka and PostgreSQL, with or without Docker.
//
//   up       Docker can run containers -> `docker compose up -d --wait` (docker-compose.yml).
//            Otherwise local mode: the same Kafka version as the compose image, from the official Apache
//            Kafka artifacts on Maven Central, one KRaft node on 127.0.0.1 with compose's settings (three with
//            KAFKA_NODES=3: the compose file's cluster profile); PostgreSQL is the server at DATABASE_URL,
//            started here if it is installed but not running.
//   down     stops exactly what `up` started (recorded in .local/stack.json); keeps all data.
//   destroy  down, then deletes the data: Kafka's log folder (or the compose volumes) and the database.
//            Asks first unless CONFIRM=1.
//   status   what runs, and where (make status shows it with the pipeline's health: scripts/status.ts --stack).
//
//   make up | make down | make destroy | make status
//
// The how lives in scripts/lib/stack/ (compose, local Kafka, local PostgreSQL, state file, processes); this
// script keeps the verbs. Env: STACK_MODE, KAFKA_NODES, KAFKA_BROKERS, KAFKA_SSL*, KAFKA_SASL_* (to ask a broker
// that is already up), DATABASE_URL, CONFIRM, LOG_LEVEL.

import { readFileSync, rmSync } from "node:fs";
import { createInterface } from "node:readline/promises";
import { join } from "node:path";
import { fail, parseCommandLine, UsageError } from "./lib/cli.ts";
import { KAFKA_SECURITY_ENV, parseStackMode, readConfig, type Config, type StackMode } from "./lib/config.ts";
import { describeDatabase, dropDatabase } from "./lib/db.ts";
import { createLogger, type Logger } from "./lib/log.ts";
import { compose, COMPOSE_FILE, composeCommand, dockerRuns, readCompose, requireCompose, type ComposeFacts } from "./lib/stack/compose.ts";
import { kafkaAnswers } from "./lib/kafka.ts";
import { liveTarget } from "./lib/live.ts";
import { describeStack } from "./lib/stack/describe.ts";
import { checkBrokerPorts, startLocalKafka } from "./lib/stack/kafka.ts";
import { postgresAnswers, startLocalPostgres, stopPostgres } from "./lib/stack/postgres.ts";
import { pidAlive, stopPid, waitForService } from "./lib/stack/process.ts";
import { readState, STATE_DIR, writeState, type Mode, type State } from "./lib/stack/state.ts";

const command = {
  script: "scripts/local_stack.ts",
  summary: "Start, stop or inspect Kafka and PostgreSQL: with Docker Compose when Docker runs, else locally.",
  positionals: "up|down|destroy|status",
  flags: {
    mode: { type: "string", arg: "MODE", help: "auto (default, or $STACK_MODE), docker or local" },
  },
  env: ["STACK_MODE", "KAFKA_NODES", "KAFKA_BROKERS", ...KAFKA_SECURITY_ENV, "DATABASE_URL", "CONFIRM", "LOG_LEVEL"],
  notes: "Run by: make up (KAFKA_NODES=3 for a three-node cluster), make down, make destroy, make status",
} as const;

/** The mode to run in; Docker mode asked for by name (`who`: "STACK_MODE=docker") needs compose, checked here. */
function chooseMode(wanted: StackMode, who: string, log: Logger): Mode {
  if (wanted === "docker") requireCompose(who);
  if (wanted !== "auto") return wanted;
  if (dockerRuns()) return "docker";
  log.info("Docker cannot run containers here: local mode (Kafka from Maven Central, local PostgreSQL)");
  return "local";
}

/** Who asks for compose when make up started the stack in Docker mode (down and destroy follow that mode). */
const STARTED_IN_DOCKER = "the stack make up started (Docker mode, .local/stack.json)";

const postgresUp = async (config: Config) => (await postgresAnswers(config.database)) !== undefined;

async function up(config: Config, mode: Mode, log: Logger): Promise<void> {
  await checkBrokerPorts(config);
  const facts = readCompose(readFileSync(COMPOSE_FILE, "utf8"), config.kafkaNodes);
  const state: State = readState() ?? { mode, kafkaNodes: config.kafkaNodes };
  if (state.mode !== mode) throw new Error(`the stack is already up in ${state.mode} mode: run "make down" first`);
  const nodes = state.kafkaNodes ?? state.kafka?.nodes.length ?? 1;
  if (nodes !== config.kafkaNodes) {
    throw new Error(`Kafka is already up with ${nodes} node${nodes === 1 ? "" : "s"}: run "make down" first, then make up KAFKA_NODES=${config.kafkaNodes}`);
  }
  state.kafkaNodes = config.kafkaNodes;
  if (mode === "docker") {
    // `--wait` (healthchecks) is Compose v2; with the older docker-compose, wait for the services here.
    const v2 = composeCommand()?.[0] === "docker";
    if (!compose(["up", "-d", ...(v2 ? ["--wait"] : [])], facts)) throw new Error("docker compose up failed (see above)");
    writeState(state);
    await waitForService("Kafka", () => kafkaAnswers(config), 120);
    await waitForService("PostgreSQL", () => postgresUp(config), 120);
  } else {
    await upLocalKafka(config, facts, state, log);
    writeState(state);
    await upLocalPostgres(config, facts, state, log);
  }
  log.info(`up (${mode} mode): Kafka ${config.kafkaBrokers.join(",")}, PostgreSQL ${describeDatabase(config.database)}`);
}

/** Starts the Kafka nodes of local mode that are not running (all of them the first time). */
async function upLocalKafka(config: Config, facts: ComposeFacts, state: State, log: Logger): Promise<void> {
  const alive = state.kafka?.nodes.filter((n) => pidAlive(n.pid)) ?? [];
  if (state.kafka && alive.length === state.kafka.nodes.length && (await kafkaAnswers(config))) {
    log.info(`Kafka ${state.kafka.version} already running (${alive.map((n) => `node ${n.id} pid ${n.pid}`).join(", ")})`);
  } else if (alive.length === 0 && (await kafkaAnswers(config))) {
    log.info(`a Kafka broker already answers at ${config.kafkaBrokers.join(",")}; using it (down will not stop it)`);
    delete state.kafka;
  } else {
    state.kafka = await startLocalKafka(config, facts, log, alive);
  }
}

async function upLocalPostgres(config: Config, facts: ComposeFacts, state: State, log: Logger): Promise<void> {
  const version = await postgresAnswers(config.database);
  if (version) {
    log.info(`PostgreSQL ${version} answers at ${describeDatabase(config.database)}`);
    if (Number.parseInt(version) !== facts.postgresMajor) {
      log.warn(`docker-compose.yml runs PostgreSQL ${facts.postgresMajor}; this server is ${version}`);
    }
  } else {
    state.postgres = startLocalPostgres(config.database, log);
    writeState(state);
    await waitForService("PostgreSQL", () => postgresUp(config), 60);
  }
}

async function down(log: Logger): Promise<State | undefined> {
  const state = readState();
  if (!state) {
    log.info("nothing to stop (make up did not start anything here)");
    return undefined;
  }
  if (state.mode === "docker") compose(["down"], readCompose(readFileSync(COMPOSE_FILE, "utf8"), state.kafkaNodes ?? 1), STARTED_IN_DOCKER);
  else {
    // All nodes of a cluster at once: one after the other, the last would wait for a quorum that has left.
    await Promise.all((state.kafka?.nodes ?? []).map((node) => stopPid(node.pid, `Kafka ${state.kafka!.version} node ${node.id}`, log)));
    if (state.postgres) stopPostgres(state.postgres, log);
  }
  writeState(undefined);
  return state;
}

async function confirm(config: Config, question: string): Promise<boolean> {
  if (config.confirm) return true;
  if (!process.stdin.isTTY) return false;
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return (await rl.question(`${question} Type "yes" to continue: `)).trim().toLowerCase() === "yes";
  } finally {
    rl.close();
  }
}

async function destroy(config: Config, mode: Mode, log: Logger): Promise<void> {
  const state = readState();
  const effective = state?.mode ?? mode;
  const db = config.database.database;
  const live = liveTarget(config).database.database;
  const lost =
    effective === "docker"
      ? [
          "  - the compose volumes: every Kafka topic and committed offset, and the whole PostgreSQL data",
          "    directory, with every loaded row (docker compose down -v)",
        ]
      : [
          `  - Kafka's data in ${STATE_DIR}/kafka/data and ${STATE_DIR}/kafka-cluster: every topic, message and committed offset`,
          `  - the database "${db}" at ${describeDatabase(config.database)}: users, products, orders, rejected rows,`,
          `    the load ledger and migration history; and "${live}", make stream's`,
          ...(state?.postgres?.how === "pg_ctl" ? [`  - the local PostgreSQL cluster in ${STATE_DIR}/postgres`] : []),
        ];
  process.stderr.write(`This deletes, with no way back:\n${lost.join("\n")}\nBatch files in batches/ stay (make clean removes them).\n`);
  if (!(await confirm(config, "Delete all of this?"))) {
    throw new UsageError('not confirmed; nothing deleted (answer "yes", or run with CONFIRM=1)');
  }
  if (effective === "docker") {
    if (!compose(["down", "-v"], readCompose(readFileSync(COMPOSE_FILE, "utf8"), state?.kafkaNodes ?? 1), STARTED_IN_DOCKER)) throw new Error("docker compose could not remove the volumes (see above)");
    writeState(undefined);
  } else {
    // The database goes while PostgreSQL still runs; Kafka's folder once the broker has stopped.
    if (await postgresUp(config)) {
      for (const name of [db, live]) await dropDatabase(config.database, name, log);
      log.info(`dropped database ${db} (and ${live}, if make stream had made it)`);
    }
    const stopped = await down(log);
    rmSync(join(STATE_DIR, "kafka", "data"), { recursive: true, force: true });
    rmSync(join(STATE_DIR, "kafka-cluster"), { recursive: true, force: true });
    if (stopped?.postgres?.how === "pg_ctl") rmSync(stopped.postgres.data, { recursive: true, force: true });
  }
  log.info("deleted; make up starts from empty");
}

/** The stack alone (make status adds the pipeline: scripts/status.ts --stack). */
async function status(config: Config): Promise<void> {
  const [stack, kafka] = await Promise.all([describeStack(config), kafkaAnswers(config)]);
  const out = [
    `mode:       ${stack.mode}`,
    `kafka:      ${config.kafkaBrokers.join(",")} ${kafka ? "answers" : "DOES NOT ANSWER"}${stack.kafka ? ` (${stack.kafka})` : ""}`,
    ...stack.nodes,
    `postgresql: ${describeDatabase(config.database)} ${stack.postgres ? `answers (${stack.postgres})` : "DOES NOT ANSWER"}`,
  ];
  process.stdout.write(`${out.join("\n")}\n`);
}

async function main(): Promise<void> {
  const parsed = parseCommandLine(command);
  if (!parsed) return;
  const [verb, ...extra] = parsed.positionals;
  if (extra.length > 0 || !["up", "down", "destroy", "status"].includes(verb ?? "")) {
    throw new UsageError(`expected one of up, down, destroy or status, got ${parsed.positionals.join(" ") || "nothing"}`);
  }
  const config = readConfig();
  const log = createLogger("stack", config.logLevel);
  const wanted = parsed.flags.mode === undefined ? config.stackMode : parseStackMode(parsed.flags.mode, "--mode");
  const who = parsed.flags.mode === undefined ? `STACK_MODE=${wanted}` : `--mode ${wanted}`;
  const mode = () => chooseMode(wanted, who, log);
  if (verb === "up") await up(config, mode(), log);
  else if (verb === "down") await down(log);
  else if (verb === "destroy") await destroy(config, mode(), log);
  else await status(config);
}

if (import.meta.main) main().catch(fail);
