// What `make up` started, kept in .local/stack.json, so `make down` stops exactly that and nothing else.

import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/** Local state of the project: the broker's jars and data, a PostgreSQL cluster of its own, this file. */
export const STATE_DIR = ".local";
const STATE_FILE = join(STATE_DIR, "stack.json");

export type Mode = "docker" | "local";

/** A PostgreSQL cluster started by this project: Debian's (pg_ctlcluster) or one of its own (initdb + pg_ctl). */
export type PostgresState =
  | { how: "pg_ctlcluster"; version: string; cluster: string }
  | { how: "pg_ctl"; bin: string; data: string; user?: string };

export interface State {
  mode: Mode;
  kafka?: { pid: number; version: string; home: string };
  postgres?: PostgresState;
}

export function readState(): State | undefined {
  return existsSync(STATE_FILE) ? (JSON.parse(readFileSync(STATE_FILE, "utf8")) as State) : undefined;
}

/** Records `state`; undefined removes the file (nothing is running any more). */
export function writeState(state: State | undefined): void {
  mkdirSync(STATE_DIR, { recursive: true });
  if (state) writeFileSync(STATE_FILE, `${JSON.stringify(state, null, 2)}\n`);
  else rmSync(STATE_FILE, { force: true });
}
