// The read-only role bi_reader (sql/005, sql/007), as the dashboard and BI tools log in with it: its password,
// where that comes from, and the server's copy of it.
//
// A role belongs to the whole PostgreSQL server, not to one database. So its password is set once, by the first
// make migrate (or make stream) that finds the role without one, and changed only on purpose (make
// rotate-bi-reader): migrating another database never resets it for everyone. The password comes from
// BI_READER_PASSWORD when that is set; otherwise from the file BI_READER_PASSWORD_FILE (.local/bi_reader.password,
// git-ignored), which the first migration writes with a random password, mode 0600. The server is sent a SCRAM
// verifier, never the password, and a password known here is compared with the stored verifier (the StoredKey
// recomputed with its salt and iteration count), so a differing one is reported without printing either.
//
// Reading the verifier (pg_authid) and changing a role's password need a superuser: the migrator is one.

import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { Config, DatabaseTarget } from "./config.ts";
import type { Sql, TransactionSql } from "./db.ts";
import { addSecret, type Logger } from "./log.ts";

export const READER_ROLE = "bi_reader";

/** What the password functions read of the configuration. */
export type ReaderConfig = Pick<Config, "biReaderPassword" | "biReaderPasswordFile" | "database">;

/** bi_reader's password as this checkout knows it, and where it came from (for messages, never the value). */
export interface KnownPassword {
  /** secret; undefined when neither BI_READER_PASSWORD nor the file gives one */
  readonly password: string | undefined;
  /** "BI_READER_PASSWORD", the file's path, or undefined */
  readonly source: string | undefined;
}

/** BI_READER_PASSWORD, else the password file's first line; a file that cannot be read (other than missing) stops. */
export function knownPassword(config: ReaderConfig): KnownPassword {
  if (config.biReaderPassword) return { password: config.biReaderPassword, source: "BI_READER_PASSWORD" };
  const file = config.biReaderPasswordFile;
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { password: undefined, source: undefined };
    throw new Error(`BI_READER_PASSWORD_FILE: cannot read ${file} (${code === "EACCES" ? "permission denied" : code})`);
  }
  const password = text.split(/\r?\n/)[0]!;
  if (password === "") throw new Error(`BI_READER_PASSWORD_FILE: ${file} is empty; delete it and run make migrate, or make rotate-bi-reader`);
  addSecret(password);
  return { password, source: file };
}

/** A random password: 32 URL-safe characters (192 bits), nothing to quote in a URL, a shell or a JDBC string. */
export function generatePassword(): string {
  const password = randomBytes(24).toString("base64url");
  addSecret(password);
  return password;
}

/**
 * Creates the file `path` holding `password`, mode 0600 (its folder made if needed, mode 0700); false when the
 * file exists already, which is left as it is.
 */
export function storePassword(path: string, password: string): boolean {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  try {
    writeFileSync(path, `${password}\n`, { mode: 0o600, flag: "wx" });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new Error(`BI_READER_PASSWORD_FILE: cannot write ${path} (${(error as Error).message})`);
  }
  chmodSync(path, 0o600); // the mode given at creation is narrowed by the umask, never widened: this is exact
  return true;
}

/**
 * A SCRAM-SHA-256 verifier for `password` (RFC 5802, as PostgreSQL stores it). Sending the verifier instead of
 * the password keeps the password itself out of the wire, the server's statement log and pg_stat_activity.
 */
export function scramVerifier(password: string, salt: Buffer = randomBytes(16), iterations = 4096): string {
  const { storedKey, serverKey } = scramKeys(password, salt, iterations);
  return `SCRAM-SHA-256$${iterations}:${salt.toString("base64")}$${storedKey.toString("base64")}:${serverKey.toString("base64")}`;
}

// SASLprep (RFC 4013) as PostgreSQL's server and libpq apply it to a SCRAM password: pure ASCII as it is; else
// non-ASCII spaces become spaces, characters "mapped to nothing" go, NFKC; a result holding a prohibited character
// (a control, private-use, surrogate, non-character or unassigned code point, a tagging or display character)
// means the password is used as it was typed. Unassigned is JavaScript's Unicode, not Unicode 3.2's, and the bidi
// rule (right-to-left text) is not checked: a password of those may still differ from psql's.
const NON_ASCII_SPACE = /[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000]/gu;
const MAPPED_TO_NOTHING = /[\u00ad\u034f\u1806\u180b-\u180d\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff]/gu;
const PROHIBITED =
  /[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000\u0340\u0341\u200e\u200f\u202a-\u202e\u206a-\u206f\u2ff0-\u2ffb\ufff9-\ufffd\u{e0001}\u{e0020}-\u{e007f}\p{Cc}\p{Co}\p{Cs}\p{Cn}\p{Noncharacter_Code_Point}]/u;

/**
 * The password as a SCRAM exchange uses it (SASLprep, as PostgreSQL and libpq do): the verifier is computed from
 * it, and the dashboard's client (postgres.js, which prepares nothing) is given it, so a password typed with
 * decomposed accents, ligatures or full-width letters logs in from the dashboard as from psql.
 */
