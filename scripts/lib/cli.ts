// Flags and failure handling shared by every script: `parseArgs({ strict: true })`, a `--help` that lists
// the flags and the environment variables the script reads, and `fail` for `main().catch(fail)`.

import { parseArgs } from "node:util";
import { ENV_DOCS, envLogLevel, PATHS_HELP } from "./config.ts";
import { redact } from "./log.ts";

export interface Flag {
  readonly type: "string" | "boolean";
  readonly short?: string;
  /** placeholder shown in --help, e.g. "N" */
  readonly arg?: string;
  readonly help: string;
}

export interface Command<F extends Record<string, Flag>> {
  /** e.g. "scripts/producer.ts" */
  readonly script: string;
  /** one or more lines describing what the script does */
  readonly summary: string;
  readonly flags: F;
  /** environment variables the script reads (documented in ENV_DOCS) */
  readonly env: readonly string[];
  /** extra lines for the help text (examples, make targets) */
  readonly notes?: string;
  /** positional arguments the script takes, as shown in the usage line ("COMMAND"); none when absent */
  readonly positionals?: string;
}

export type FlagValues<F extends Record<string, Flag>> = {
  [K in keyof F]?: F[K]["type"] extends "boolean" ? boolean : string;
};

/** Thrown for a bad flag; `fail` prints it with a hint and exits 2, as command-line tools do. */
export class UsageError extends Error {
  override name = "UsageError";
}

export function helpText<F extends Record<string, Flag>>(command: Command<F>): string {
  const rows = Object.entries(command.flags).map(([name, flag]) => {
    const left = `${flag.short ? `-${flag.short}, ` : "    "}--${name}${flag.arg ? ` ${flag.arg}` : ""}`;
    return [left, flag.help] as const;
  });
  rows.push(["-h, --help", "show this help"]);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  const envWidth = Math.max(22, ...command.env.map((name) => name.length + 2));
  const env = command.env.map((name) => `  ${name.padEnd(envWidth)}default ${ENV_DOCS[name] ?? "(none)"}`);
  return [
    `Usage: bun ${command.script}${command.positionals ? ` ${command.positionals}` : ""} [flags]`,
    "",
    command.summary,
    "",
    "Flags:",
    ...rows.map(([left, right]) => `  ${left.padEnd(width)}${right}`),
    "",
    "Environment (flags win over these; the repository's .env fills in what is not set):",
    ...env,
    "",
    PATHS_HELP,
    ...(command.notes ? ["", command.notes] : []),
    "",
  ].join("\n");
}

/**
 * Parses `args` against the command's flags (and positional arguments, when the command takes them). Returns
 * undefined after printing --help (the caller returns); throws UsageError for unknown flags, missing values or
 * stray arguments.
 */
export function parseCommandLine<F extends Record<string, Flag>>(
  command: Command<F>,
  args: string[] = process.argv.slice(2),
): { flags: FlagValues<F>; positionals: string[] } | undefined {
  const options: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const [name, flag] of Object.entries(command.flags)) {
    options[name] = flag.short ? { type: flag.type, short: flag.short } : { type: flag.type };
  }
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: command.positionals !== undefined }) as typeof parsed;
  } catch (error) {
    throw new UsageError(`${(error as Error).message}\nRun "bun ${command.script} --help" for the flags.`);
  }
  if (parsed.values.help) {
    process.stdout.write(helpText(command));
    return undefined;
  }
  return { flags: parsed.values as FlagValues<F>, positionals: parsed.positionals };
}

/** parseCommandLine for a script without positional arguments: just the flags. */
export function parseCli<F extends Record<string, Flag>>(command: Command<F>, args: string[] = process.argv.slice(2)): FlagValues<F> | undefined {
  return parseCommandLine(command, args)?.flags;
}

/** For `main().catch(fail)`: log the error where the user looks, set a non-zero exit code. */
export function fail(error: unknown): void {
  const err = error instanceof Error ? error : new Error(String(error));
  process.stderr.write(redact(`error: ${err.message}\n`));
  if (envLogLevel() === "debug" && err.stack) process.stderr.write(redact(`${err.stack}\n`));
  process.exitCode = err instanceof UsageError ? 2 : 1;
}
