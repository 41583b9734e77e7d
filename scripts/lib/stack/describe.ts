// What `make up` started here and whether it answers, for `make status` (scripts/status.ts --stack) and
// `local_stack.ts status`: the mode, the local Kafka nodes and their processes, the PostgreSQL server's version.

import type { Config } from "../config.ts";
import { postgresAnswers } from "./postgres.ts";
import { pidAlive } from "./process.ts";
import { readState } from "./state.ts";

export interface StackFacts {
  /** "local (started by make up)", or "nothing started by make up" */
  readonly mode: string;
  /** "local 4.1.1, 1 node" when make up started Kafka here */
  readonly kafka: string | undefined;
  /** a line per Kafka node local mode started: "  node 1 127.0.0.1:9092 pid 4242 running" */
  readonly nodes: readonly string[];
  /** the PostgreSQL server's version, when it answers */
  readonly postgres: string | undefined;
}

export async function describeStack(config: Config): Promise<StackFacts> {
  const state = readState();
  const kafka = state?.kafka;
  return {
    mode: state ? `${state.mode} (started by make up)` : "nothing started by make up",
    kafka: kafka && `local ${kafka.version}, ${kafka.nodes.length} node${kafka.nodes.length === 1 ? "" : "s"}`,
    nodes: (kafka?.nodes ?? []).map(
      (n) => `  node ${n.id} 127.0.0.1:${n.port} pid ${n.pid} ${pidAlive(n.pid) ? "running" : "NOT RUNNING (make up starts it again)"}`,
    ),
    postgres: await postgresAnswers(config.database),
  };
}