export function preparedPassword(password: string): string {
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  const prepared = password.replace(NON_ASCII_SPACE, " ").replace(MAPPED_TO_NOTHING, "").normalize("NFKC");
  return PROHIBITED.test(prepared) ? password : prepared;
}

function scramKeys(password: string, salt: Buffer, iterations: number): { storedKey: Buffer; serverKey: Buffer } {
  const salted = pbkdf2Sync(preparedPassword(password), salt, iterations, 32, "sha256");
  const clientKey = createHmac("sha256", salted).update("Client Key").digest();
  return {
    storedKey: createHash("sha256").update(clientKey).digest(),
    serverKey: createHmac("sha256", salted).update("Server Key").digest(),
  };
}

/**
 * Is `verifier` (pg_authid.rolpassword) the one of `password` for `role`? SCRAM-SHA-256: the StoredKey recomputed
 * with the verifier's salt and iteration count; md5 (password_encryption = md5): md5(password || role). Undefined
 * for a form that cannot be compared.
 */
export function verifierMatches(verifier: string, password: string, role = READER_ROLE): boolean | undefined {
  const scram = /^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):[A-Za-z0-9+/=]+$/.exec(verifier);
  if (scram) {
    const stored = Buffer.from(scram[3]!, "base64");
    const { storedKey } = scramKeys(password, Buffer.from(scram[2]!, "base64"), Number(scram[1]));
    return stored.length === storedKey.length && timingSafeEqual(stored, storedKey);
  }
  if (/^md5[0-9a-f]{32}$/.test(verifier)) {
    const computed = `md5${createHash("md5").update(password + role).digest("hex")}`;
    return timingSafeEqual(Buffer.from(computed), Buffer.from(verifier));
  }
  return undefined;
}

/** "host:port", for messages: the role belongs to the whole server there. */
function serverOf(target: DatabaseTarget): string {
  return `${target.host}:${target.port}`;
}

/** "BI_READER_PASSWORD" or "the password stored in <file>", for messages. */
function described(source: string): string {
  return source === "BI_READER_PASSWORD" ? "BI_READER_PASSWORD" : `the password stored in ${source}`;
}

interface Role {
  readonly canLogin: boolean;
  /** null: no password yet */
  readonly verifier: string | null;
}

/** bi_reader as pg_authid holds it; undefined when the role does not exist (no sql/005 applied on the server yet). */
async function findRole(sql: Sql | TransactionSql, server: string): Promise<Role | undefined> {
  const rows = await sql<{ rolcanlogin: boolean; rolpassword: string | null }[]>`
    select rolcanlogin, rolpassword from pg_authid where rolname = ${READER_ROLE}
  `.catch((error: { code?: string }) => {
    if (error.code !== "42501") throw error;
    throw new Error(`reading ${READER_ROLE}'s password on the PostgreSQL server at ${server} (pg_authid) needs a superuser: run make migrate as one`);
  });
  return rows[0] ? { canLogin: rows[0].rolcanlogin, verifier: rows[0].rolpassword } : undefined;
}

async function readRole(sql: Sql | TransactionSql, server: string): Promise<Role> {
  const role = await findRole(sql, server);
  if (!role) throw new Error(`the role ${READER_ROLE} does not exist on the PostgreSQL server at ${server}: sql/005 creates it (make migrate)`);
  return role;
}

/**
 * Gives bi_reader its login and a password: SCRAM verifier sent, never the password. ALTER ROLE takes no
 * parameters; the verifier holds only base64 and "$:" characters, nothing to escape.
 */
async function setPassword(tx: TransactionSql, password: string): Promise<void> {
  await tx.unsafe(`alter role ${READER_ROLE} with login password '${scramVerifier(password)}'`);
}

/** Roles are shared by every database of the server: two migrators at once wait for each other here. */
async function lockRoles(tx: TransactionSql): Promise<void> {
  await tx`lock table pg_catalog.pg_authid in share row exclusive mode`;
}

/** The password a role without one gets: the one known here, else a new one stored in the password file. */
function firstPassword(config: ReaderConfig): { password: string; source: string; generated: boolean } {
  const known = knownPassword(config);
  if (known.password) return { password: known.password, source: known.source!, generated: false };
  const password = generatePassword();
  if (storePassword(config.biReaderPasswordFile, password)) return { password, source: config.biReaderPasswordFile, generated: true };
  return firstPassword(config); // written meanwhile by another migrator of this checkout: take that one
}

/**
 * Gives bi_reader its login and its first password when the role has no password yet. When it has one, leaves
 * it as it is, and says so when the password known here (BI_READER_PASSWORD, else the password file) is not the
 * role's, or when none is known. Run by every migration (make migrate, make stream).
 */
