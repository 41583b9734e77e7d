// Unit tests for scripts/lib/cli.ts: flag parsing, --help and the help text.

import { describe, expect, test } from "bun:test";
import { type Command, helpText, parseCli, UsageError } from "../scripts/lib/cli.ts";
import { PATHS_HELP } from "../scripts/lib/config.ts";

const command = {
  script: "scripts/example.ts",
  summary: "Do the example thing.\nSecond line of the summary.",
  flags: {
    file: { type: "string", short: "f", arg: "FILE", help: "input file" },
    rate: { type: "string", arg: "N|max", help: "messages per second" },
    watch: { type: "boolean", short: "w", help: "keep going" },
  },
  env: ["BATCH_SIZE", "PRODUCER_RATE"],
  notes: "Run by: make example",
} as const satisfies Command<Record<string, { type: "string" | "boolean"; short?: string; arg?: string; help: string }>>;

/** Runs `fn` with process.stdout.write captured; returns its result and what it printed. */
function captureStdout<T>(fn: () => T): { result: T; output: string } {
  const original = process.stdout.write;
  let output = "";
  process.stdout.write = ((chunk: string | Uint8Array) => {
    output += typeof chunk === "string" ? chunk : new TextDecoder().decode(chunk);
    return true;
  }) as typeof process.stdout.write;
  try {
    return { result: fn(), output };
  } finally {
    process.stdout.write = original;
  }
}

describe("parseCli", () => {
  test("returns the values of long and short flags", () => {
    expect(parseCli(command, ["-f", "data/x.csv", "--rate", "max", "-w"])).toEqual({
      file: "data/x.csv",
      rate: "max",
      watch: true,
    });
  });

  test("returns no values when no flag is given", () => {
    expect(parseCli(command, [])).toEqual({});
  });

  test("accepts --flag=value", () => {
    expect(parseCli(command, ["--rate=50"])).toEqual({ rate: "50" });
  });

  test("prints the help and returns undefined for --help", () => {
    const { result, output } = captureStdout(() => parseCli(command, ["--help"]));
    expect(result).toBeUndefined();
    expect(output).toBe(helpText(command));
  });

  test("prints the help for -h, whatever other flags are given", () => {
    const { result, output } = captureStdout(() => parseCli(command, ["--rate", "5", "-h"]));
    expect(result).toBeUndefined();
    expect(output).toContain("Usage: bun scripts/example.ts [flags]");
  });

  test("prints nothing when --help is not given", () => {
    const { output } = captureStdout(() => parseCli(command, ["-w"]));
    expect(output).toBe("");
  });

  test("lists the flags and environment variables in the help", () => {
    const { output } = captureStdout(() => parseCli(command, ["--help"]));
    for (const text of ["-f, --file FILE", "--rate N|max", "-w, --watch", "-h, --help", "BATCH_SIZE", "PRODUCER_RATE"]) {
      expect(output).toContain(text);
    }
  });

  test("throws a UsageError for an unknown flag, pointing at --help", () => {
    const run = () => parseCli(command, ["--nope"]);
    expect(run).toThrow(UsageError);
    expect(run).toThrow("--nope");
    expect(run).toThrow('Run "bun scripts/example.ts --help" for the flags.');
  });

  test("throws a UsageError for a stray argument", () => {
    expect(() => parseCli(command, ["data/x.csv"])).toThrow(UsageError);
  });

  test("throws a UsageError for a string flag without its value", () => {
    expect(() => parseCli(command, ["--file"])).toThrow(UsageError);
  });

  test("throws a UsageError for a value given to a boolean flag", () => {
    expect(() => parseCli(command, ["--watch=yes"])).toThrow(UsageError);
  });
});

describe("UsageError", () => {
  test("is an Error named UsageError", () => {
    const error = new UsageError("bad flag");
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe("UsageError");
    expect(error.message).toBe("bad flag");
  });
});

describe("helpText", () => {
  test("lays out usage, summary, aligned flags, env defaults and notes", () => {
    expect(helpText(command)).toBe(
      [
        "Usage: bun scripts/example.ts [flags]",
        "",
        "Do the example thing.",
        "Second line of the summary.",
        "",
        "Flags:",
        "  -f, --file FILE   input file",
        "      --rate N|max  messages per second",
        "  -w, --watch       keep going",
        "  -h, --help        show this help",
        "",
        "Environment (flags win over these; the repository's .env fills in what is not set):",
        "  BATCH_SIZE            default 100",
        '  PRODUCER_RATE         default 1 (messages per second, or "max")',
        "",
        PATHS_HELP,
        "",
        "Run by: make example",
        "",
      ].join("\n"),
    );
  });

  test("leaves out the notes section when there are no notes", () => {
    const text = helpText({ script: "s.ts", summary: "S.", flags: {}, env: [] });
    expect(text).toBe(
      [
        "Usage: bun s.ts [flags]",
        "",
        "S.",
        "",
        "Flags:",
        "  -h, --help  show this help",
        "",
        "Environment (flags win over these; the repository's .env fills in what is not set):",
        "",
        PATHS_HELP,
        "",
      ].join("\n"),
    );
  });

  test("says (none) for a variable without a documented default", () => {
    const text = helpText({ script: "s.ts", summary: "S.", flags: {}, env: ["SOMETHING_ELSE"] });
    expect(text).toContain("  SOMETHING_ELSE        default (none)\n");
  });
});
