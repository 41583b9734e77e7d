// The Superstore record: which source columns mean what, and how a raw value becomes a clean one.
//
// Header names are matched loosely ("Sub-Category", "sub_category" and "SUB CATEGORY" are one field), so the
// Kaggle file, UTF-8 copies and the Global Superstore (other column order, Order Priority, Market, Shipping
// Cost) all load. Cleaning never guesses: text is trimmed, an empty optional field becomes NULL, dates may be
// ISO, M/D/YYYY or D-M-YYYY, numbers stay exact decimal strings, US postal codes get back their leading zero;
// any other value that does not parse rejects the row with a reason naming the field.
//
// A clean value is also one PostgreSQL will take: every limit of the column it goes to is checked here, the
// way the database counts (characters, not UTF-16 units; numeric digits; integer range), so COPY does not fail
// on data. Implausible values are either rejected or loaded with a warning, rule by rule (PLAUSIBILITY).

import { byColumn } from "./csv.ts";

export type Kind = "text" | "date" | "decimal" | "integer" | "postal";

export interface FieldSpec {
  /** the name people know the field by, used in reasons */
  readonly label: string;
  /** column in `orders` */
  readonly column: string;
  readonly kind: Kind;
  readonly required?: boolean;
  /** varchar limit of the column, if any */
  readonly max?: number;
}

/** Keyed by normalized header name (see normalizeHeader). Limits follow sql/ (the seed's varchar sizes). */
export const FIELDS = {
  orderid: { label: "Order ID", column: "order_id", kind: "text", required: true, max: 30 },
  orderdate: { label: "Order Date", column: "order_date", kind: "date", required: true },
  shipdate: { label: "Ship Date", column: "ship_date", kind: "date" },
  shipmode: { label: "Ship Mode", column: "ship_mode", kind: "text", max: 50 },
  orderpriority: { label: "Order Priority", column: "order_priority", kind: "text", max: 30 },
  customerid: { label: "Customer ID", column: "customer_id", kind: "text", required: true, max: 20 },
  customername: { label: "Customer Name", column: "customer_name", kind: "text" },
  segment: { label: "Segment", column: "segment", kind: "text", max: 50 },
  country: { label: "Country", column: "country", kind: "text" },
  city: { label: "City", column: "city", kind: "text", max: 50 },
  state: { label: "State", column: "state", kind: "text", max: 50 },
  postalcode: { label: "Postal Code", column: "postal_code", kind: "postal", max: 20 },
  region: { label: "Region", column: "region", kind: "text", max: 50 },
  market: { label: "Market", column: "market", kind: "text" },
  productid: { label: "Product ID", column: "product_id", kind: "text", required: true, max: 30 },
  category: { label: "Category", column: "category", kind: "text", max: 50 },
  subcategory: { label: "Sub-Category", column: "sub_category", kind: "text", max: 50 },
  productname: { label: "Product Name", column: "product_name", kind: "text" },
  sales: { label: "Sales", column: "sales", kind: "decimal", required: true },
  quantity: { label: "Quantity", column: "quantity", kind: "integer", required: true },
  discount: { label: "Discount", column: "discount", kind: "decimal" },
  profit: { label: "Profit", column: "profit", kind: "decimal" },
  shippingcost: { label: "Shipping Cost", column: "shipping_cost", kind: "decimal" },
} as const satisfies Record<string, FieldSpec>;

export type FieldKey = keyof typeof FIELDS;

const FIELD_KEYS = Object.keys(FIELDS) as FieldKey[];

/** Own keys only: "constructor" is in every object, but is not a field. */
function isFieldKey(key: string): key is FieldKey {
  return Object.hasOwn(FIELDS, key);
}
/** The row's identity within its file; not a column of its own (see OrderRow.source_row_id). */
export const ROW_ID_KEY = "rowid";

