// Child processes for the stack: run a command to completion, tell whether a tool is installed or a pid is
// alive, stop a process politely and then firmly, and show the end of a log when something would not start.

import { spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import type { Logger } from "../log.ts";
import { pollUntil, TimeoutError } from "../retry.ts";

export interface RunResult {
  readonly ok: boolean;
  /** stdout and stderr together (quiet runs only) */
  readonly out: string;
  /** the command itself could not be started (not installed) */
  readonly missing: boolean;
}

/** Runs a command to completion; `quiet` collects its output instead of showing it. */
export function run(
  cmd: string,
  args: string[],
  options: { quiet?: boolean; timeout?: number; env?: Readonly<Record<string, string>> } = {},
): RunResult {
  const result = spawnSync(cmd, args, {
    stdio: options.quiet ? "pipe" : ["ignore", "inherit", "inherit"],
    timeout: options.timeout,
    env: options.env ? { ...process.env, ...options.env } : undefined,
    encoding: "utf8",
  });
  return { ok: result.status === 0, out: `${result.stdout ?? ""}${result.stderr ?? ""}`, missing: result.error !== undefined };
}

export function has(cmd: string): boolean {
  return Bun.which(cmd) !== null;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if the process is still there after `graceMs`. */
export async function stopPid(pid: number, what: string, log: Logger, graceMs = 30_000): Promise<void> {
  if (!pidAlive(pid)) return;
  process.kill(pid, "SIGTERM");
  try {
    await pollUntil(() => !pidAlive(pid), { timeout: graceMs, every: 200, what: `${what} to stop` });
  } catch (error) {
    if (!(error instanceof TimeoutError)) throw error;
    log.warn(`${what} (pid ${pid}) did not stop in ${graceMs / 1000}s; killing it`);
    process.kill(pid, "SIGKILL");
  }
  log.info(`stopped ${what} (pid ${pid})`);
}

/** The last lines of a log file, for an error message. */
export function tail(path: string, lines = 30): string {
  if (!existsSync(path)) return `(no ${path})`;
  return readFileSync(path, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * Waits until `check` answers true; fails early with `died()`'s text when that says the process it waits for
 * has exited (a broker that crashed at start-up need not be waited for).
 */
export async function waitForService(
  what: string,
  check: () => Promise<boolean>,
  seconds: number,
  died?: () => string | undefined,
): Promise<void> {
  let why: string | undefined;
  const answered = async () => {
    if (await check().catch(() => false)) return true;
    why = died?.();
    return why !== undefined;
  };
  try {
    await pollUntil(answered, { timeout: seconds * 1000, every: 500, what });
  } catch (error) {
    throw error instanceof TimeoutError ? new Error(`${what} did not answer within ${seconds}s`) : error;
  }
  if (why !== undefined) throw new Error(`${what} stopped while starting:\n${why}`);
}
