// The local PostgreSQL server: whatever answers at the configured target; if nothing does and the server is
// installed on this machine, Debian's cluster for that port (pg_ctlcluster) or a cluster of our own in
// .local/postgres (initdb + pg_ctl, trust auth, 127.0.0.1 only).

import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import type { DatabaseTarget } from "../config.ts";
import { describeDatabase, maintenance } from "../db.ts";
import { createLogger, type Logger } from "../log.ts";
import { has, run } from "./process.ts";
import { STATE_DIR, type PostgresState } from "./state.ts";

export type PostgresCluster = Extract<PostgresState, { how: "pg_ctl" }>;

/** The server's version when it answers at `target` (its `postgres` database), else undefined. */
export async function postgresAnswers(target: DatabaseTarget): Promise<string | undefined> {
  const sql = maintenance(target, createLogger("stack", "silent"));
  try {
    const [row] = await sql<{ version: string }[]>`select current_setting('server_version') as version`;
    return row?.version;
  } catch {
    return undefined;
  } finally {
    await sql.end({ timeout: 1 }).catch(() => undefined);
  }
}

/** Local mode: starts a server for `target`, which must be on this machine. */
export function startLocalPostgres(target: DatabaseTarget, log: Logger): PostgresState {
  const where = describeDatabase(target);
  if (!["127.0.0.1", "localhost", "::1"].includes(target.host) && !target.host.startsWith("/")) {
    throw new Error(`PostgreSQL at ${where} does not answer, and it is not on this machine to start it`);
  }
  // Debian / Ubuntu packages: a cluster on that port, started the packaged way.
  if (has("pg_lsclusters") && has("pg_ctlcluster")) {
    const clusters = run("pg_lsclusters", ["--no-header"], { quiet: true }).out.trim().split("\n");
    for (const line of clusters) {
      const [version, cluster, clusterPort] = line.trim().split(/\s+/);
      if (version && cluster && Number(clusterPort) === target.port) {
        log.info(`starting PostgreSQL ${version}/${cluster} on port ${target.port} (pg_ctlcluster)`);
        const started = run("pg_ctlcluster", ["--skip-systemctl-redirect", version, cluster, "start"]);
        if (!started.ok) throw new Error(`pg_ctlcluster ${version} ${cluster} start failed`);
        return { how: "pg_ctlcluster", version, cluster };
      }
    }
  }
  // Any other install with server binaries: a cluster of our own under .local/postgres.
  log.info(`starting a local PostgreSQL in ${resolve(STATE_DIR, "postgres")} on port ${target.port}`);
  return launchPostgres({ data: resolve(STATE_DIR, "postgres"), port: target.port, superuser: target.user }, where);
}

/**
 * A PostgreSQL cluster of our own in `data` (initdb the first time, trust auth, listening on 127.0.0.1:port),
 * started with pg_ctl. As root the server runs as the postgres user, because it refuses to run as root.
 */
export function launchPostgres(options: { data: string; port: number; superuser?: string }, where = "PostgreSQL"): PostgresCluster {
  const bin = [Bun.which("pg_ctl") ? "" : undefined, ...listPostgresBins()].find((b) => b !== undefined);
  if (bin === undefined) {
    throw new Error(
      `${where} does not answer and no PostgreSQL server is installed ` +
        "(apt-get install postgresql, or use Docker, or set DATABASE_URL)",
    );
  }
  const { data, port } = options;
  const tool = (name: string) => (bin ? join(bin, name) : name);
  const user = process.getuid?.() === 0 ? "postgres" : undefined;
  const as = (args: string[]) => (user ? ["runuser", ["-u", user, "--", ...args]] : [args[0]!, args.slice(1)]) as [string, string[]];
  if (!existsSync(join(data, "PG_VERSION"))) {
    mkdirSync(data, { recursive: true });
    if (user) run("chown", ["-R", user, data]);
    const init = run(...as([tool("initdb"), "-D", data, "-U", options.superuser ?? "postgres", "-A", "trust", "-E", "UTF8"]), { quiet: true });
    if (!init.ok) throw new Error(`initdb failed:\n${init.out}`);
  }
  const cluster: PostgresCluster = { how: "pg_ctl", bin, data, user };
  startCluster(cluster, port);
  return cluster;
}

/** (Re)starts a cluster made by launchPostgres; does nothing when it runs already. */
export function startCluster(cluster: PostgresCluster, port: number): void {
  if (pgCtl(cluster, ["status"]).ok) return;
  const options = `-p ${port} -k /tmp -c listen_addresses=127.0.0.1`;
  const start = pgCtl(cluster, ["-l", join(cluster.data, "server.log"), "-w", "-o", options, "start"]);
  if (!start.ok) throw new Error(`pg_ctl start failed (${start.out.trim()}), see ${join(cluster.data, "server.log")}`);
}

/** Can launchPostgres run here (initdb and pg_ctl installed)? */
export function postgresServerInstalled(): boolean {
  return Bun.which("pg_ctl") !== null || listPostgresBins().length > 0;
}

function listPostgresBins(): string[] {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return [];
  return (spawnSync("ls", [root], { encoding: "utf8" }).stdout ?? "")
    .split("\n")
    .filter(Boolean)
    .sort((a, b) => Number(b) - Number(a))
    .map((v) => join(root, v, "bin"))
    .filter((b) => existsSync(join(b, "pg_ctl")));
}

export function stopPostgres(state: PostgresState, log: Logger): void {
  if (state.how === "pg_ctlcluster") {
    run("pg_ctlcluster", ["--skip-systemctl-redirect", state.version, state.cluster, "stop"]);
    log.info(`stopped PostgreSQL ${state.version}/${state.cluster}`);
  } else {
    const result = pgCtl(state, ["-m", "fast", "stop"]);
    if (!result.ok) log.warn(`pg_ctl stop: ${result.out.trim()}`);
    else log.info(`stopped the local PostgreSQL in ${state.data}`);
  }
}

/** Runs pg_ctl for a cluster made by launchPostgres (as its owner when we are root). */
function pgCtl(cluster: PostgresCluster, args: string[]) {
  const command = [cluster.bin ? join(cluster.bin, "pg_ctl") : "pg_ctl", "-D", cluster.data, ...args];
  return cluster.user
    ? run("runuser", ["-u", cluster.user, "--", ...command], { quiet: true })
    : run(command[0]!, command.slice(1), { quiet: true });
}
