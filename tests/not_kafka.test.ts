// An address in KAFKA_BROKERS where something answers that is not Kafka: a web server, a TCP listener that closes
// every connection, one that takes connections and says nothing. Every script that talks to Kafka (producer,
// consumer, status, dashboard) and make up name the address and KAFKA_BROKERS within seconds and exit 1; kafkajs
// alone retries for about 30 s and says "Broker not connected" or "Closed connection". A listener that only
// stays silent is not named while another broker of KAFKA_BROKERS answers: that is a broker of a cluster that
// hangs, waited for as before.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server } from "node:net";
import { join } from "node:path";
import { readConfig } from "../scripts/lib/config.ts";
import { createKafka } from "../scripts/lib/kafka.ts";
import { explainKafkaFailure } from "../scripts/lib/kafka_errors.ts";
import { createLogger } from "../scripts/lib/log.ts";
import { checkNodePorts } from "../scripts/lib/stack/kafka.ts";
import { BROKERS, freePorts, runOk, runScript, tempDir } from "./helpers.ts";

const quiet = createLogger("test", "silent");

/** A TCP listener on 127.0.0.1 that closes each connection at once, or takes it and never answers. */
function tcpListener(behaviour: "close" | "silent", port = 0): Promise<Server> {
  const server = createServer((socket) => {
    socket.on("error", () => undefined);
    if (behaviour === "close") socket.end();
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

const portOf = (server: Server) => (server.address() as { port: number }).port;

describe("something that is not Kafka at the address KAFKA_BROKERS names", () => {
  const tmp = tempDir("sales-not-kafka-");
  const input = join(tmp.path, "input.csv");
  let web: ReturnType<typeof Bun.serve>;
  let closing: Server;
  let silent: Server;
  /** [what it is, its address, what the message says it did] */
  let listeners: [string, string, string][];

  beforeAll(async () => {
    web = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("a web page\n") });
    [closing, silent] = await Promise.all([tcpListener("close"), tcpListener("silent")]);
    listeners = [
      ["a web server", `127.0.0.1:${web.port}`, 'is not a Kafka broker: it answered "HTTP/1.1 400 Bad Request" to a Kafka request'],
      ["a listener that closes", `127.0.0.1:${portOf(closing)}`, "is not a Kafka broker: it closed the connection without answering a Kafka request"],
      ["a silent listener", `127.0.0.1:${portOf(silent)}`, "is not a Kafka broker, or one that hangs: it accepts connections but does not answer Kafka's requests"],
    ];
    await runOk("make_data.ts", ["--out", input, "--rows", "5"], {});
  });

  afterAll(() => {
    web?.stop(true);
    closing?.close();
    silent?.close();
    tmp.remove();
  });

  const scripts: [string, () => string[], (address: string, did: string) => string][] = [
    ["producer.ts", () => ["--file", input, "--rate", "max"], notKafka],
    ["consumer_batch_to_csv.ts", () => ["--until-idle", "2"], notKafka],
    ["status.ts", () => [], notKafka],
    ["dashboard.ts", () => ["--port", String(freePorts(1)[0])], notKafka],
    ["local_stack.ts", () => ["up"], heldPort],
  ];

  function notKafka(address: string, did: string): string {
    return `what answers at ${address} (KAFKA_BROKERS=${address}) ${did}`;
  }

  function heldPort(address: string, did: string): string {
    return `make up starts Kafka (KAFKA_BROKERS=${address}) on ${address}, but another program already listens there (${did.replace(/^.*?: /, "")})`;
  }

  test.each(scripts)("%s names the address and KAFKA_BROKERS within seconds and exits 1", async (script, args, says) => {
    await Promise.all(
      listeners.map(async ([what, address, did]) => {
        const started = performance.now();
        const env = { KAFKA_BROKERS: address, KAFKA_TOPIC: "not_kafka", BATCHES_DIR: join(tmp.path, "batches"), DATABASE_URL: "postgres://postgres@127.0.0.1:1/none" };
        const result = await runScript(script, args(), env, 60_000);
        const output = `${result.stdout}${result.stderr}`;
        // Before: exit 1 after 25 to 34 s of kafkajs' retries, saying "Closed connection" or "Broker not connected".
        expect({ what, code: result.code, said: output.includes(says(address, did)) ? "it" : output, within10s: performance.now() - started < 10_000 }).toEqual({
          what,
          code: 1,
          said: "it",
          within10s: true,
        });
      }),
    );
  });

  test("a silent address beside a broker that answers is a broker of a cluster that hangs: waited for, not named", async () => {
    const address = `127.0.0.1:${portOf(silent)}`;
    const admin = createKafka(readConfig({ KAFKA_BROKERS: address }), quiet, { probe: true }).admin();
    const error = await admin.connect().then(() => admin.describeCluster()).then(
      () => undefined,
      (e: unknown) => e,
    );
    await admin.disconnect();
    expect((await explainKafkaFailure(error, readConfig({ KAFKA_BROKERS: address })))?.message).toContain(notKafka(address, "is not a Kafka broker, or one that hangs"));
    expect(await explainKafkaFailure(error, readConfig({ KAFKA_BROKERS: `${address},${BROKERS}` }))).toBeUndefined();
  });

  test("local mode names a program on the port Kafka's controller takes (the one after KAFKA_BROKERS's), before starting Kafka", async () => {
    // A free port whose next one a listener holds.
    let held: Server | undefined;
    let port = 0;
    for (let tries = 0; !held && tries < 20; tries++) {
      port = freePorts(1)[0]!;
      held = await tcpListener("close", port + 1).catch(() => undefined);
    }
    try {
      // What startLocalKafka checks before it writes or starts anything.
      await expect(checkNodePorts([{ id: 1, port, controllerPort: port + 1 }], 1)).rejects.toThrow(
        `make up starts the controller of Kafka (the port after its clients') on 127.0.0.1:${port + 1}, but another program already listens there ` +
          "(it closed the connection without answering a Kafka request): stop it, or choose another port in KAFKA_BROKERS",
      );
    } finally {
      held?.close();
    }
  });
});
