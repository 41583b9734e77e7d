// The Tableau files in sql/tableau/: both are valid against Tableau's document schema, they name only the BI
// views and columns those views really have, sales.tds reaches PostgreSQL as bi_reader with no password in it,
// and superstore_sales.twb reads the CSV exports and shows its four worksheets on one dashboard.

import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { readConfig } from "../scripts/lib/config.ts";
import { createTestDatabase, ROOT, type TestDatabase } from "./helpers.ts";

const TDS = join(ROOT, "sql", "tableau", "sales.tds");
const TWB = join(ROOT, "sql", "tableau", "superstore_sales.twb");
const SCHEMA = join(import.meta.dir, "..", "..", "shared", "tableau-schemas", "tableau.xsd");
const VIEWS = ["v_sales", "v_monthly_sales", "v_product_performance", "v_customer_segments", "v_region_sales"];
const SHEETS = ["Sales and profit over time", "Sales by region and state", "Top products", "Segments"];
/** "Order Date", "Sub-Category", "Customer ID" */
const READABLE = /^[A-Z][A-Za-z]*(?:[ -][A-Z][A-Za-z]*)*$/;

// Tableau's schema lives outside the repository; where it or xmllint is missing the schema checks are skipped,
// and the rest of the file still runs.
const XMLLINT = Bun.which("xmllint");
const cannotValidate = !existsSync(SCHEMA)
  ? `Tableau's schema is not at ${SCHEMA}`
  : XMLLINT === null
    ? "xmllint is not installed (Debian: apt-get install libxml2-utils)"
    : undefined;
if (cannotValidate && readConfig().requireAllTests) throw new Error(`the Tableau schema checks cannot run: ${cannotValidate}`);
if (cannotValidate) console.warn(`skipping the Tableau schema checks: ${cannotValidate}`);

// --- A small XML reader: enough for Tableau's files (elements, attributes, text, comments), no DTDs.

interface XmlElement {
  readonly name: string;
  readonly attrs: Readonly<Record<string, string>>;
  readonly children: XmlElement[];
  text: string;
}

