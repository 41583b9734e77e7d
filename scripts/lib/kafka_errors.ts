// What a Kafka failure means, in one place: a broker that is away (wait and try again, for up to two minutes:
// whileKafkaUnavailable), or a refusal that waiting will not fix: a refused SASL login, an untrusted or wrong
// certificate, a listener of the other kind (TLS or not), or something at the address that is not Kafka at all
// (a web server, another program's port). checkKafkaAccess tries one quick connection before a script starts
// its work, so a refusal stops it at once with the setting to fix.

import { connect as netConnect, isIP } from "node:net";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import type { Admin, Kafka } from "kafkajs";
import type { Config } from "./config.ts";
import { createKafka, describeBrokers, kafkaAnswers, kafkaSecurity } from "./kafka.ts";
import { createLogger, type Logger } from "./log.ts";
import { GaveUpError, retryWhile } from "./retry.ts";

/** kafkajs errors that mean "the broker is not reachable right now", as opposed to a wrong request. */
const UNAVAILABLE = new Set([
  "KafkaJSConnectionError",
  "KafkaJSConnectionClosedError",
  "KafkaJSRequestTimeoutError",
  "KafkaJSGroupCoordinatorNotFound",
  "KafkaJSBrokerNotFound",
  "KafkaJSNumberOfRetriesExceeded",
]);

export function isKafkaUnavailable(error: unknown): boolean {
  // A refused login or an untrusted certificate looks like a failed connection to kafkajs; waiting will not fix it.
  if (accessFailure(error)) return false;
  for (let e = error as { name?: string; retriable?: boolean; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if ((e.name && UNAVAILABLE.has(e.name)) || e.retriable === true) return true;
  }
  return false;
}

/**
 * Kafka answered but will not let us in, or what answers is not Kafka: a reason only a setting can fix. The
 * message names the setting.
 */
export class KafkaAccessError extends Error {
  override name = "KafkaAccessError";
}

interface ErrorLink {
  name?: string;
  message?: string;
  /** the socket's code on kafkajs' connection errors ("ECONNREFUSED", "SELF_SIGNED_CERT_IN_CHAIN"); a number on protocol errors */
  code?: string | number;
  /** "host:port" on kafkajs' connection errors */
  broker?: string;
  /** Kafka's error name on kafkajs' protocol errors, e.g. "ILLEGAL_SASL_STATE" */
  type?: string;
  cause?: unknown;
}

/** The error and its causes, outermost first (kafkajs wraps a failed connection in KafkaJSNumberOfRetriesExceeded). */
function errorChain(error: unknown): ErrorLink[] {
  const chain: ErrorLink[] = [];
  for (let e = error as ErrorLink | undefined; e && typeof e === "object" && chain.length < 10; e = e.cause as ErrorLink | undefined) chain.push(e);
  return chain;
}

/** TLS verification codes (Node's and Bun's) that mean the broker's certificate is not one we may trust. */
const UNTRUSTED_CERTIFICATE = new Set([
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_SIGNATURE_FAILURE",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "INVALID_CA",
]);
const EXPIRED_CERTIFICATE = new Set(["CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID"]);
/** TLS alerts a broker sends when it requires a client certificate (mutual TLS) and ours is missing or not trusted. */
const CLIENT_CERTIFICATE_REFUSED = /^ERR_SSL_.*ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED|UNKNOWN_CA|CERTIFICATE_UNKNOWN|UNSUPPORTED_CERTIFICATE|CERTIFICATE_REVOKED|CERTIFICATE_EXPIRED|ACCESS_DENIED)$/;

type AccessFailure = { kind: "sasl" | "no-sasl" | "untrusted" | "expired" | "hostname" | "client-certificate"; link: ErrorLink };

/** What kind of refusal `error` is, if it is one: a refused SASL login, or a TLS certificate problem. */
function accessFailure(error: unknown): AccessFailure | undefined {
  for (const link of errorChain(error)) {
    const code = String(link.code ?? "");
    if (link.name === "KafkaJSSASLAuthenticationError") return { kind: "sasl", link };
    // The answer to a SASL handshake on a listener without SASL (the password is never sent).
    if (link.type === "ILLEGAL_SASL_STATE") return { kind: "no-sasl", link };
    if (UNTRUSTED_CERTIFICATE.has(code)) return { kind: "untrusted", link };
    if (EXPIRED_CERTIFICATE.has(code)) return { kind: "expired", link };
    if (code === "ERR_TLS_CERT_ALTNAME_INVALID") return { kind: "hostname", link };
    if (CLIENT_CERTIFICATE_REFUSED.test(code)) return { kind: "client-certificate", link };
  }
  return undefined;
}

