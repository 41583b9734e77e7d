// Unit tests for scripts/lib/config.ts: defaults, overrides and start-up errors that name the variable.
// (Reading real certificates made with keytool is tests/kafka_security.test.ts's part.)

import { afterAll, describe, expect, test } from "bun:test";
import { generateKeyPairSync } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import {
  type Config,
  DEFAULT_DATABASE_URL,
  ENV_DOCS,
  parseBrokers,
  parseDatabase,
  parseGroupId,
  parsePositiveInt,
  parsePositiveNumber,
  parseRate,
  parseTopic,
  projectPath,
  readConfig,
  REPO_ROOT,
  useRepositoryEnv,
  expandEnvValue,
} from "../scripts/lib/config.ts";
import { databaseUrl } from "../scripts/lib/db.ts";
import { redact } from "../scripts/lib/log.ts";
import { runScript, tempDir } from "./helpers.ts";

const COMPOSE_DATABASE = { host: "127.0.0.1", port: 5432, database: "sales", user: "postgres", password: "postgres", ssl: undefined, setting: "DATABASE_URL" };
const PG_VARIABLES = "PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE";

const DEFAULTS: Config = {
  kafkaBrokers: ["127.0.0.1:9092"],
  kafkaSsl: undefined,
  kafkaSasl: undefined,
  kafkaNodes: 1,
  kafkaTopic: "sales_topic",
  kafkaGroupId: "sales-batcher",
  kafkaClientId: "sales-pipeline",
  kafkaPartitions: 1,
  database: COMPOSE_DATABASE,
  dataFile: "data/Sample-Superstore.csv",
  batchesDir: "batches",
  batchSize: 100,
  batchQuietSeconds: 5,
  batchMaxSeconds: 10,
  batchRetention: "keep",
  batchRetentionDays: undefined,
  producerRate: 1,
  logLevel: "info",
  logProgress: "auto",
  stackMode: "auto",
  confirm: false,
  dashboardPort: 8050,
  biReaderPassword: undefined,
  biReaderPasswordFile: ".local/bi_reader.password",
  crashAt: undefined,
  requireAllTests: false,
  chaosRuns: 1,
  chaosRows: 6000,
};