export async function ensureReaderLogin(sql: Sql, config: ReaderConfig, log: Logger): Promise<void> {
  const server = serverOf(config.database);
  let role = await findRole(sql, server);
  if (!role) {
    log.info(`no role ${READER_ROLE} on the server at ${server} yet (sql/005 creates it): no login to give`);
    return;
  }
  if (role.verifier === null) {
    role = await sql.begin(async (tx) => {
      await lockRoles(tx);
      const now = await readRole(tx, server);
      if (now.verifier !== null) return now; // set by another migrator meanwhile
      const first = firstPassword(config);
      await setPassword(tx, first.password);
      log.info(
        `${READER_ROLE} can log in now, with ${first.generated ? `a new random password stored in ${first.source}` : described(first.source)}; ` +
          `it is set once, for every database on the server at ${server}`,
      );
      return undefined;
    });
    if (!role) return;
  }
  reportPassword(role, config, log, server);
}

/** A role that has a password: is it the one known here? One line, naming neither password. */
function reportPassword(role: Role, config: ReaderConfig, log: Logger, server: string): void {
  if (!role.canLogin) {
    log.warn(`${READER_ROLE} has a password on the server at ${server} but may not log in (NOLOGIN), and make migrate leaves it so: make rotate-bi-reader gives it its login again (and sets its password)`);
  }
  const known = knownPassword(config);
  if (!known.password) {
    log.warn(
      `${READER_ROLE} has a password on the server at ${server} already (set before, perhaps from another checkout), and none is set here ` +
        `(BI_READER_PASSWORD) or stored (${config.biReaderPasswordFile}): put it in BI_READER_PASSWORD for the dashboard, or make rotate-bi-reader sets a new one, for every database on that server`,
    );
    return;
  }
  const same = verifierMatches(role.verifier!, known.password);
  const where = described(known.source!);
  if (same === true) {
    log.info(`${READER_ROLE} logs in with ${where}`);
  } else if (same === undefined) {
    log.warn(`${READER_ROLE}'s password on the server at ${server} is stored in a form that cannot be compared with ${where}; left as it is`);
  } else {
    const fix =
      known.source === "BI_READER_PASSWORD"
        ? "make rotate-bi-reader sets it to BI_READER_PASSWORD"
        : "put the role's password in BI_READER_PASSWORD, or make rotate-bi-reader sets a new one";
    log.warn(`${READER_ROLE}'s password on the server at ${server} is not ${where}; make migrate sets it only once and left it as it is: ${fix}, for every database on that server`);
  }
}

/**
 * Sets bi_reader's password (and login) on purpose: to BI_READER_PASSWORD when set, else to a new random one,
 * which replaces the password file. The role belongs to the whole server: every database there is concerned.
 */
export async function rotateReaderPassword(sql: Sql, config: ReaderConfig, log: Logger): Promise<void> {
  const server = serverOf(config.database);
  const file = config.biReaderPasswordFile;
  const password = config.biReaderPassword ?? generatePassword();
  // A new password goes to a file of its own first, renamed over the old one once the server has it: the file
  // is never half written, and never holds a password the role was not given.
  const pending = config.biReaderPassword ? undefined : `${file}.${process.pid}.tmp`;
  if (pending) {
    rmSync(pending, { force: true });
    storePassword(pending, password);
  }
  try {
    await sql.begin(async (tx) => {
      await lockRoles(tx);
      await readRole(tx, server);
      await setPassword(tx, password);
    });
  } catch (error) {
    if (pending) rmSync(pending, { force: true });
    throw error;
  }
  if (pending) renameSync(pending, file);
  log.info(
    `${READER_ROLE}'s password is now ${pending ? `a new random one, stored in ${file}` : "the one in BI_READER_PASSWORD"}, for every database on the server at ${server} ` +
      "(a role belongs to the whole server); sessions open now go on: give it to Tableau, DBeaver or Superset, and restart the dashboard",
  );
}

/** What to do when the server refuses bi_reader, by where its password came from. */
function loginHelp(source: string | undefined, file: string): string {
  if (source === "BI_READER_PASSWORD") {
    return "it logs in with BI_READER_PASSWORD: make migrate gives the role its login, and make rotate-bi-reader sets its password to BI_READER_PASSWORD (for every database on the server)";
  }
  if (source) {
    return (
      `it logs in with the password stored in ${source}: make migrate gives the role its login; if the role has another password, ` +
      "put that one in BI_READER_PASSWORD, or make rotate-bi-reader sets a new one (for every database on the server)"
    );
  }
  return (
    `no password for it is set (BI_READER_PASSWORD) or stored (${file}): make migrate gives the role its login and stores its first password there; ` +
    "if the role has one already, put it in BI_READER_PASSWORD, or make rotate-bi-reader sets a new one (for every database on the server)"
  );
}

/** The pipeline's database, logged in as bi_reader with the password known here (the dashboard's login). */
export function readerTarget(config: ReaderConfig): DatabaseTarget {
  const known = knownPassword(config);
  return Object.freeze({
    ...config.database,
    user: READER_ROLE,
    password: known.password === undefined ? undefined : preparedPassword(known.password),
    loginHelp: loginHelp(known.source, config.biReaderPasswordFile),
  });
}