/** kafkajs' reason without its own prefix: "self-signed certificate in certificate chain". */
function reason(link: ErrorLink): string {
  return (link.message ?? "").replace(/^(Connection error|Failed to connect): /, "");
}

/** The message for a refused or unexpected SASL login: the mechanism and user, never the password. */
function saslMessage(kind: "sasl" | "no-sasl", at: string, why: string, config: Config): string {
  const sasl = config.kafkaSasl;
  if (kind === "no-sasl") {
    return `${at} takes no SASL login on this listener, but KAFKA_SASL_MECHANISM is set: put the brokers' SASL port in KAFKA_BROKERS, or unset KAFKA_SASL_MECHANISM`;
  }
  if (!sasl) return `${at} refused the SASL login (${why})`;
  if (/mechanism is not supported/.test(why)) {
    return `${at} does not offer KAFKA_SASL_MECHANISM=${sasl.mechanism} (${why}): ask its operator which mechanism it takes`;
  }
  return `${at} refused the SASL login of user "${sasl.username}" (KAFKA_SASL_MECHANISM=${sasl.mechanism}): check KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD`;
}

/** The message for a certificate problem, on either side of the TLS handshake. */
function tlsMessage(kind: AccessFailure["kind"], at: string, why: string, config: Config): string {
  const tls = config.kafkaSsl;
  switch (kind) {
    case "untrusted":
      return (
        `the TLS certificate of ${at} is not trusted (${why}): ` +
        (tls?.caFile ? `KAFKA_SSL_CA_FILE=${tls.caFile} did not sign it; set KAFKA_SSL_CA_FILE to the CA that did` : "set KAFKA_SSL_CA_FILE to the CA that signed it")
      );
    case "expired":
      return `the TLS certificate of ${at} is not valid now (${why}): the broker needs a new certificate, or this machine's clock is wrong`;
    case "hostname":
      return `the TLS certificate of ${at} is for other names (${why}): use a broker address the certificate names in KAFKA_BROKERS`;
    default:
      return tls?.certFile
        ? `${at} refused the TLS client certificate in KAFKA_SSL_CERT_FILE=${tls.certFile} (${why}): it must be signed by a CA the broker trusts`
        : `${at} asks for a TLS client certificate (${why}): set KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE`;
  }
}

/**
 * A refused login or a certificate problem in kafkajs' `error`, as a KafkaAccessError whose message names the
 * setting to fix (never the password); undefined for any other error.
 */
export function kafkaAccessError(error: unknown, config: Config): KafkaAccessError | undefined {
  if (error instanceof KafkaAccessError) return error;
  const failure = accessFailure(error);
  if (!failure) return undefined;
  const at = `Kafka at ${errorChain(error).find((l) => l.broker)?.broker ?? describeBrokers(config)}`;
  const why = reason(failure.link);
  const sasl = failure.kind === "sasl" || failure.kind === "no-sasl";
  return new KafkaAccessError(sasl ? saslMessage(failure.kind as "sasl" | "no-sasl", at, why, config) : tlsMessage(failure.kind, at, why, config));
}

/** Failures that mean nothing answers at that address (yet): not a sign of the wrong kind of listener. */
const NOTHING_LISTENS = /ECONNREFUSED|ETIMEDOUT|ENOTFOUND|EAI_AGAIN|EHOSTUNREACH|ENETUNREACH/;

/** The broker a failed connection was to: kafkajs' "host:port", else the first configured one. */
function failedBroker(error: unknown, config: Config): { host: string; port: number } {
  const address = errorChain(error).find((l) => l.broker)?.broker ?? config.kafkaBrokers[0]!;
  const colon = address.lastIndexOf(":");
  return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
}

