// The Superstore record: which source columns mean what, and how a raw value becomes a clean one.
//
// Header names are matched loosely ("Sub-Category", "sub_category" and "SUB CATEGORY" are one field), so the
// Kaggle file, UTF-8 copies and the Global Superstore (other column order, Order Priority, Market, Shipping
// Cost) all load. Cleaning never guesses: text is trimmed, an empty optional field becomes NULL, dates may be
// ISO, M/D/YYYY or D-M-YYYY, numbers stay exact decimal strings, US postal codes get back their leading zero;
// any other value that does not parse rejects the row with a reason naming the field.

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
  const seen = new Map<string, string>();
  const extra: string[] = [];
  let rowId: string | undefined;
  for (const column of columns) {
    const key = normalizeHeader(column);
    const other = seen.get(key);
    if (other !== undefined && key !== "") {
      throw new Error(`columns "${other}" and "${column}" both mean ${isFieldKey(key) ? FIELDS[key].label : key}`);
    }
    seen.set(key, column);
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

const EXPECTED: Record<Kind, string> = {
  text: "text",
  date: "a date (YYYY-MM-DD, M/D/YYYY or D-M-YYYY)",
  decimal: "a decimal number such as 261.96 or -0.5",
  integer: "a whole number",
  postal: "a US ZIP code (5 digits, or 3-4 digits that lost leading zeros)",
};

export type CleanValue = string | number | null;

/** The cleaned values of one source row, keyed by `orders` column, plus its extras. */
export interface CleanRow {
  readonly values: Record<string, CleanValue>;
  readonly rowId: number | undefined;
  readonly extra: Record<string, string> | null;
}

export type CleanResult = { readonly ok: true; readonly row: CleanRow } | { readonly ok: false; readonly reason: string };

function quote(value: string): string {
  const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
  return JSON.stringify(shown);
}

/** Cleans one row; every problem is listed in the reason, each naming its field as the file spells it. */
export function cleanRow(source: Readonly<Record<string, string>>, header: HeaderMap): CleanResult {
  const values: Record<string, CleanValue> = {};
  const problems: string[] = [];
  const sourceName = header.columnOf;

  // Country first: postal codes are read according to it.
  const countryColumn = sourceName.get("country");
  const country = countryColumn === undefined ? null : (source[countryColumn] ?? "").trim() || null;

  for (const key of FIELD_KEYS) {
    const spec: FieldSpec = FIELDS[key];
    const column = sourceName.get(key);
    const raw = column === undefined ? "" : (source[column] ?? "").trim();
    const name = column ?? spec.label;
    if (raw === "") {
      values[spec.column] = null;
      if (spec.required) problems.push(column === undefined ? `${name}: no such column` : `${name}: empty`);
      continue;
    }
    if (raw.includes(NUL)) {
      problems.push(`${name}: ${NUL_PROBLEM}`);
      continue;
    }
    let value: CleanValue | undefined;
    switch (spec.kind) {
      case "text":
        value = raw;
        break;
      case "date":
        value = parseDate(raw);
        break;
      case "decimal":
        value = parseDecimal(raw);
        break;
      case "integer":
        value = parseInteger(raw);
        break;
      case "postal":
        value = parsePostalCode(raw, country);
        break;
    }
    if (value === undefined) {
      problems.push(`${name}: ${quote(raw)} is not ${EXPECTED[spec.kind]}`);
      continue;
    }
    if (spec.max !== undefined && typeof value === "string" && value.length > spec.max) {
      problems.push(`${name}: ${value.length} characters, more than the ${spec.max} allowed`);
      continue;
    }
    values[spec.column] = value;
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
    const raw = source[column] ?? "";
    if (raw.includes(NUL) || column.includes(NUL)) problems.push(`${JSON.stringify(column)}: ${NUL_PROBLEM}`);
    else if (raw.trim() !== "") (extra ??= {})[column] = raw.trim();
  }

  if (problems.length > 0) return { ok: false, reason: problems.join("; ") };
  return { ok: true, row: { values, rowId, extra } };
}

/** Row ID column of a header (for the producer's message keys), matched loosely. */
export function findRowIdColumn(columns: readonly string[]): number {
  return columns.findIndex((c) => normalizeHeader(c) === ROW_ID_KEY);
}
