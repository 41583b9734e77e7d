// What `make up` started, kept in .local/stack.json, so `make down` stops exactly that and nothing else.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { projectPath } from "../config.ts";

/** Local state of the project: the broker's jars and data, a PostgreSQL cluster of its own, this file. */
export const STATE_DIR = projectPath(".local");
const STATE_FILE = join(STATE_DIR, "stack.json");

export type Mode = "docker" | "local";

/** A PostgreSQL cluster started by this project: Debian's (pg_ctlcluster) or one of its own (initdb + pg_ctl). */
export type PostgresState =
  | { how: "pg_ctlcluster"; version: string; cluster: string }
  | { how: "pg_ctl"; bin: string; data: string; user?: string };

/** The Kafka nodes local mode started (one, or a cluster's three) and the jars' home. */
export interface KafkaState {
  version: string;
  home: string;
  nodes: { id: number; pid: number; port: number }[];
}

export interface State {
  mode: Mode;
  kafka?: KafkaState;
  /** Kafka nodes of the stack (1, or 3 for the cluster profile) */
  kafkaNodes?: number;
  postgres?: PostgresState;
}

export function readState(): State | undefined {
  if (!existsSync(STATE_FILE)) return undefined;
  const state = JSON.parse(readFileSync(STATE_FILE, "utf8")) as State & { kafka?: { pid?: number } };
  // Written before clusters: one node, its pid at the top.
  if (state.kafka?.pid !== undefined) {
    const { pid, version, home } = state.kafka as { pid: number; version: string; home: string };
    state.kafka = { version, home, nodes: [{ id: 1, pid, port: 9092 }] };
  }
  return state;
}

/** Records `state`; undefined removes the file (nothing is running any more). */
export function writeState(state: State | undefined): void {
  mkdirSync(STATE_DIR, { recursive: true });
  if (state) writeFileSync(STATE_FILE, `${JSON.stringify(state, null, 2)}\n`);
  else rmSync(STATE_FILE, { force: true });
}