const TOKEN = /<!--[\s\S]*?-->|<\?[\s\S]*?\?>|<(\/?)([\w:.-]+)((?:\s+[\w:.-]+\s*=\s*(?:'[^']*'|"[^"]*"))*)\s*(\/?)>|([^<]+)/gy;
const ATTRIBUTE = /([\w:.-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")/g;

function decode(text: string): string {
  return text.replace(/&(#x[0-9a-f]+|#\d+|apos|quot|amp|lt|gt);/gi, (_, entity: string) => {
    if (entity.startsWith("#x") || entity.startsWith("#X")) return String.fromCodePoint(parseInt(entity.slice(2), 16));
    if (entity.startsWith("#")) return String.fromCodePoint(Number(entity.slice(1)));
    return { apos: "'", quot: '"', amp: "&", lt: "<", gt: ">" }[entity.toLowerCase()]!;
  });
}

function parseXml(source: string, file: string): XmlElement {
  const root: XmlElement = { name: "#document", attrs: {}, children: [], text: "" };
  const open = [root];
  TOKEN.lastIndex = 0;
  while (TOKEN.lastIndex < source.length) {
    const at = TOKEN.lastIndex;
    const m = TOKEN.exec(source);
    if (!m) throw new Error(`${file}: cannot read the XML at offset ${at}: ${source.slice(at, at + 40)}`);
    const [, closing, name, attrs = "", selfClosing, text] = m;
    const parent = open.at(-1)!;
    if (text !== undefined) parent.text += decode(text);
    else if (name === undefined) continue; // a comment or the XML declaration
    else if (closing) {
      if (parent.name !== name) throw new Error(`${file}: </${name}> at offset ${at} closes <${parent.name}>`);
      open.pop();
    } else {
      const element: XmlElement = { name, attrs: attributes(attrs), children: [], text: "" };
      parent.children.push(element);
      if (!selfClosing) open.push(element);
    }
  }
  if (open.length !== 1) throw new Error(`${file}: <${open.at(-1)!.name}> is never closed`);
  const [document] = root.children;
  if (!document || root.children.length !== 1) throw new Error(`${file}: expected one root element`);
  return document;
}

function attributes(text: string): Record<string, string> {
  const pairs = [...text.matchAll(ATTRIBUTE)].map(([, name, single, double]) => [name!, decode(single ?? double ?? "")]);
  return Object.fromEntries(pairs);
}

/** Every element below `el`, in document order. */
function descendantsOf(el: XmlElement): XmlElement[] {
  return el.children.flatMap((c) => [c, ...descendantsOf(c)]);
}

/** Every element named `name` below `el`, in document order. */
function all(el: XmlElement, name: string): XmlElement[] {
  return descendantsOf(el).filter((c) => c.name === name);
}

function children(el: XmlElement, name: string): XmlElement[] {
  return el.children.filter((c) => c.name === name);
}

function textOf(el: XmlElement, name: string): string | undefined {
  return children(el, name)[0]?.text.trim();
}

function read(file: string): XmlElement {
  return parseXml(readFileSync(file, "utf8"), file);
}

// --- What the files name: views, and columns of those views.

interface ColumnRef {
  readonly view: string;
  readonly column: string;
  /** where in the file, for the failure message */
  readonly where: string;
}

interface References {
  /** the view behind each relation, in document order */
  readonly views: string[];
  readonly columns: ColumnRef[];
  /** data source name -> its view */
  readonly sources: Map<string, string>;
}

/** "[public].[v_sales]" and "[v_sales#csv]" name the view v_sales; so do "v_sales" and "v_sales.csv". */
function viewOf(table: string): string {
  return table.replace(/^\[public\]\./, "").replace(/^\[(.*)\]$/, "$1").replace(/(#csv|\.csv)$/, "");
}

/** "[x]" -> "x"; a field on a shelf, "sum:x:qk" -> "x". */
function fieldName(ref: string): string {
  const bare = ref.replace(/^\[(.*)\]$/, "$1");
  const parts = bare.split(":");
  return parts.length === 3 ? parts[1]! : bare;
}

/** Data sources defined in the file (those with a connection), as opposed to a worksheet's mention of one. */
function definedSources(doc: XmlElement): XmlElement[] {
  const list = doc.name === "datasource" ? [doc] : all(doc, "datasource");
  return list.filter((ds) => children(ds, "connection").length > 0);
}

function references(doc: XmlElement): References {
  const views: string[] = [];
  const columns: ColumnRef[] = [];
  const sources = new Map<string, string>();
  for (const ds of definedSources(doc)) {
    const dsName = ds.attrs.name ?? ds.attrs["formatted-name"] ?? "(the data source)";
    const relations = all(ds, "relation");
    const named = [
      ...relations.flatMap((r) => [r.attrs.table, r.attrs.name]),
      ...all(ds, "connection").map((c) => c.attrs.filename),
    ].filter((t): t is string => t !== undefined);
    views.push(...relations.map((r) => viewOf(r.attrs.table ?? r.attrs.name ?? "")));
    const own = [...new Set(named.map(viewOf))];
    if (own.length !== 1) throw new Error(`${dsName} reads ${own.join(", ")}: expected one view`);
    const view = own[0]!;
    sources.set(dsName, view);
    const add = (column: string, where: string) => columns.push({ view, column, where: `${dsName}: ${where}` });
    for (const c of children(ds, "column")) add(fieldName(c.attrs.name ?? ""), `<column name='${c.attrs.name}'>`);
    for (const c of relations.flatMap((r) => all(r, "column"))) add(c.attrs.name ?? "", `<relation> column ${c.attrs.name}`);
    for (const record of all(ds, "metadata-record")) {
      if (record.attrs.class !== "column") continue;
      add(textOf(record, "remote-name") ?? "", `metadata-record ${textOf(record, "remote-name")}`);
      add(fieldName(textOf(record, "local-name") ?? ""), `metadata-record ${textOf(record, "local-name")}`);
      const parent = textOf(record, "parent-name");
      if (parent !== undefined) views.push(viewOf(parent));
    }
  }
  // Worksheets and dashboards point at fields as [data source].[field], in attributes and in shelf text.
  for (const sheet of [...all(doc, "worksheet"), ...all(doc, "dashboard")]) {
    const viewFor = (ds: string | undefined) => {
      const view = sources.get(ds ?? "");
      if (view === undefined) throw new Error(`${sheet.attrs.name} names an unknown data source ${ds}`);
      return view;
    };
    const add = (view: string, field: string, where: string) =>
      columns.push({ view, column: fieldName(field), where: `${sheet.attrs.name}: ${where}` });
    for (const deps of all(sheet, "datasource-dependencies")) {
      const view = viewFor(deps.attrs.datasource);
      for (const c of children(deps, "column")) add(view, c.attrs.name ?? "", `<column name='${c.attrs.name}'>`);
      for (const c of children(deps, "column-instance")) {
        add(view, c.attrs.column ?? "", `<column-instance column='${c.attrs.column}'>`);
      }
    }
    for (const el of [sheet, ...descendantsOf(sheet)]) {
      for (const value of [...Object.values(el.attrs), el.text]) {
        for (const [, ds, field] of value.matchAll(/\[(federated\.[^\]]+)\]\.\[([^\]]+)\]/g)) {
          add(viewFor(ds), field!, `<${el.name}> [${ds}].[${field}]`);
        }
      }
    }
  }
  return { views, columns, sources };
}

/** Tableau's datatype for a PostgreSQL column type. */
function tableauType(pgType: string): string {
  const types: Record<string, string> = {
    bigint: "integer",
    integer: "integer",
    numeric: "real",
    date: "date",
    "character varying": "string",
    text: "string",
  };
  return types[pgType] ?? `(no Tableau type for ${pgType})`;
}

describe("Tableau's document schema", () => {
  for (const file of [TDS, TWB]) {
    test.skipIf(cannotValidate !== undefined)(`accepts ${basename(file)}`, () => {
      const run = Bun.spawnSync([XMLLINT!, "--noout", "--schema", SCHEMA, file], { stdout: "pipe", stderr: "pipe" });
      expect(`${run.exitCode} ${run.stderr.toString().trim()}`).toBe(`0 ${file} validates`);
    });
  }
});

describe("sales.tds", () => {
  const doc = read(TDS);

  test("connects through PostgreSQL to the database sales on localhost:5432 as bi_reader", () => {
    expect(doc.name).toBe("datasource");
    const [federated] = children(doc, "connection");
    expect(federated?.attrs.class).toBe("federated");
    const named = all(federated!, "named-connection").flatMap((n) => children(n, "connection"));
    const { class: kind, server, port, dbname, username } = named[0]?.attrs ?? {};
    expect(named.length).toBe(1);
    expect({ kind, server, port, dbname, username }).toEqual({
      kind: "postgres",
      server: "localhost",
      port: "5432",
      dbname: "sales",
      username: "bi_reader",
    });
  });

  test("holds no password: Tableau asks for it at connect time", () => {
    const withPassword = [doc, ...descendantsOf(doc)].filter((el) => "password" in el.attrs).map((el) => el.name);
    expect(withPassword).toEqual([]);
  });

  test("reads the view v_sales and nothing else", () => {
    const tables = all(doc, "relation").map((r) => r.attrs.table);
    expect(new Set(tables)).toEqual(new Set(["[public].[v_sales]"]));
  });

  test("gives every column a readable caption, a role and a type", () => {
    const columns = children(doc, "column").map(({ attrs }) => ({
      name: attrs.name,
      caption: attrs.caption,
      role: attrs.role,
      type: attrs.type,
    }));
    expect(columns.length).toBeGreaterThan(0);
    for (const c of columns) {
      expect(c).toEqual({
        name: c.name,
        caption: expect.stringMatching(READABLE),
        role: expect.stringMatching(/^(dimension|measure)$/),
        type: expect.stringMatching(/^(nominal|ordinal|quantitative)$/),
      });
    }
    expect(columns.find((c) => c.name === "[sub_category]")?.caption).toBe("Sub-Category");
  });

  test("makes sales, quantity, discount and profit its measures, and every other column a dimension", () => {
    const columns = children(doc, "column");
    const measures = columns.filter((c) => c.attrs.role === "measure");
    expect(measures.map((c) => [c.attrs.name, c.attrs.type])).toEqual([
      ["[sales]", "quantitative"],
      ["[quantity]", "quantitative"],
      ["[discount]", "quantitative"],
      ["[profit]", "quantitative"],
    ]);
    const others = columns.filter((c) => c.attrs.role !== "measure");
    expect(others.filter((c) => c.attrs.role !== "dimension").map((c) => c.attrs.name)).toEqual([]);
    expect(others.find((c) => c.attrs.name === "[line_id]")?.attrs.role).toBe("dimension");
  });
});

describe("superstore_sales.twb", () => {
  const doc = read(TWB);
  const texts = all(doc, "connection").filter((c) => c.attrs.class === "textscan");

  test("reads the five CSV exports, each from ../../data/exports", () => {
    expect(texts.map((c) => c.attrs.directory)).toEqual(VIEWS.map(() => "../../data/exports"));
    expect(texts.map((c) => c.attrs.filename).sort()).toEqual(VIEWS.map((v) => `${v}.csv`).sort());
    for (const ds of definedSources(doc)) expect(children(ds, "connection")[0]?.attrs.class).toBe("federated");
  });

  test("reads each CSV as UTF-8 with a header row, comma-separated", () => {
    const layouts = all(doc, "relation").flatMap((r) => children(r, "columns")).map(({ attrs }) => ({
      "character-set": attrs["character-set"],
      header: attrs.header,
      separator: attrs.separator,
    }));
    expect(layouts.length).toBeGreaterThanOrEqual(VIEWS.length);
    const csv = { "character-set": "UTF-8", header: "yes", separator: "," };
    expect(new Set(layouts.map((l) => JSON.stringify(l)))).toEqual(new Set([JSON.stringify(csv)]));
  });

  test("has the four worksheets, and the dashboard Superstore sales holds all four", () => {
    expect(children(children(doc, "worksheets")[0]!, "worksheet").map((w) => w.attrs.name)).toEqual(SHEETS);
    const dashboards = all(doc, "dashboard");
    expect(dashboards.map((d) => d.attrs.name)).toEqual(["Superstore sales"]);
    const zones = all(dashboards[0]!, "zone").flatMap((z) => (z.attrs.name === undefined ? [] : [z.attrs.name]));
    expect(zones.sort()).toEqual([...SHEETS].sort());
  });

  test("gives every field of every data source a readable caption", () => {
    const fields = definedSources(doc).flatMap((ds) => children(ds, "column"));
    expect(fields.length).toBeGreaterThan(0);
    for (const { attrs } of fields) {
      const field = attrs.name;
      expect({ field, caption: attrs.caption }).toEqual({ field, caption: expect.stringMatching(READABLE) });
    }
  });

  test("plots monthly sales and profit against the month", () => {
    const sheet = all(doc, "worksheet").find((w) => w.attrs.name === "Sales and profit over time")!;
    const table = children(sheet, "table")[0]!;
    expect(textOf(table, "cols")).toBe("[federated.v_monthly_sales].[tmn:month:qk]");
    expect(textOf(table, "rows")).toBe(
      "([federated.v_monthly_sales].[sum:sales:qk] + [federated.v_monthly_sales].[sum:profit:qk])",
    );
  });

  test("keeps Top products to sales ranks 1 to 10, sorted by sales", () => {
    const sheet = all(doc, "worksheet").find((w) => w.attrs.name === "Top products")!;
    const ds = "[federated.v_product_performance]";
    const filters = all(sheet, "filter").map((f) => ({ column: f.attrs.column, min: textOf(f, "min"), max: textOf(f, "max") }));
    expect(filters).toEqual([{ column: `${ds}.[none:sales_rank:qk]`, min: "1", max: "10" }]);
    const sorts = all(sheet, "shelf-sort-v2").map(({ attrs }) => ({
      sort: attrs["dimension-to-sort"],
      by: attrs["measure-to-sort-by"],
      direction: attrs.direction,
    }));
    expect(sorts).toEqual([{ sort: `${ds}.[none:product_name:nk]`, by: `${ds}.[sum:sales:qk]`, direction: "DESC" }]);
  });
});

describe("the views and columns the Tableau files name", () => {
  let db: TestDatabase;
  /** view -> its columns in order, with PostgreSQL's type */
  const views = new Map<string, { column: string; type: string }[]>();

  beforeAll(async () => {
    db = await createTestDatabase("sales_tableau");
    const rows = await db.sql<{ view: string; column: string; type: string }[]>`
      select table_name as view, column_name as column, data_type as type
      from information_schema.columns
      where table_schema = 'public' and table_name in ${db.sql(VIEWS)}
      order by table_name, ordinal_position
    `;
    for (const r of rows) views.set(r.view, [...(views.get(r.view) ?? []), { column: r.column, type: r.type }]);
  });
  afterAll(async () => {
    await db?.drop();
  });

  const missing = (refs: ColumnRef[]) => refs.filter((r) => !views.get(r.view)?.some((c) => c.column === r.column));

  test("the migrations create all five views", () => {
    expect([...views.keys()].sort()).toEqual([...VIEWS].sort());
  });

  for (const file of [TDS, TWB]) {
    test(`${basename(file)} names only the five views, and only columns they have`, () => {
      const refs = references(read(file));
      expect(refs.views.length).toBeGreaterThan(0);
      expect(refs.views.filter((v) => !VIEWS.includes(v))).toEqual([]);
      expect(refs.columns.length).toBeGreaterThan(0);
      expect(missing(refs.columns)).toEqual([]);
    });
  }

  test("sales.tds describes every column of v_sales, with its type", () => {
    const fields = children(read(TDS), "column").map(({ attrs }) => ({
      column: fieldName(attrs.name ?? ""),
      datatype: attrs.datatype,
    }));
    const want = views.get("v_sales")!.map((c) => ({ column: c.column, datatype: tableauType(c.type) }));
    expect(fields).toEqual(want);
  });

  test("superstore_sales.twb lists each CSV's columns in the order of its header, with their types", () => {
    for (const ds of definedSources(read(TWB))) {
      const [relation] = all(ds, "relation");
      const view = viewOf(relation!.attrs.table!);
      const want = views.get(view)!.map((c) => ({ view, column: c.column, datatype: tableauType(c.type) }));
      const header = all(relation!, "column").map(({ attrs }) => ({ view, column: attrs.name, datatype: attrs.datatype }));
      const fields = children(ds, "column").map(({ attrs }) => ({
        view,
        column: fieldName(attrs.name ?? ""),
        datatype: attrs.datatype,
      }));
      expect(header).toEqual(want);
      expect(fields).toEqual(want);
    }
  });
});
