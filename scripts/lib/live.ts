// Where make stream's pipeline lives, beside the demo's: the same server and broker, with names of its own
// derived from the demo's (scripts/live.ts empties it at each start; make destroy deletes it with the rest).

import { join } from "node:path";
import { parseTopic, type Config, type DatabaseTarget } from "./config.ts";
import { withDatabase } from "./db.ts";

/** PostgreSQL cuts longer names short without a word, which could name another database. */
const MAX_DATABASE_NAME_BYTES = 63;

export interface LiveTarget {
  readonly database: DatabaseTarget;
  readonly topic: string;
  readonly group: string;
  readonly dir: string;
}

/** The live pipeline beside the one `config` names: `<database>_live`, `<topic>_live`, `<group>-live`, `<dir>/live`. */
export function liveTarget(config: Config): LiveTarget {
  const name = `${config.database.database}_live`;
  if (Buffer.byteLength(name) > MAX_DATABASE_NAME_BYTES) {
    throw new Error(`the live database's name ${name} is longer than PostgreSQL's ${MAX_DATABASE_NAME_BYTES} bytes: choose a shorter database in DATABASE_URL`);
  }
  return {
    database: withDatabase(config.database, name),
    topic: parseTopic(`${config.kafkaTopic}_live`, "KAFKA_TOPIC with _live"),
    group: `${config.kafkaGroupId}-live`,
    dir: join(config.batchesDir, "live"),
  };
}
