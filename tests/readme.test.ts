// The README's commands work as shown, so the README cannot drift from the code. Every `bun ...scripts/X.ts`
// it names must exist and take the flags shown (its --help lists them); every `make` target it names must be
// in the Makefile and accepted by make. The commands of its bash blocks then run in README order, as a new
// user would type them after `make demo`: each in a fresh shell (the system's PATH and HOME, nothing else)
// plus the README's own setup line, in a copy of the repository whose .env names a topic, group and database
// of the test's own (the README's "sales_topic" and "sales-batcher" read as those). The commands that cannot
// run here say why in NOT_RUN.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { copyRepository, freshShellEnv, ROOT, type RepositoryCopy } from "./helpers.ts";

const README = readFileSync(join(ROOT, "README.md"), "utf8");
const PINNED_BUN = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { packageManager: string }).packageManager.replace("bun@", "");

/** Commands of the README's bash blocks that a test must not run, and why. */
const NOT_RUN: Readonly<Record<string, string>> = {
  "make test": "the whole suite, this file included",
  "make test-faults": "a test suite of its own",
  "make chaos": "a test suite of its own, for minutes",
  "make stream": "runs until Ctrl-C",
  "make stream RATE=20": "runs until Ctrl-C",
  "make stream STREAM_MAX_AGE=10": "runs until Ctrl-C",
  "bun scripts/consumer_batch_to_csv.ts --allow-gaps": "runs until Ctrl-C",
  "BATCHES_DIR=/var/lib/sales/batches bun scripts/consumer_batch_to_csv.ts": "runs until Ctrl-C, in a system folder",
  "BATCHES_DIR=/var/lib/sales/batches bun scripts/load.ts --watch": "runs until Ctrl-C, in a system folder",
  "echo 'BI_READER_PASSWORD=choose-one' >> .env": "would give bi_reader, a role of the whole server, a password",
  [`PGPASSWORD="$(cat .local/bi_reader.password)" psql -h 127.0.0.1 -p 5432 -U bi_reader -d sales -c 'select * from v_pipeline_health'`]:
    "the password file is in the checkout whose make migrate gave bi_reader its first password, and the database is the README's sales",
  "make down": "stops the services every other test uses",
  "make up KAFKA_NODES=3": "starts a cluster in place of the single node the other tests use",
  "make destroy": "deletes the data of the services every other test uses",
};

/** What some commands must print (after the renaming to the test's topic), beside exiting 0. */
function expectedOutput(topic: string): Readonly<Record<string, readonly string[]>> {
  return {
    "make demo": ["orders 9994, users 793, products 1862", "total sales 2297200.8603"],
    "sed -n 2p data/Sample-Superstore.csv": ["1,CA-2016-152156,11/8/2016,11/11/2016,Second Class,CG-12520,Claire Gute"],
    "bun scripts/trace.ts --row-id 1": [
      "1. csv       Sample-Superstore.csv, line 2:",
      `2. kafka     topic ${topic}, partition 0, offset 0`,
      "key Sample-Superstore.csv:1",
      "headers source_file=Sample-Superstore.csv source_line=2",
      `3. batch     batches/${topic}_p0_000000000000-000000000099_`,
      "100 records, 100 inserted, 0 duplicates, 0 rejected",
      "orders row_id 1: order CA-2016-152156 of 2016-11-08",
    ],
    [`head -2 batches/${topic}_p0_000000000000-000000000099_*.csv`]: [`,Sample-Superstore.csv,2,,${topic},0,0,`],
    "sed -n 2p data/exports/v_sales.csv": ["1,CA-2016-152156,2016-11-08,2016-11-11,Second Class"],
  };
}

/** The README's fenced blocks of one language, as their text; only blocks whose fence starts a line. */
function blocks(language: string): string[] {
  return [...README.matchAll(/^```(\w*)\n([\s\S]*?)^```/gm)].filter((m) => m[1] === language).map((m) => m[2]!);
}