describe("readConfig", () => {
  test("uses the docker-compose defaults when nothing is set", () => {
    expect(readConfig({})).toEqual(DEFAULTS);
  });

  test("points the default database URL at the compose PostgreSQL", () => {
    expect(DEFAULT_DATABASE_URL).toBe("postgres://postgres:postgres@127.0.0.1:5432/sales");
  });

  test("treats empty and blank values as unset", () => {
    expect(readConfig({ BATCH_SIZE: "", KAFKA_TOPIC: "  ", LOG_LEVEL: "", DATABASE_URL: " " })).toEqual(DEFAULTS);
  });

  test("reads every variable", () => {
    const config = readConfig({
      KAFKA_BROKERS: "kafka-1:9092, kafka-2:19092",
      KAFKA_TOPIC: "sales.v2",
      KAFKA_GROUP_ID: "g1",
      KAFKA_CLIENT_ID: "c1",
      KAFKA_PARTITIONS: "6",
      KAFKA_NODES: "3",
      DATABASE_URL: "postgresql://u:p@db:5433/x",
      STACK_MODE: "Local",
      CONFIRM: "1",
      DASHBOARD_PORT: "9000",
      BI_READER_PASSWORD: "reader-secret",
      BI_READER_PASSWORD_FILE: "/run/secrets/bi_reader",
      SALES_CRASH_AT: "before-write",
      REQUIRE_ALL_TESTS: "1",
      CHAOS_RUNS: "3",
      CHAOS_ROWS: "60000",
      DATA_FILE: "data/other.csv",
      BATCHES_DIR: "/tmp/b",
      BATCH_SIZE: " 250 ",
      BATCH_QUIET_SECONDS: "0.5",
      BATCH_MAX_SECONDS: "2.5",
      BATCH_RETENTION: "Move",
      BATCH_RETENTION_DAYS: "30",
      PRODUCER_RATE: "50",
      LOG_LEVEL: "DEBUG",
      LOG_PROGRESS: "Lines",
    });
    expect(config).toEqual({
      kafkaBrokers: ["kafka-1:9092", "kafka-2:19092"],
      kafkaSsl: undefined,
      kafkaSasl: undefined,
      kafkaNodes: 3,
      kafkaTopic: "sales.v2",
      kafkaGroupId: "g1",
      kafkaClientId: "c1",
      kafkaPartitions: 6,
      database: { host: "db", port: 5433, database: "x", user: "u", password: "p", ssl: undefined, setting: "DATABASE_URL" },
      dataFile: "data/other.csv",
      batchesDir: "/tmp/b",
      batchSize: 250,
      batchQuietSeconds: 0.5,
      batchMaxSeconds: 2.5,
      batchRetention: "move",
      batchRetentionDays: 30,
      producerRate: 50,
      logLevel: "debug",
      logProgress: "lines",
      stackMode: "local",
      confirm: true,
      dashboardPort: 9000,
      biReaderPassword: "reader-secret",
      biReaderPasswordFile: "/run/secrets/bi_reader",
      crashAt: "before-write",
      requireAllTests: true,
      chaosRuns: 3,
      chaosRows: 60000,
    });
  });

  test("KAFKA_NODES=3 makes the default brokers the three local nodes; KAFKA_BROKERS still wins", () => {
    expect(readConfig({ KAFKA_NODES: "3" }).kafkaBrokers).toEqual(["127.0.0.1:9092", "127.0.0.1:9094", "127.0.0.1:9096"]);
    expect(readConfig({ KAFKA_NODES: "3", KAFKA_BROKERS: "b:1" }).kafkaBrokers).toEqual(["b:1"]);
    expect(() => readConfig({ KAFKA_NODES: "2" })).toThrow('KAFKA_NODES must be 1 or 3 (a cluster), got "2"');
  });

  test("returns a frozen object with a frozen broker list", () => {
    const config = readConfig({});
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.kafkaBrokers)).toBe(true);
    expect(() => {
      (config as { batchSize: number }).batchSize = 5;
    }).toThrow();
  });

  test("reads PRODUCER_RATE=max as Infinity, in any case", () => {
    expect(readConfig({ PRODUCER_RATE: "max" }).producerRate).toBe(Infinity);
    expect(readConfig({ PRODUCER_RATE: " MAX " }).producerRate).toBe(Infinity);
  });

  test("accepts a fractional PRODUCER_RATE", () => {
    expect(readConfig({ PRODUCER_RATE: "0.5" }).producerRate).toBe(0.5);
  });

  test("reads the PG* variables psql reads when DATABASE_URL is not set", () => {
    expect(readConfig({ PGHOST: "db" }).database).toEqual({
      host: "db",
      port: 5432,
      database: "postgres",
      user: "postgres",
      password: undefined,
      ssl: undefined,
      setting: PG_VARIABLES,
    });
    expect(readConfig({ PGDATABASE: "sales", PGUSER: "me", PGPORT: "6543", PGPASSWORD: "pw" }).database).toEqual({
      host: "localhost",
      port: 6543,
      database: "sales",
      user: "me",
      password: "pw",
      ssl: undefined,
      setting: PG_VARIABLES,
    });
  });

  test("prefers DATABASE_URL over PG* variables", () => {
    expect(readConfig({ PGHOST: "db", DATABASE_URL: "postgres://x@y/z" }).database).toMatchObject({ host: "y", user: "x", database: "z" });
  });

  test("decodes percent-encoded user, password and database, and reads sslmode", () => {
    expect(parseDatabase({ DATABASE_URL: "postgres://us%40r:p%40ss%2Fw@[::1]:6000/my%20db?sslmode=require" })).toEqual({
      host: "::1",
      port: 6000,
      database: "my db",
      user: "us@r",
      password: "p@ss/w",
      ssl: "require",
      setting: "DATABASE_URL",
    });
  });

  test("writes a target back as a URL that reads the same", () => {
    const target = parseDatabase({ DATABASE_URL: "postgres://us%40r:p%40ss%2Fw@db.example:6000/my%20db?sslmode=require" });
    expect(parseDatabase({ DATABASE_URL: databaseUrl(target) })).toEqual(target);
  });

  test.each([
    ["BATCH_SIZE", "0", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "0"'],
    ["BATCH_SIZE", "abc", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "abc"'],
    ["BATCH_SIZE", "1.5", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "1.5"'],
    ["BATCH_SIZE", "-3", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "-3"'],
    ["BATCH_SIZE", "1000001", 'BATCH_SIZE must be a whole number from 1 to 1000000, got "1000001"'],
    ["KAFKA_PARTITIONS", "1001", 'KAFKA_PARTITIONS must be a whole number from 1 to 1000, got "1001"'],
    ["KAFKA_BROKERS", "nope", 'KAFKA_BROKERS must be a comma-separated list of host:port, got "nope"'],
    ["KAFKA_BROKERS", "a:1,b", 'KAFKA_BROKERS must be a comma-separated list of host:port, got "a:1,b"'],
    ["KAFKA_BROKERS", ",", 'KAFKA_BROKERS must be a comma-separated list of host:port, got ","'],
    ["PRODUCER_RATE", "-1", 'PRODUCER_RATE must be a number greater than 0, got "-1"'],
    ["PRODUCER_RATE", "0", 'PRODUCER_RATE must be a number greater than 0, got "0"'],
    ["PRODUCER_RATE", "fast", 'PRODUCER_RATE must be a number greater than 0, got "fast"'],
    ["PRODUCER_RATE", "Infinity", 'PRODUCER_RATE must be a number greater than 0, got "Infinity"'],
    ["BATCH_QUIET_SECONDS", "0", 'BATCH_QUIET_SECONDS must be a number greater than 0, got "0"'],
    ["BATCH_MAX_SECONDS", "0", 'BATCH_MAX_SECONDS must be a number greater than 0, got "0"'],
    ["BATCH_RETENTION", "archive", 'BATCH_RETENTION must be keep, move or delete, got "archive"'],
    ["BATCH_RETENTION_DAYS", "-1", 'BATCH_RETENTION_DAYS must be a whole number of days from 0 to 36500, got "-1"'],
    ["BATCH_RETENTION_DAYS", "1.5", 'BATCH_RETENTION_DAYS must be a whole number of days from 0 to 36500, got "1.5"'],
    ["LOG_LEVEL", "loud", 'LOG_LEVEL must be error, warn, info or debug, got "loud"'],
    ["LOG_PROGRESS", "live", 'LOG_PROGRESS must be auto or lines, got "live"'],
    ["KAFKA_TOPIC", "sales topic", `KAFKA_TOPIC may hold only letters, digits, '.', '_' and '-' (Kafka's rule), got "sales topic"`],
    ["KAFKA_TOPIC", "sales/topic", `KAFKA_TOPIC may hold only letters, digits, '.', '_' and '-' (Kafka's rule), got "sales/topic"`],
    ["KAFKA_TOPIC", "t".repeat(250), "KAFKA_TOPIC may be at most 249 characters long (Kafka's rule), got 250"],
    ["KAFKA_TOPIC", "..", `KAFKA_TOPIC cannot be "." or ".." (Kafka's rule), got ".."`],
    ["DATABASE_URL", "mysql://x", 'DATABASE_URL must start with postgres:// or postgresql://, got a value starting with "mysql:"'],
    ["DATABASE_URL", "postgres://u:p@db host/sales", "DATABASE_URL is not a valid URL: expected postgres://user:password@host:5432/database"],
    ["DATABASE_URL", "postgres://u:p@host:99999/db", "DATABASE_URL is not a valid URL"],
    ["PGPORT", "54x", 'PGPORT must be a whole number from 1 to 65535, got "54x"'],
    ["STACK_MODE", "kubernetes", 'STACK_MODE must be auto, docker or local, got "kubernetes"'],
    ["DASHBOARD_PORT", "70000", 'DASHBOARD_PORT must be a whole number from 1 to 65535, got "70000"'],
  ])("refuses %s=%p, naming the variable", (name, value, message) => {
    expect(() => readConfig({ [name]: value })).toThrow(message);
  });

  test.each([
    ["mysql://admin:Tr0ub4dor&3@db/sales"],
    ["postgres://admin:Tr0ub4dor&3@db host/sales"],
    ["postgres://admin:Tr0ub4dor&3@db:99999/sales"],
    ["admin:Tr0ub4dor&3@db/sales"],
  ])("never prints the password of a bad DATABASE_URL (%p)", (url) => {
    let message = "";
    try {
      readConfig({ DATABASE_URL: url });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain("DATABASE_URL");
    expect(message).not.toContain("Tr0ub4dor");
  });
});

describe("a DATABASE_URL whose password holds a bare %", () => {
  // "50%off" typed as it is: legal in a URL only as 50%25off. The URL parser takes it; decoding it fails.
  const url = "postgres://sales:50%off@127.0.0.1:5432/sales";

  test("is refused naming DATABASE_URL, the password and its encoding, never the password itself", () => {
    expect(() => readConfig({ DATABASE_URL: url })).toThrow(
      'DATABASE_URL: the password holds a "%" that is not followed by two hex digits; the password must be percent-encoded (% as %25',
    );
    expect(() => readConfig({ DATABASE_URL: url })).not.toThrow("50%off");
    expect(readConfig({ DATABASE_URL: url.replace("50%off", "50%25off") }).database.password).toBe("50%off");
  });

  test("names the user or the database name when the stray % is there", () => {
    expect(() => readConfig({ DATABASE_URL: "postgres://a%zz@h/sales" })).toThrow("DATABASE_URL: the user name holds a \"%\"");
    expect(() => readConfig({ DATABASE_URL: "postgres://u@h/sales%" })).toThrow("DATABASE_URL: the database name holds a \"%\"");
  });

  test.each(["status.ts", "load.ts", "migrate.ts", "dashboard.ts"])("stops %s at start-up with that message and exit code 1", async (script) => {
    const result = await runScript(script, [], { DATABASE_URL: url, KAFKA_BROKERS: "127.0.0.1:1", LOG_LEVEL: "debug" }, 30_000);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("DATABASE_URL: the password holds a \"%\"");
    expect(result.stderr).toContain("% as %25");
    expect(`${result.stderr}${result.stdout}`).not.toContain("50%off");
  });
});

describe("Kafka TLS and SASL settings", () => {
  const tmp = tempDir("sales-config-");
  afterAll(() => tmp.remove());
  const file = (name: string, content: string) => {
    const path = join(tmp.path, name);
    writeFileSync(path, content);
    return path;
  };
  const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const key = file("client.key", privateKey.export({ type: "pkcs8", format: "pem" }) as string);
  const encrypted = file(
    "encrypted.key",
    privateKey.export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: "key-passphrase" }) as string,
  );
  const notPem = file("notes.txt", "just some text\n");
  const brokenCertificate = file("broken.pem", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n");
  const missing = join(tmp.path, "missing.pem");
  const folder = join(tmp.path, "folder.pem");
  mkdirSync(folder);

  test("are off unless set: plaintext, no login", () => {
    expect(readConfig({})).toMatchObject({ kafkaSsl: undefined, kafkaSasl: undefined });
    expect(readConfig({ KAFKA_SSL: "false" }).kafkaSsl).toBeUndefined();
  });

  test("KAFKA_SSL=true alone trusts the public CAs; a CA file alone turns TLS on (and is read)", () => {
    const none = { caFile: undefined, ca: undefined, certFile: undefined, cert: undefined, key: undefined };
    for (const value of ["true", "TRUE", "1", " true "]) expect(readConfig({ KAFKA_SSL: value }).kafkaSsl).toEqual(none);
    expect(() => readConfig({ KAFKA_SSL_CA_FILE: missing })).toThrow("KAFKA_SSL_CA_FILE: cannot read");
  });

  test("reads a SASL login, the mechanism in any case, and keeps the password as it is", () => {
    const config = readConfig({ KAFKA_SASL_MECHANISM: "SCRAM-SHA-512", KAFKA_SASL_USERNAME: " alice ", KAFKA_SASL_PASSWORD: " p w " });
    expect(config.kafkaSasl).toEqual({ mechanism: "scram-sha-512", username: "alice", password: " p w " });
    expect(Object.isFrozen(config.kafkaSasl)).toBe(true);
    for (const mechanism of ["plain", "scram-sha-256"] as const) {
      expect(readConfig({ KAFKA_SASL_MECHANISM: mechanism, KAFKA_SASL_USERNAME: "u", KAFKA_SASL_PASSWORD: "p" }).kafkaSasl?.mechanism).toBe(mechanism);
    }
  });

  const refusals: [Record<string, string>, string][] = [
    [{ KAFKA_SSL: "maybe" }, 'KAFKA_SSL must be true or false, got "maybe"'],
    [{ KAFKA_SSL: "false", KAFKA_SSL_CA_FILE: "ca.pem" }, "KAFKA_SSL is false, but KAFKA_SSL_CA_FILE is set (used only over TLS): set KAFKA_SSL=true, or unset KAFKA_SSL_CA_FILE"],
    [{ KAFKA_SSL_CA_FILE: missing }, `KAFKA_SSL_CA_FILE: cannot read ${missing} (no such file)`],
    [{ KAFKA_SSL_CA_FILE: folder }, `KAFKA_SSL_CA_FILE: cannot read ${folder} (it is a folder)`],
    [{ KAFKA_SSL_CA_FILE: notPem }, `KAFKA_SSL_CA_FILE: ${notPem} is not a PEM certificate file (no "-----BEGIN CERTIFICATE-----" block)`],
    [{ KAFKA_SSL_CA_FILE: brokenCertificate }, `KAFKA_SSL_CA_FILE: ${brokenCertificate}: certificate 1 of 1 is not a valid X.509 certificate`],
    [{ KAFKA_SSL_CERT_FILE: brokenCertificate }, "KAFKA_SSL_CERT_FILE is set without KAFKA_SSL_KEY_FILE: mutual TLS needs both, the client certificate and its private key"],
    [{ KAFKA_SSL_KEY_FILE: key }, "KAFKA_SSL_KEY_FILE is set without KAFKA_SSL_CERT_FILE: mutual TLS needs both"],
    [{ KAFKA_SSL_CERT_FILE: notPem, KAFKA_SSL_KEY_FILE: key }, `KAFKA_SSL_CERT_FILE: ${notPem} is not a PEM certificate file`],
    [{ KAFKA_SSL_CERT_FILE: brokenCertificate, KAFKA_SSL_KEY_FILE: notPem }, `KAFKA_SSL_KEY_FILE: ${notPem} is not a PEM private key`],
    [{ KAFKA_SSL_CERT_FILE: brokenCertificate, KAFKA_SSL_KEY_FILE: encrypted }, `KAFKA_SSL_KEY_FILE: ${encrypted} is encrypted with a passphrase`],
    [{ KAFKA_SASL_MECHANISM: "gssapi" }, 'KAFKA_SASL_MECHANISM must be plain, scram-sha-256 or scram-sha-512, got "gssapi"'],
    [{ KAFKA_SASL_MECHANISM: "plain" }, "KAFKA_SASL_MECHANISM=plain needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"],
    [{ KAFKA_SASL_MECHANISM: "scram-sha-256", KAFKA_SASL_USERNAME: "alice" }, "KAFKA_SASL_MECHANISM=scram-sha-256 needs KAFKA_SASL_PASSWORD"],
    [{ KAFKA_SASL_USERNAME: "alice" }, "KAFKA_SASL_USERNAME is set, but KAFKA_SASL_MECHANISM is not: set it to plain, scram-sha-256 or scram-sha-512"],
  ];
  const label = (env: Record<string, string>) =>
    Object.entries(env)
      .map(([name, value]) => `${name}=${value.replace(tmp.path, "...")}`)
      .join(" ");
  test.each(refusals.map(([env, message]) => [label(env), env, message] as const))("refuses %s, naming the variable", (_label, env, message) => {
    expect(() => readConfig(env)).toThrow(message);
  });

  test("takes relative file paths from the repository, not from the working directory", () => {
    expect(() => readConfig({ KAFKA_SSL_CA_FILE: "no/such/ca.pem" })).toThrow(`cannot read ${join(REPO_ROOT, "no/such/ca.pem")} (no such file)`);
  });

  test("never prints the SASL password or the key, and masks the password in every log line", () => {
    const password = "Sasl-Pa55word-91";
    const messageOf = (env: Record<string, string>) => {
      try {
        readConfig(env);
      } catch (error) {
        return (error as Error).message;
      }
      throw new Error("readConfig accepted a bad setting");
    };
    const messages = [
      messageOf({ KAFKA_SASL_PASSWORD: password }),
      messageOf({ KAFKA_SASL_MECHANISM: "kerberos", KAFKA_SASL_USERNAME: "alice", KAFKA_SASL_PASSWORD: password }),
      messageOf({ KAFKA_SASL_MECHANISM: "plain", KAFKA_SASL_PASSWORD: password }),
      messageOf({ KAFKA_SSL_CERT_FILE: brokenCertificate, KAFKA_SSL_KEY_FILE: encrypted }),
    ];
    expect(messages.join("\n")).not.toMatch(new RegExp(`${password}|PRIVATE KEY|key-passphrase`));
    expect(redact(`login as alice with ${password} failed`)).toBe("login as alice with *** failed");
  });
});

describe("redact", () => {
  test("masks the password of any URL in a message", () => {
    expect(redact("cannot reach postgres://u:s3cr3t@db:5432/sales (refused)")).toBe("cannot reach postgres://u:***@db:5432/sales (refused)");
    expect(redact("amqp://guest:guest@host and http://a:b@c")).toBe("amqp://guest:***@host and http://a:***@c");
  });

  test("masks the passwords config read, wherever they appear", () => {
    readConfig({ DATABASE_URL: "postgres://u:Zq9-long-pass@db/sales", BI_READER_PASSWORD: "reader-pass-77" });
    expect(redact("login as u with Zq9-long-pass failed; bi_reader uses reader-pass-77")).toBe(
      "login as u with *** failed; bi_reader uses ***",
    );
  });

  test("leaves the published compose password alone, so the word postgres survives", () => {
    readConfig({ DATABASE_URL: DEFAULT_DATABASE_URL });
    expect(redact("postgres said no")).toBe("postgres said no");
  });
});

describe("parseTopic and parseGroupId", () => {
  test("accept every name Kafka accepts", () => {
    for (const name of ["a", "...", ".hidden", "_x", "x-y.z_9", "t".repeat(249)]) expect(parseTopic(name, "--topic")).toBe(name);
    for (const name of ["g", "with space", "ünïcode/group", "x".repeat(1000)]) expect(parseGroupId(name, "--group")).toBe(name);
  });

  test("refuse what Kafka refuses, naming the flag", () => {
    expect(() => parseTopic(".", "--topic")).toThrow('--topic cannot be "." or ".."');
    expect(() => parseTopic("a:b", "--topic")).toThrow("--topic may hold only");
    expect(() => parseGroupId("", "--group")).toThrow("--group cannot be empty");
  });
});

describe("parsePositiveInt", () => {
  test("reads a whole number within the limit", () => {
    expect(parsePositiveInt("1", "--limit")).toBe(1);
    expect(parsePositiveInt("1000", "--limit", 1000)).toBe(1000);
  });

  test("names the flag it checks", () => {
    expect(() => parsePositiveInt("x", "--limit")).toThrow(
      `--limit must be a whole number from 1 to ${Number.MAX_SAFE_INTEGER}, got "x"`,
    );
  });
});

describe("parsePositiveNumber", () => {
  test("reads decimals and refuses blank text", () => {
    expect(parsePositiveNumber("2.5", "--quiet")).toBe(2.5);
    expect(() => parsePositiveNumber(" ", "--quiet")).toThrow('--quiet must be a number greater than 0, got " "');
  });
});

describe("parseRate", () => {
  test("reads max as Infinity and numbers as themselves", () => {
    expect(parseRate("max", "--rate")).toBe(Infinity);
    expect(parseRate("250", "--rate")).toBe(250);
  });

  test("names the flag for a bad rate", () => {
    expect(() => parseRate("-1", "--rate")).toThrow('--rate must be a number greater than 0, got "-1"');
  });
});

describe("parseBrokers", () => {
  test("splits, trims and drops empty entries", () => {
    expect(parseBrokers(" a:1 ,, b.example.com:9092 ,", "KAFKA_BROKERS")).toEqual(["a:1", "b.example.com:9092"]);
  });

  test("refuses a broker without a port", () => {
    expect(() => parseBrokers("localhost", "--brokers")).toThrow(
      '--brokers must be a comma-separated list of host:port, got "localhost"',
    );
  });
});

describe("ENV_DOCS", () => {
  test("documents every variable readConfig reads", () => {
    expect(Object.keys(ENV_DOCS).sort()).toEqual(
      [
        "BATCHES_DIR",
        "BATCH_QUIET_SECONDS",
        "BATCH_MAX_SECONDS",
        "BATCH_RETENTION",
        "BATCH_RETENTION_DAYS",
        "BATCH_SIZE",
        "DATABASE_URL",
        "DATA_FILE",
        "KAFKA_BROKERS",
        "KAFKA_CLIENT_ID",
        "KAFKA_GROUP_ID",
        "KAFKA_NODES",
        "KAFKA_PARTITIONS",
        "KAFKA_TOPIC",
        "KAFKA_SSL",
        "KAFKA_SSL_CA_FILE",
        "KAFKA_SSL_CERT_FILE",
        "KAFKA_SSL_KEY_FILE",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "LOG_LEVEL",
        "LOG_PROGRESS",
        "PRODUCER_RATE",
        "STACK_MODE",
        "CONFIRM",
        "DASHBOARD_PORT",
        "BI_READER_PASSWORD",
        "BI_READER_PASSWORD_FILE",
      ].sort(),
    );
  });
});

describe("projectPath", () => {
  test("takes a relative path from the repository, wherever the script runs", () => {
    // A folder beside the repository's, wherever the repository is (a clone may sit in /tmp itself).
    const elsewhere = join(dirname(REPO_ROOT), "..elsewhere");
    expect(projectPath("sql", elsewhere)).toBe(join(REPO_ROOT, "sql"));
    expect(projectPath("sql", "/nonexistent/folder")).toBe(join(REPO_ROOT, "sql"));
    expect(projectPath("data/x.csv", join(REPO_ROOT, "scripts"))).toBe(join(REPO_ROOT, "data/x.csv"));
  });

  test("says it relative to the working directory when it lies inside it", () => {
    expect(projectPath("batches", REPO_ROOT)).toBe("batches");
    expect(projectPath(REPO_ROOT, REPO_ROOT)).toBe(".");
    expect(projectPath("..notes/a.csv", REPO_ROOT)).toBe("..notes/a.csv"); // a name starting with two dots is inside
  });

  test("keeps an absolute path", () => {
    expect(projectPath("/var/lib/sales/batches", "/tmp")).toBe("/var/lib/sales/batches");
  });
});

describe("useRepositoryEnv", () => {
  const tmp = tempDir("sales-env-");
  const repo = join(tmp.path, "repo");
  const elsewhere = join(tmp.path, "elsewhere");
  mkdirSync(repo);
  mkdirSync(elsewhere);
  writeFileSync(join(repo, ".env"), "KAFKA_TOPIC=from_repo\nDATABASE_URL=postgres://u@h/${KAFKA_TOPIC}_db # comment\nLOG_LEVEL=debug\n");
  writeFileSync(join(elsewhere, ".env"), "KAFKA_TOPIC=from_elsewhere\nBATCHES_DIR=elsewhere\n");
  afterAll(() => tmp.remove());

  test("started elsewhere, takes out what that folder's .env added and reads the repository's", () => {
    // What Bun leaves in the environment when started in `elsewhere`: its .env on top of the real variables.
    const env: Record<string, string | undefined> = { HOME: "/root", KAFKA_TOPIC: "from_elsewhere", BATCHES_DIR: "elsewhere" };
    useRepositoryEnv(env, { cwd: elsewhere, repo, started: new Set(["HOME"]) });
    expect(env).toEqual({ HOME: "/root", KAFKA_TOPIC: "from_repo", DATABASE_URL: "postgres://u@h/from_repo_db", LOG_LEVEL: "debug" });
  });

  test("never overrides a variable the process was started with", () => {
    const env: Record<string, string | undefined> = { KAFKA_TOPIC: "from_shell", LOG_LEVEL: "warn" };
    useRepositoryEnv(env, { cwd: elsewhere, repo, started: new Set(["KAFKA_TOPIC", "LOG_LEVEL"]) });
    expect(env).toEqual({ KAFKA_TOPIC: "from_shell", LOG_LEVEL: "warn", DATABASE_URL: "postgres://u@h/from_shell_db" });
  });

  test("without the list of starting variables, takes a variable holding exactly the file's value for the file's", () => {
    const env: Record<string, string | undefined> = { KAFKA_TOPIC: "from_elsewhere", BATCHES_DIR: "set_in_shell" };
    useRepositoryEnv(env, { cwd: elsewhere, repo, started: null });
    expect(env.KAFKA_TOPIC).toBe("from_repo");
    expect(env.BATCHES_DIR).toBe("set_in_shell");
  });

  test("changes nothing in the repository itself, where Bun has read its .env", () => {
    const env: Record<string, string | undefined> = { KAFKA_TOPIC: "x" };
    useRepositoryEnv(env, { cwd: repo, repo, started: new Set() });
    expect(env).toEqual({ KAFKA_TOPIC: "x" });
  });
});

describe("expandEnvValue", () => {
  test("expands $NAME and ${NAME} as Bun does, unset ones to nothing, and keeps an escaped dollar", () => {
    const lookup = (name: string) => ({ A: "1" })[name];
    expect(expandEnvValue("${A}x$A", lookup)).toBe("1x1");
    expect(expandEnvValue("${NOPE}-z", lookup)).toBe("-z");
    expect(expandEnvValue("pa\\$s", lookup)).toBe("pa$s");
  });
});