/** Does a TLS server answer at host:port? A handshake only (the certificate is not judged, nothing is sent). */
function speaksTls(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host, port, rejectUnauthorized: false, ...(isIP(host) ? {} : { servername: host }) }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.setTimeout(2000, () => {
      socket.destroy();
      resolve(false);
    });
    socket.on("error", () => resolve(false));
  });
}

/** Does Kafka answer at host:port without TLS? An ApiVersions request only: no login, so no password travels. */
function answersPlaintext(config: Config, host: string, port: number): Promise<boolean> {
  return kafkaAnswers({ ...config, kafkaBrokers: [`${host}:${port}`], kafkaSsl: undefined, kafkaSasl: undefined });
}

/** Kafka's SaslHandshake request (api key 17, version 1) asking for PLAIN: the answer lists the mechanisms. */
function saslHandshakeRequest(): Buffer {
  const clientId = Buffer.from("sales-pipeline-probe");
  const mechanism = Buffer.from("PLAIN");
  const request = Buffer.alloc(4 + 2 + 2 + 4 + 2 + clientId.length + 2 + mechanism.length);
  request.writeInt32BE(request.length - 4, 0);
  request.writeInt16BE(17, 4);
  request.writeInt16BE(1, 6);
  request.writeInt32BE(1, 8); // correlation id
  request.writeInt16BE(clientId.length, 12);
  clientId.copy(request, 14);
  request.writeInt16BE(mechanism.length, 14 + clientId.length);
  mechanism.copy(request, 16 + clientId.length);
  return request;
}

/** The mechanisms in a SaslHandshake response; undefined for a listener without SASL (ILLEGAL_SASL_STATE) or garbage. */
function offeredMechanisms(response: Buffer): string[] | undefined {
  try {
    // size, correlation id, error code (0, or 33: UNSUPPORTED_SASL_MECHANISM, both list the mechanisms), array
    if (![0, 33].includes(response.readInt16BE(8))) return undefined;
    const mechanisms: string[] = [];
    let at = 14;
    for (let i = response.readInt32BE(10); i > 0; i--) {
      const length = response.readInt16BE(at);
      mechanisms.push(response.toString("utf8", at + 2, at + 2 + length));
      at += 2 + length;
    }
    return mechanisms.length > 0 ? mechanisms : undefined;
  } catch {
    return undefined;
  }
}

/** What a listener did with one Kafka request. */
type ListenerAnswer =
  /** a Kafka response to it (size, then our correlation id) */
  | { readonly kind: "kafka"; readonly response: Buffer }
  /** bytes that are no Kafka response: "HTTP/1.1 400 Bad Request", a TLS alert, a banner */
  | { readonly kind: "other"; readonly bytes: Buffer }
  /** the connection closed without a byte */
  | { readonly kind: "closed" }
  /** the connection was taken, and nothing came back in PROBE_MS */
  | { readonly kind: "silent" }
  /** no connection (refused, no route), or no TLS handshake */
  | { readonly kind: "unreachable" };

/** How long a probe waits for a connection and an answer. A broker answers in milliseconds. */
const PROBE_MS = 2000;
/** A size field above this is no answer to a probe (an HTTP reply reads as 1.2 GB). */
const MAX_PROBE_ANSWER = 1 << 20;

/** Sends `request` (one Kafka request, correlation id at byte 8) to host:port, over TLS with `tls`, and says what came back. */
function askListener(host: string, port: number, request: Buffer, tls?: ConnectionOptions): Promise<ListenerAnswer> {
  return new Promise((resolve) => {
    let connected = false;
    let received = Buffer.alloc(0);
    const send = () => {
      connected = true;
      socket.write(request);
    };
    const socket = tls ? tlsConnect({ ...tls, host, port, ...(isIP(host) ? {} : { servername: host }) }, send) : netConnect({ host, port }, send);
    const done = (answer: ListenerAnswer) => {
      socket.destroy();
      resolve(answer);
    };
    const ended = () => done(!connected ? { kind: "unreachable" } : received.length > 0 ? { kind: "other", bytes: received } : { kind: "closed" });
    socket.on("data", (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 8) return;
      const size = received.readInt32BE(0);
      if (size < 4 || size > MAX_PROBE_ANSWER || received.readInt32BE(4) !== request.readInt32BE(8)) done({ kind: "other", bytes: received });
      else if (received.length >= 4 + size) done({ kind: "kafka", response: received.subarray(0, 4 + size) });
    });
    socket.setTimeout(PROBE_MS, () => done(connected ? { kind: "silent" } : { kind: "unreachable" }));
    socket.on("error", ended);
    socket.on("close", ended);
  });
}