/** The commands of the bash blocks in order, each once, without comments. */
function commands(): string[] {
  const lines = blocks("bash").flatMap((block) => block.split("\n"));
  const cleaned = lines.map((line) => line.replace(/\s+#\s.*$/, "").trim()).filter((line) => line !== "" && !line.startsWith("#"));
  return [...new Set(cleaned)];
}

/** Every place the README names a command: bash lines and inline code. */
function mentions(): string[] {
  const inline = [...README.matchAll(/`([^`\n]+)`/g)].map((m) => m[1]!);
  return [...commands(), ...inline];
}

/** `bun .../scripts/x.ts --flags` anywhere: the script as a repository path, and the flags given. */
function scriptMentions(): { script: string; flags: string[]; text: string }[] {
  return mentions().flatMap((text) =>
    [...text.matchAll(/\bbun\s+\S*?(scripts\/\w+\.ts)([^|;&]*)/g)].map((m) => ({ script: m[1]!, flags: m[2]!.match(/--[a-z][a-z-]*/g) ?? [], text })),
  );
}

/** `make target VAR=value` anywhere; plain `make` is the help target. */
function makeMentions(): { target: string; vars: string[]; text: string }[] {
  return mentions().flatMap((text) =>
    [...text.matchAll(/(?:^|[\s;&|(])make(?:\s+([a-z][\w-]*))?((?:\s+[A-Z_]+=\S+)*)(?=\s|$|[;&|)])/g)].map((m) => ({
      target: m[1] ?? "help",
      vars: m[2]!.trim().split(/\s+/).filter(Boolean),
      text,
    })),
  );
}

const SETUP = commands().filter((c) => c.startsWith("export PATH="));

/**
 * A fresh shell's environment. Where make found the pinned Bun on PATH already (no .local/bun), a user's shell
 * has it too, and so does this one.
 */
function newShellEnv(): Record<string, string> {
  const env = freshShellEnv();
  return existsSync(join(ROOT, ".local", "bun")) ? env : { ...env, PATH: `${dirname(process.execPath)}:${env.PATH}` };
}

describe("the README", () => {
  let repo: RepositoryCopy;

  beforeAll(() => {
    repo = copyRepository("readme");
  });

  afterAll(async () => {
    await repo?.remove();
  });

  /** Runs `command` in a fresh shell in the copy, after the README's setup line. */
  async function shell(command: string, setup = SETUP): Promise<{ code: number; output: string }> {
    const child = Bun.spawn(["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", [...setup, command].join("\n")], {
      cwd: repo.root,
      env: newShellEnv(),
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 170_000);
    const [stdout, stderr, code] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
    clearTimeout(timer);
    return { code, output: `${stdout}${stderr}` };
  }

  /** The command as it runs here: the README's topic and group are the copy's. */
  const asHere = (command: string) => command.replaceAll("sales_topic", repo.topic).replaceAll("sales-batcher", repo.group);

  test("shows one setup line, before the walkthrough, that puts the pinned Bun on PATH", async () => {
    expect(SETUP).toHaveLength(1);
    expect(README.indexOf(SETUP[0]!)).toBeLessThan(README.indexOf("## Walkthrough"));
    const { code, output } = await shell("command -v bun && bun --version");
    expect(code, output).toBe(0);
    expect(output.trim().split("\n").at(-1)).toBe(PINNED_BUN);
    if (existsSync(join(ROOT, ".local", "bun"))) expect(output).toContain(join(repo.root, ".local/bun/node_modules/.bin/bun"));
  });

  test("names only scripts that exist, with flags their --help lists", async () => {
    const named = scriptMentions();
    expect(named.length).toBeGreaterThan(10);
    const helps = new Map<string, string>();
    for (const { script, flags, text } of named) {
      if (!helps.has(script)) {
        expect(existsSync(join(ROOT, script)), `${text}: ${script} does not exist`).toBe(true);
        const help = await shell(`bun ${script} --help`);
        expect(help.code, `${script} --help\n${help.output}`).toBe(0);
        helps.set(script, help.output);
      }
      for (const flag of flags) expect(helps.get(script), `${text}: ${script} has no ${flag}`).toMatch(new RegExp(`(^|[ ,])${flag}[ =\\n]`, "m"));
    }
  });

  test("names only make targets the Makefile has and make accepts as written", async () => {
    const makefile = readFileSync(join(ROOT, "Makefile"), "utf8");
    const targets = new Set([...makefile.matchAll(/^([a-zA-Z_-]+):/gm)].map((m) => m[1]!));
    const named = new Map(makeMentions().map((m) => [[m.target, ...m.vars].join(" "), m]));
    expect(named.size).toBeGreaterThan(20);
    for (const [invocation, { target, text }] of named) {
      expect(targets.has(target), `${text}: the Makefile has no target ${target}`).toBe(true);
      const dryRun = await shell(`make -n ${invocation}`);
      expect(dryRun.code, `${text}: make -n\n${dryRun.output}`).toBe(0);
    }
  });

  test("lists a reason for each command it does not run, and each is still in the README", () => {
    const shown = new Set(commands());
    for (const command of Object.keys(NOT_RUN)) expect(shown.has(command), `NOT_RUN names "${command}", which the README no longer shows`).toBe(true);
  });

  const runnable = commands().filter((c) => !SETUP.includes(c) && !(c in NOT_RUN));

  test("has the tour's commands and the quick start among those it runs", () => {
    expect(runnable[0]).toBe("make demo");
    expect(runnable).toContain("bun scripts/trace.ts --row-id 1");
    expect(runnable).toContain("bun scripts/producer.ts --rate 5 --limit 50");
  });

  test.each(runnable)("runs as shown in a fresh shell: %s", async (command) => {
    const { code, output } = await shell(asHere(command));
    expect(code, output).toBe(0);
    for (const text of expectedOutput(repo.topic)[asHere(command)] ?? []) expect(output).toContain(text);
  });
});