/** "Sub-Category" -> "subcategory", "Row ID" -> "rowid", "order_date" -> "orderdate". */
export function normalizeHeader(name: string): string {
  return name.replace(/^\uFEFF/, "").toLowerCase().replace(/[\s_\-.]+/g, "");
}

export interface HeaderMap {
  /** source column -> field key */
  readonly fields: ReadonlyMap<string, FieldKey>;
  /** field key -> source column: the same map turned round, built once per file rather than per row */
  readonly columnOf: ReadonlyMap<FieldKey, string>;
  /** source column holding the Row ID, if the file has one */
  readonly rowId: string | undefined;
  /** source columns that mean nothing known; kept in orders.extra */
  readonly extra: readonly string[];
}

/** Maps a file's header. Throws when two columns mean the same field: which one to load would be a guess. */
export function mapHeader(columns: readonly string[]): HeaderMap {
  const fields = new Map<string, FieldKey>();
  const seen = new Map<string, number>();
  const extra: string[] = [];
  let rowId: string | undefined;
  for (const [i, column] of columns.entries()) {
    const key = normalizeHeader(column);
    const other = seen.get(key);
    if (other !== undefined && key !== "") {
      const meaning = isFieldKey(key) ? FIELDS[key].label : key === ROW_ID_KEY ? "Row ID" : JSON.stringify(key);
      throw new Error(
        `columns ${other + 1} (${JSON.stringify(columns[other])}) and ${i + 1} (${JSON.stringify(column)}) both mean ${meaning}`,
      );
    }
    seen.set(key, i);
    if (key === ROW_ID_KEY) rowId = column;
    else if (isFieldKey(key)) fields.set(column, key);
    else extra.push(column);
  }
  const columnOf = new Map([...fields].map(([column, key]) => [key, column] as const));
  return { fields, columnOf, rowId, extra };
}

const DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function isoDate(y: number, m: number, d: number): string | undefined {
  const leap = (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
  const days = m === 2 && leap ? 29 : DAYS[m - 1];
  if (days === undefined || d < 1 || d > days || y < 1) return undefined;
  return `${String(y).padStart(4, "0")}-${String(m).padStart(2, "0")}-${String(d).padStart(2, "0")}`;
}

/** ISO (YYYY-MM-DD), M/D/YYYY (slash, US order) or D-M-YYYY (dash, year last) -> YYYY-MM-DD. */
export function parseDate(value: string): string | undefined {
  let m = /^(\d{4})-(\d{1,2})-(\d{1,2})$/.exec(value);
  if (m) return isoDate(Number(m[1]), Number(m[2]), Number(m[3]));
  m = /^(\d{1,2})\/(\d{1,2})\/(\d{4})$/.exec(value);
  if (m) return isoDate(Number(m[3]), Number(m[1]), Number(m[2]));
  m = /^(\d{1,2})-(\d{1,2})-(\d{4})$/.exec(value);
  if (m) return isoDate(Number(m[3]), Number(m[2]), Number(m[1]));
  return undefined;
}

/** An exact decimal, returned as written (PostgreSQL numeric keeps every digit). No grouping, no exponent. */
export function parseDecimal(value: string): string | undefined {
  return /^[+-]?(\d+(\.\d*)?|\.\d+)$/.test(value) ? value : undefined;
}

/** Why PostgreSQL's numeric cannot hold a decimal from parseDecimal (too many digits), or undefined. */
export function decimalOutOfRange(value: string): string | undefined {
  if (value.length <= NUMERIC_MAX_SCALE) return undefined; // too short to break either limit
  const [whole = "", fraction = ""] = value.replace(/^[+-]/, "").split(".");
  const digits = whole.replace(/^0+/, "").length;
  if (digits > NUMERIC_MAX_INTEGER_DIGITS) return `${digits} digits before the point, more than the ${NUMERIC_MAX_INTEGER_DIGITS} PostgreSQL takes`;
  if (fraction.length > NUMERIC_MAX_SCALE) return `${fraction.length} digits after the point, more than the ${NUMERIC_MAX_SCALE} PostgreSQL takes`;
  return undefined;
}

/** Compares two decimals from parseDecimal exactly (no floating point): -1, 0 or 1. */
export function compareDecimal(a: string, b: string): number {
  // Up to 15 characters means up to 15 significant digits: each such decimal has a double of its own, and
  // converting keeps the order, so comparing the doubles is exact.
  if (a.length <= 15 && b.length <= 15) {
    const x = Number(a);
    const y = Number(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  const parse = (v: string) => {
    const negative = v.startsWith("-");
    const [whole = "", fraction = ""] = v.replace(/^[+-]/, "").split(".");
    return { negative, whole: whole.replace(/^0+/, ""), fraction: fraction.replace(/0+$/, "") };
  };
  const x = parse(a);
  const y = parse(b);
  const zero = (p: typeof x) => p.whole === "" && p.fraction === "";
  const sign = (p: typeof x) => (zero(p) ? 0 : p.negative ? -1 : 1);
  if (sign(x) !== sign(y)) return sign(x) < sign(y) ? -1 : 1;
  if (sign(x) === 0) return 0;
  let magnitude = x.whole.length - y.whole.length;
  if (magnitude === 0) magnitude = x.whole < y.whole ? -1 : x.whole > y.whole ? 1 : 0;
  if (magnitude === 0) {
    const width = Math.max(x.fraction.length, y.fraction.length);
    const fx = x.fraction.padEnd(width, "0");
    const fy = y.fraction.padEnd(width, "0");
    magnitude = fx < fy ? -1 : fx > fy ? 1 : 0;
  }
  return Math.sign(magnitude) * sign(x) || 0; // never -0
}

/** A whole number within PostgreSQL's integer range (or up to `max`, for bigint columns). */
export function parseInteger(value: string, max = 2_147_483_647): number | undefined {
  if (!/^[+-]?\d+$/.test(value)) return undefined;
  const n = Number(value);
  return n <= max && n >= -max - 1 ? n : undefined;
}

const US = new Set(["united states", "united states of america", "usa", "us"]);

/**
 * US ZIP codes lost their leading zero when the file went through a spreadsheet ("5408" for "05408"):
 * three or four digits are padded to five. Other countries' codes are kept as written.
 */
export function parsePostalCode(value: string, country: string | null): string | undefined {
  if (country === null || !US.has(country.toLowerCase())) return value;
  if (/^\d{3,4}$/.test(value)) return value.padStart(5, "0");
  return /^\d{5}(-\d{4})?$/.test(value) ? value : undefined;
}

/** PostgreSQL text and jsonb cannot hold U+0000. */
export const NUL = "\u0000";
const NUL_PROBLEM = "contains a NUL character (byte 0), which PostgreSQL cannot store";
const SURROGATE_PROBLEM = "contains a broken character (a lone UTF-16 surrogate), which has no UTF-8 form";

/** What PostgreSQL's numeric takes at most: 131,072 digits before the point, 16,383 after. */
export const NUMERIC_MAX_INTEGER_DIGITS = 131_072;
export const NUMERIC_MAX_SCALE = 16_383;

/** Why PostgreSQL could not store `text` as text (NUL, broken UTF-16), or undefined when it can. */
export function unstorable(text: string): string | undefined {
  if (text.includes(NUL)) return NUL_PROBLEM;
  if (!text.isWellFormed()) return SURROGATE_PROBLEM;
  return undefined;
}

/** Characters as PostgreSQL counts them in a UTF-8 database: code points (a surrogate pair is one). */
export function characterCount(text: string): number {
  let n = text.length;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff) n--;
  }
  return n;
}

/** Text as it can be stored for people to read: NUL and lone surrogates written as \u0000-style escapes. */
export function storable(text: string): string {
  if (unstorable(text) === undefined) return text;
  return text
    .replaceAll(NUL, "\\u0000")
    .replace(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, (c) => `\\u${c.charCodeAt(0).toString(16)}`);
}

const EXPECTED: Record<Kind, string> = {
  text: "text",
  date: "a date (YYYY-MM-DD, M/D/YYYY or D-M-YYYY)",
  decimal: "a decimal number such as 261.96 or -0.5",
  integer: "a whole number",
  postal: "a US ZIP code (5 digits, or 3-4 digits that lost leading zeros)",
};

export type CleanValue = string | number | null;

/** The cleaned values of one source row, keyed by `orders` column, plus its extras and warnings. */
export interface CleanRow {
  readonly values: Record<string, CleanValue>;
  readonly rowId: number | undefined;
  readonly extra: Record<string, string> | null;
  /** plausibility rules the row breaks without being rejected; null when none */
  readonly warnings: string[] | null;
}

export type CleanResult = { readonly ok: true; readonly row: CleanRow } | { readonly ok: false; readonly reason: string };

function quote(value: string): string {
  const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
  return JSON.stringify(shown);
}

type Values = Readonly<Record<string, CleanValue>>;

/**
 * Plausibility, rule by rule. A "reject" rule describes a value that cannot be right and whose meaning would be
 * a guess (a discount of 15: 15% or 1,500%?); a "warn" rule describes a row that is odd but may be true, which
 * loads with the warning in orders.warnings and is counted in the loader's summary.
 */
export const PLAUSIBILITY: readonly {
  readonly action: "reject" | "warn";
  readonly field: FieldKey;
  readonly broken: (v: Values) => boolean;
  readonly message: (v: Values) => string;
}[] = [
  {
    action: "reject",
    field: "quantity",
    broken: (v) => typeof v.quantity === "number" && v.quantity <= 0,
    message: (v) => `${v.quantity} is not a positive count of items`,
  },
  {
    action: "reject",
    field: "discount",
    broken: (v) => typeof v.discount === "string" && (compareDecimal(v.discount, "0") < 0 || compareDecimal(v.discount, "1") > 0),
    message: (v) => `${v.discount} is outside 0..1 (a fraction of the price: 0.2 for 20%)`,
  },
  {
    action: "warn",
    field: "shipdate",
    broken: (v) => typeof v.ship_date === "string" && typeof v.order_date === "string" && v.ship_date < v.order_date,
    message: (v) => `${v.ship_date} is before the order date ${v.order_date}`,
  },
  {
    action: "warn",
    field: "sales",
    broken: (v) => typeof v.sales === "string" && compareDecimal(v.sales, "0") <= 0,
    message: (v) => `${v.sales} is not a positive amount`,
  },
  {
    action: "warn",
    field: "profit",
    broken: (v) => typeof v.profit === "string" && typeof v.sales === "string" && compareDecimal(v.profit, v.sales) > 0,
    message: (v) => `${v.profit} is more than the sales of ${v.sales}`,
  },
];

/** One raw value -> its clean value, or the problem (naming what was expected). */
function cleanValue(spec: FieldSpec, raw: string, country: string | null): { value: CleanValue } | { problem: string } {
  const bad = unstorable(raw);
  if (bad) return { problem: bad };
  let value: CleanValue | undefined;
  switch (spec.kind) {
    case "text":
      value = raw;
      break;
    case "date":
      value = parseDate(raw);
      break;
    case "decimal": {
      value = parseDecimal(raw);
      const range = value === undefined ? undefined : decimalOutOfRange(value);
      if (range) return { problem: range };
      break;
    }
    case "integer":
      value = parseInteger(raw);
      break;
    case "postal":
      value = parsePostalCode(raw, country);
      break;
  }
  if (value === undefined) return { problem: `${quote(raw)} is not ${EXPECTED[spec.kind]}` };
  if (spec.max !== undefined && typeof value === "string" && value.length > spec.max) {
    const length = characterCount(value);
    if (length > spec.max) return { problem: `${length} characters, more than the ${spec.max} allowed` };
  }
  return { value };
}

/** Cleans one row; every problem is listed in the reason, each naming its field as the file spells it. */
export function cleanRow(source: Readonly<Record<string, string>>, header: HeaderMap): CleanResult {
  const values: Record<string, CleanValue> = {};
  const problems: string[] = [];
  const sourceName = header.columnOf;
  const nameOf = (key: FieldKey) => sourceName.get(key) ?? FIELDS[key].label;

  // Country first: postal codes are read according to it.
  const countryColumn = sourceName.get("country");
  const country = countryColumn === undefined ? null : (source[countryColumn] ?? "").trim() || null;

  for (const key of FIELD_KEYS) {
    const spec: FieldSpec = FIELDS[key];
    const column = sourceName.get(key);
    const raw = column === undefined ? "" : (source[column] ?? "").trim();
    values[spec.column] = null;
    if (raw === "") {
      if (spec.required) problems.push(column === undefined ? `${nameOf(key)}: no such column` : `${nameOf(key)}: empty`);
      continue;
    }
    const clean = cleanValue(spec, raw, country);
    if ("problem" in clean) problems.push(`${nameOf(key)}: ${clean.problem}`);
    else values[spec.column] = clean.value;
  }

  let rowId: number | undefined;
  if (header.rowId !== undefined) {
    const raw = (source[header.rowId] ?? "").trim();
    rowId = parseInteger(raw, Number.MAX_SAFE_INTEGER);
    if (rowId === undefined || rowId < 1) {
      problems.push(`${header.rowId}: ${raw === "" ? "empty" : `${quote(raw)} is not a positive whole number`}`);
    }
  }

  let extra: Record<string, string> | null = null;
  for (const column of header.extra) {
    const raw = (source[column] ?? "").trim();
    const bad = unstorable(column) ?? unstorable(raw);
    if (bad) problems.push(`${JSON.stringify(storable(column))}: ${bad}`);
    else if (raw !== "") (extra ??= byColumn<string>())[column] = raw;
  }

  let warnings: string[] | null = null;
  if (problems.length === 0) {
    for (const rule of PLAUSIBILITY) {
      if (!rule.broken(values)) continue;
      const text = `${nameOf(rule.field)}: ${rule.message(values)}`;
      if (rule.action === "reject") problems.push(text);
      else (warnings ??= []).push(text);
    }
  }

  if (problems.length > 0) return { ok: false, reason: problems.join("; ") };
  return { ok: true, row: { values, rowId, extra, warnings } };
}

/** Source columns every Superstore export has; without them a file is something else. */
export const REQUIRED_KEYS = FIELD_KEYS.filter((key) => (FIELDS[key] as FieldSpec).required);

/**
 * Checks a source file's header before anything is sent: two columns that mean one field, or a required
 * field with no column (the file is not a Superstore export). Returns the problem, or undefined.
 */
export function headerProblem(columns: readonly string[]): string | undefined {
  let header: HeaderMap;
  try {
    header = mapHeader(columns);
  } catch (error) {
    return (error as Error).message;
  }
  const missing = REQUIRED_KEYS.filter((key) => !header.columnOf.has(key)).map((key) => FIELDS[key].label);
  if (missing.length > 0) {
    const shown = columns.slice(0, 12).map((c) => JSON.stringify(c)).join(", ");
    return `not a Superstore export: no column for ${missing.join(", ")} (the header has ${shown}${columns.length > 12 ? ", ..." : ""})`;
  }
  return undefined;
}

/** Row ID column of a header (for the producer's message keys), matched loosely. */
export function findRowIdColumn(columns: readonly string[]): number {
  return columns.findIndex((c) => normalizeHeader(c) === ROW_ID_KEY);
}
