// Unit tests for the pure parts of scripts/lib/kafka.ts: telling an unreachable broker from a wrong request,
// and waiting for the broker to come back.

import { describe, expect, test } from "bun:test";
import { isKafkaUnavailable, whileKafkaUnavailable } from "../scripts/lib/kafka.ts";
import { createLogger } from "../scripts/lib/log.ts";

function kafkaError(name: string, extra: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(`${name} happened`), { name, ...extra });
}

describe("isKafkaUnavailable", () => {
  test("is true for connection errors and a missing coordinator", () => {
    expect(isKafkaUnavailable(kafkaError("KafkaJSConnectionError"))).toBe(true);
    expect(isKafkaUnavailable(kafkaError("KafkaJSGroupCoordinatorNotFound"))).toBe(true);
  });

  test("looks through the cause chain and at the retriable flag", () => {
    const wrapped = kafkaError("KafkaJSNonRetriableError", { cause: kafkaError("KafkaJSConnectionClosedError") });
    expect(isKafkaUnavailable(wrapped)).toBe(true);
    expect(isKafkaUnavailable(kafkaError("KafkaJSProtocolError", { retriable: true }))).toBe(true);
  });

  test("is false for errors that waiting would not fix", () => {
    expect(isKafkaUnavailable(kafkaError("KafkaJSProtocolError", { retriable: false }))).toBe(false);
    expect(isKafkaUnavailable(new TypeError("x is undefined"))).toBe(false);
    expect(isKafkaUnavailable(undefined)).toBe(false);
  });
});

describe("whileKafkaUnavailable", () => {
  const log = createLogger("test", "silent");

  test("tries again while the broker is unreachable, then returns the result", async () => {
    let calls = 0;
    const value = await whileKafkaUnavailable(
      "sending",
      async () => {
        if (++calls < 3) throw kafkaError("KafkaJSConnectionError");
        return "sent";
      },
      log,
    );
    expect({ value, calls }).toEqual({ value: "sent", calls: 3 });
  });

  test("does not retry an error that is not about reachability", async () => {
    let calls = 0;
    const failing = whileKafkaUnavailable(
      "sending",
      async () => {
        calls++;
        throw kafkaError("KafkaJSInvalidRecordBatch");
      },
      log,
    );
    await expect(failing).rejects.toThrow("KafkaJSInvalidRecordBatch happened");
    expect(calls).toBe(1);
  });

  test("stops retrying once the signal is aborted (Ctrl-C during an outage)", async () => {
    const controller = new AbortController();
    controller.abort("stop");
    const failing = whileKafkaUnavailable("sending", async () => Promise.reject(kafkaError("KafkaJSConnectionError")), log, controller.signal);
    await expect(failing).rejects.toThrow("KafkaJSConnectionError happened");
  });
});
