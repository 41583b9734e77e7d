// `make status`, run as a user runs it: one report in which each service has one line (kafka:, postgresql:),
// keeping what the stack part showed (the mode, the local Kafka nodes, PostgreSQL's version) beside the
// pipeline's health (the topic and lag, batch files, rows, the ledger), and whether the producer, consumer and
// loader look alive (tests/metrics.test.ts has a running pipeline's lines beside its /metrics).

import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { BASE, BROKERS, createTestDatabase, ROOT, tempDir, uniqueName, type TestDatabase } from "./helpers.ts";

/** `make -s status` from the repository with this topic, database and batch folder: its exit code, stderr and lines. */
async function makeStatus(topic: string, db: TestDatabase, dir: string): Promise<{ code: number; err: string; lines: string[] }> {
  const env = { ...process.env, KAFKA_BROKERS: BROKERS, KAFKA_TOPIC: topic, DATABASE_URL: db.url, BATCHES_DIR: dir };
  const make = Bun.spawn(["make", "-s", "status"], { cwd: ROOT, env, stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(make.stdout).text(), new Response(make.stderr).text(), make.exited]);
  return { code, err, lines: out.trimEnd().split("\n") };
}

/** The Kafka nodes local mode started here, from .local/stack.json: none in Docker mode or before make up. */
function localNodes(): { id: number; port: number; pid: number }[] {
  const state = join(ROOT, ".local", "stack.json");
  if (!existsSync(state)) return [];
  return (JSON.parse(readFileSync(state, "utf8")) as { kafka?: { nodes: { id: number; port: number; pid: number }[] } }).kafka?.nodes ?? [];
}

describe("make status", () => {
  test("prints kafka: and postgresql: once each, with what make up started and what the pipeline holds", async () => {
    const [tmp, db, topic] = [tempDir("sales-status-"), await createTestDatabase(), uniqueName("status")];
    try {
      const { code, err, lines } = await makeStatus(topic, db, tmp.path);
      expect({ code, err }).toEqual({ code: 0, err: "" });
      const starting = (prefix: string) => lines.filter((l) => l.startsWith(prefix));
      expect(starting("kafka:")).toHaveLength(1);
      expect(starting("postgresql:")).toHaveLength(1);
      expect(starting("mode:")).toHaveLength(1);

      expect(starting("kafka:")[0]).toContain(`${BROKERS}`);
      expect(starting("kafka:")[0]).toContain(`topic ${topic}: 0 messages in 0 partitions`);
      const [{ version }] = (await db.sql`select current_setting('server_version') as version`) as unknown as [{ version: string }];
      expect(starting("postgresql:")[0]).toBe(`postgresql: ${db.target.host}:${db.target.port}/${db.name} (PostgreSQL ${version})`);
      expect(lines).toContain("  orders 0, users 0, products 0, open rejections 0, rows with warnings 0, batch files loaded 0");
      expect(starting("batches:")[0]).toBe(`batches:    0 files in ${tmp.path}/, 0 not loaded yet, 0 set aside in failed/`);
      expect(lines).toContain("  ledger: inserted 0, duplicates 0, rejected 0; loader sessions 0");
      expect(lines.slice(-3)).toEqual([
        `alive:      producer no: no record appended to ${topic} in the last 60 s`,
        `            consumer no: group ${BASE.kafkaGroupId} has no member (no topic ${topic})`,
        "            loader no: no session named load, no load yet",
      ]);
      expect(starting("  lag by partition")).toEqual([]);
      for (const n of localNodes()) expect(lines).toContain(`  node ${n.id} 127.0.0.1:${n.port} pid ${n.pid} running`);
      if (localNodes().length > 0) expect(starting("kafka:")[0]).toContain("(local ");
    } finally {
      await db.drop();
      tmp.remove();
    }
  });
});