/** The start of what a listener sent, for a message: its first line when it is text, else its first bytes in hex. */
function describeBytes(bytes: Buffer): string {
  const line = bytes.toString("latin1").split(/\r?\n/)[0]!.slice(0, 60);
  if (/^[\x20-\x7e]+$/.test(line)) return `"${line}"`;
  return `the bytes ${[...bytes.subarray(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join(" ")}`;
}

/** What a listener that is not Kafka did, for a message; undefined when it was Kafka or nothing listens. */
function notKafkaBehaviour(answer: ListenerAnswer): string | undefined {
  switch (answer.kind) {
    case "other":
      return `it answered ${describeBytes(answer.bytes)} to a Kafka request`;
    case "closed":
      return "it closed the connection without answering a Kafka request";
    case "silent":
      return "it accepts connections but does not answer Kafka's requests";
    default:
      return undefined;
  }
}

/**
 * What holds host:port, when something does: undefined when nothing listens there, "a Kafka broker" when one
 * answers, else what the program there did with a Kafka request. Sends one SaslHandshake, never a password.
 * For `make up`, before it starts a broker on that port.
 */
export async function whatListens(host: string, port: number): Promise<string | undefined> {
  const answer = await askListener(host, port, saslHandshakeRequest());
  return answer.kind === "kafka" ? "a Kafka broker" : notKafkaBehaviour(answer);
}

/** The error for an address in KAFKA_BROKERS where something that is not Kafka answers; undefined when nothing does. */
function notKafkaError(host: string, port: number, answer: ListenerAnswer, config: Config): KafkaAccessError | undefined {
  const behaviour = notKafkaBehaviour(answer);
  if (!behaviour) return undefined;
  // Silence alone cannot tell a program that is not Kafka from a broker that hangs (SIGSTOP, a frozen VM).
  const what = answer.kind === "silent" ? "is not a Kafka broker, or one that hangs" : "is not a Kafka broker";
  return new KafkaAccessError(
    `what answers at ${host}:${port} (KAFKA_BROKERS=${describeBrokers(config)}) ${what}: ${behaviour}. ` +
      "Point KAFKA_BROKERS at the Kafka brokers, or stop the program that holds that port (make up starts Kafka there)",
  );
}

/**
 * A broker that took the connection and never answered (kafkajs: "Request ... timed out"): a program that is not
 * Kafka, or a broker that hangs. When another broker of KAFKA_BROKERS answers, it is one of a cluster that
 * hangs, waited for like one that is down; when none does, it is named.
 */
async function silentListener(host: string, port: number, config: Config): Promise<KafkaAccessError | undefined> {
  const others = config.kafkaBrokers.filter((b) => b !== `${host}:${port}`);
  const answered = await Promise.all(others.map((b) => kafkaAnswers({ ...config, kafkaBrokers: [b] })));
  return answered.some(Boolean) ? undefined : notKafkaError(host, port, { kind: "silent" }, config);
}

/**
 * A connection that was cut (not refused) may be TLS meeting a plaintext listener or the other way round, a
 * listener that wants a SASL login we did not give, or no Kafka at all: kafkajs sees only "Closed connection" or
 * a reset during the handshake. Asking the port the other way, or for its SASL mechanisms, tells them apart;
 * a listener that does not answer the SaslHandshake as Kafka would is not Kafka. A request that timed out on a
 * connection that was taken is silentListener's.
 */
async function wrongListener(error: unknown, config: Config): Promise<KafkaAccessError | undefined> {
  const link = errorChain(error).find((l) => /^KafkaJS(Connection|RequestTimeout)/.test(l.name ?? ""));
  if (!link || NOTHING_LISTENS.test(`${link.code ?? ""} ${link.message ?? ""}`)) return undefined;
  const { host, port } = failedBroker(error, config);
  if (link.name === "KafkaJSRequestTimeoutError") return silentListener(host, port, config);
  if (/timeout/i.test(link.message ?? "")) return undefined;
  const at = `Kafka at ${host}:${port}`;
  if (config.kafkaSsl && (await answersPlaintext(config, host, port))) {
    return new KafkaAccessError(
      `${at} answers without TLS, but KAFKA_SSL is on${config.kafkaSsl.caFile ? " (KAFKA_SSL_CA_FILE is set)" : ""}: ` +
        "put the brokers' TLS port in KAFKA_BROKERS, or set KAFKA_SSL=false for a plaintext listener",
    );
  }
  if (!config.kafkaSsl && (await speaksTls(host, port))) {
    return new KafkaAccessError(`${at} expects TLS: set KAFKA_SSL=true (and KAFKA_SSL_CA_FILE to its CA, unless a public CA signed its certificate)`);
  }
  const ssl = kafkaSecurity(config).ssl;
  let answer = await askListener(host, port, saslHandshakeRequest(), ssl && typeof ssl === "object" ? ssl : undefined);
  // No TLS handshake where KAFKA_SSL wants one: what does the port speak without it?
  if (answer.kind === "unreachable" && config.kafkaSsl) answer = await askListener(host, port, saslHandshakeRequest());
  if (answer.kind !== "kafka") return notKafkaError(host, port, answer, config);
  const mechanisms = config.kafkaSasl ? undefined : offeredMechanisms(answer.response);
  if (!mechanisms) return undefined;
  return new KafkaAccessError(
    `${at} asks for a SASL login (it offers ${mechanisms.join(", ")}): set KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD`,
  );
}

/**
 * The one place that turns kafkajs' connection failures into messages that name the setting: a refused SASL
 * login, an untrusted or wrong certificate, or a listener of the other kind. Undefined for anything else (a
 * broker that is away), which the caller handles as before.
 */
export async function explainKafkaFailure(error: unknown, config: Config): Promise<KafkaAccessError | undefined> {
  return kafkaAccessError(error, config) ?? (await wrongListener(error, config));
}

/**
 * One quick attempt (no retries) to connect, log in and read the cluster's metadata, before a script's work.
 * Throws a KafkaAccessError when Kafka will not let us in; passes when it is simply not reachable, so the
 * script's usual waiting and messages apply.
 */
export async function checkKafkaAccess(config: Config): Promise<void> {
  const admin = createKafka(config, createLogger("kafka", "silent"), { probe: true }).admin();
  try {
    await admin.connect();
    await admin.describeCluster();
  } catch (error) {
    const clear = await explainKafkaFailure(error, config);
    if (clear) throw clear;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * The admin client of `kafka`, connected, after checkKafkaAccess: a refused login or an untrusted certificate
 * stops the script here, before it creates a topic or sends anything. A broker that is away gets kafkajs' retries.
 */
export async function connectAdmin(kafka: Kafka, config: Config): Promise<Admin> {
  await checkKafkaAccess(config);
  const admin = kafka.admin();
  await admin.connect().catch(async (error: Error) => {
    throw (await explainKafkaFailure(error, config)) ?? new Error(`cannot reach Kafka at ${describeBrokers(config)}: ${error.message} (is it up? make up)`);
  });
  return admin;
}

/** How long a script waits for an unreachable broker before it gives up with an error. */
export const KAFKA_OUTAGE_MS = 120_000;

/**
 * Runs `attempt`; while it fails because the broker is unreachable, says so and tries again with backoff, for
 * up to KAFKA_OUTAGE_MS. Other errors, or an abort of `signal`, end it.
 */
export async function whileKafkaUnavailable<T>(what: string, attempt: () => Promise<T>, log: Logger, signal?: AbortSignal): Promise<T> {
  try {
    return await retryWhile(isKafkaUnavailable, attempt, {
      giveUpAfterMs: KAFKA_OUTAGE_MS,
      signal,
      onRetry: (error, _n, delay) => log.warn(`Kafka unavailable (${(error as Error).message}); ${what} again in ${(delay / 1000).toFixed(1)}s`),
      onRecovered: (ms) => log.info(`Kafka answers again after ${(ms / 1000).toFixed(1)}s`),
    });
  } catch (error) {
    if (error instanceof GaveUpError) {
      throw new Error(`Kafka has not answered for ${KAFKA_OUTAGE_MS / 1000}s (${(error.cause as Error).message})`);
    }
    throw error;
  }
}

