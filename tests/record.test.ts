// Unit tests for scripts/lib/record.ts: header matching and the cleaning of raw Superstore values.

import { describe, expect, test } from "bun:test";
import {
  cleanRow,
  findRowIdColumn,
  mapHeader,
  normalizeHeader,
  parseDate,
  parseDecimal,
  parseInteger,
  parsePostalCode,
  characterCount,
  compareDecimal,
  headerProblem,
  storable,
} from "../scripts/lib/record.ts";
import { SUPERSTORE_HEADER, superstoreRow } from "./fixtures/superstore.ts";

/** Line 2 of the Kaggle file, moved to Burlington, Vermont: a ZIP code that lost its leading zero (05408). */
function sourceRow(overrides: Record<string, string> = {}): Record<string, string> {
  return superstoreRow({ City: "Burlington", State: "Vermont", "Postal Code": "5408", Region: "East", ...overrides });
}

const CLEAN_VALUES = {
  order_id: "CA-2016-152156",
  order_date: "2016-11-08",
  ship_date: "2016-11-11",
  ship_mode: "Second Class",
  order_priority: null,
  customer_id: "CG-12520",
  customer_name: "Claire Gute",
  segment: "Consumer",
  country: "United States",
  city: "Burlington",
  state: "Vermont",
  postal_code: "05408",
  region: "East",
  market: null,
  product_id: "FUR-BO-10001798",
  category: "Furniture",
  sub_category: "Bookcases",
  product_name: "Bush Somerset Collection Bookcase",
  sales: "261.96",
  quantity: 2,
  discount: "0",
  profit: "41.9136",
  shipping_cost: null,
};

function reasonOf(source: Record<string, string>, columns: readonly string[] = SUPERSTORE_HEADER): string {
  const result = cleanRow(source, mapHeader(columns));
  if (result.ok) throw new Error(`expected a rejection, got ${JSON.stringify(result.row)}`);
  return result.reason;
}

describe("normalizeHeader", () => {
  test("matches spellings of one field to one key", () => {
    expect(["Sub-Category", "sub_category", "SUB CATEGORY", "sub.category", "Sub - Category"].map(normalizeHeader)).toEqual([
      "subcategory",
      "subcategory",
      "subcategory",
      "subcategory",
      "subcategory",
    ]);
  });

  test("turns Row ID and order_date into rowid and orderdate", () => {
    expect(normalizeHeader("Row ID")).toBe("rowid");
    expect(normalizeHeader("order_date")).toBe("orderdate");
  });

  test("drops a UTF-8 byte order mark left on the first header name", () => {
    expect(normalizeHeader("\uFEFFRow ID")).toBe("rowid");
  });

  test("keeps letters and digits it does not know", () => {
    expect(normalizeHeader("Loyalty Tier 2")).toBe("loyaltytier2");
  });
});

describe("mapHeader", () => {
  test("maps every Superstore column, with Row ID apart and no extras", () => {
    const header = mapHeader(SUPERSTORE_HEADER);
    expect(header.rowId).toBe("Row ID");
    expect(header.extra).toEqual([]);
    expect([...header.fields.entries()]).toEqual([
      ["Order ID", "orderid"],
      ["Order Date", "orderdate"],
      ["Ship Date", "shipdate"],
      ["Ship Mode", "shipmode"],
      ["Customer ID", "customerid"],
      ["Customer Name", "customername"],
      ["Segment", "segment"],
      ["Country", "country"],
      ["City", "city"],
      ["State", "state"],
      ["Postal Code", "postalcode"],
      ["Region", "region"],
      ["Product ID", "productid"],
      ["Category", "category"],
      ["Sub-Category", "subcategory"],
      ["Product Name", "productname"],
      ["Sales", "sales"],
      ["Quantity", "quantity"],
      ["Discount", "discount"],
      ["Profit", "profit"],
    ]);
  });

  test("maps the Global Superstore's own columns in its own order", () => {
    const header = mapHeader(["order_id", "Order Priority", "Market", "Shipping Cost", "row_id"]);
    expect([...header.fields.entries()]).toEqual([
      ["order_id", "orderid"],
      ["Order Priority", "orderpriority"],
      ["Market", "market"],
      ["Shipping Cost", "shippingcost"],
    ]);
    expect(header.rowId).toBe("row_id");
  });

  test("has no Row ID column when the file has none", () => {
    expect(mapHeader(["Order ID", "Sales"]).rowId).toBeUndefined();
  });

  test("keeps unknown columns as extras, in file order", () => {
    const header = mapHeader(["Order ID", "Loyalty Tier", "Sales", "Coupon"]);
    expect(header.extra).toEqual(["Loyalty Tier", "Coupon"]);
    expect([...header.fields.keys()]).toEqual(["Order ID", "Sales"]);
  });

  test("keeps a column named Constructor as an extra (an Object.prototype name, not a field)", () => {
    const header = mapHeader(["Order ID", "Constructor"]);
    expect(header.extra).toEqual(["Constructor"]);
    expect([...header.fields.keys()]).toEqual(["Order ID"]);
  });

  test("throws when two columns mean the same field, naming both and the field", () => {
    expect(() => mapHeader(["Order Date", "Sales", "order_date"])).toThrow(
      'columns 1 ("Order Date") and 3 ("order_date") both mean Order Date',
    );
  });

  test("throws when two columns are both the Row ID", () => {
    expect(() => mapHeader(["Row ID", "row_id"])).toThrow('columns 1 ("Row ID") and 2 ("row_id") both mean Row ID');
  });

  test("throws when two extra columns have the same name", () => {
    expect(() => mapHeader(["Coupon", "coupon"])).toThrow('columns 1 ("Coupon") and 2 ("coupon") both mean "coupon"');
  });

  test("accepts several unnamed columns", () => {
    expect(mapHeader(["Order ID", "", ""]).extra).toEqual(["", ""]);
  });
});

describe("parseDate", () => {
  test("keeps an ISO date", () => {
    expect(parseDate("2016-11-08")).toBe("2016-11-08");
  });

  test("pads a one-digit ISO month and day", () => {
    expect(parseDate("2016-1-5")).toBe("2016-01-05");
  });

  test("reads slashes as month/day/year", () => {
    expect(parseDate("11/8/2016")).toBe("2016-11-08");
    expect(parseDate("1/12/2017")).toBe("2017-01-12");
  });

  test("reads dashes with the year last as day-month-year", () => {
    expect(parseDate("8-11-2016")).toBe("2016-11-08");
    expect(parseDate("31-12-2014")).toBe("2014-12-31");
  });

  test("rejects days a month does not have", () => {
    expect(parseDate("2/30/2016")).toBeUndefined();
    expect(parseDate("31-04-2016")).toBeUndefined();
    expect(parseDate("2016-06-31")).toBeUndefined();
    expect(parseDate("1/32/2016")).toBeUndefined();
    expect(parseDate("0/10/2016")).toBeUndefined();
    expect(parseDate("13/1/2016")).toBeUndefined();
    expect(parseDate("2016-01-00")).toBeUndefined();
  });

  test("accepts February 29 in leap years only", () => {
    expect(parseDate("2/29/2016")).toBe("2016-02-29");
    expect(parseDate("29-02-2000")).toBe("2000-02-29");
    expect(parseDate("2/29/2015")).toBeUndefined();
    expect(parseDate("1900-02-29")).toBeUndefined();
  });

  test("rejects year zero", () => {
    expect(parseDate("0000-01-01")).toBeUndefined();
  });

  test("rejects garbage, two-digit years, times and surrounding spaces", () => {
    for (const value of ["", "garbage", "11/8/16", "2016/11/08", "2016-11-08T00:00:00", " 11/8/2016", "11-8-16", "Nov 8 2016"]) {
      expect(parseDate(value)).toBeUndefined();
    }
  });
});

describe("parseDecimal", () => {
  test("keeps the exact string of a decimal", () => {
    for (const value of ["261.96", "41.9136", "-383.031", "0", "0.10", "+3", ".5", "5.", "2297200.8603"]) {
      expect(parseDecimal(value)).toBe(value);
    }
  });

  test("rejects grouping, exponents, currency signs and empty text", () => {
    for (const value of ["1,234.5", "1e5", "$5", "", "-", ".", "1.2.3", " 5", "5 ", "NaN", "Infinity", "0x10"]) {
      expect(parseDecimal(value)).toBeUndefined();
    }
  });
});

describe("parseInteger", () => {
  test("reads whole numbers with an optional sign", () => {
    expect(parseInteger("2")).toBe(2);
    expect(parseInteger("-3")).toBe(-3);
    expect(parseInteger("+4")).toBe(4);
    expect(parseInteger("007")).toBe(7);
  });

  test("accepts the largest PostgreSQL integer and rejects the next one", () => {
    expect(parseInteger("2147483647")).toBe(2_147_483_647);
    expect(parseInteger("-2147483647")).toBe(-2_147_483_647);
    expect(parseInteger("2147483648")).toBeUndefined();
    expect(parseInteger("99999999999999999999")).toBeUndefined();
  });

  test("rejects decimals, exponents and empty text", () => {
    for (const value of ["1.0", "1e3", "", "-", "two", " 2", "1,000"]) {
      expect(parseInteger(value)).toBeUndefined();
    }
  });
});

describe("parsePostalCode", () => {
  test("keeps the leading zero of 05408", () => {
    expect(parsePostalCode("5408", "United States")).toBe("05408");
  });

  test("gives 501 back both its leading zeros", () => {
    expect(parsePostalCode("501", "United States")).toBe("00501");
  });

  test("keeps a five-digit ZIP and a ZIP+4 as written", () => {
    expect(parsePostalCode("42420", "United States")).toBe("42420");
    expect(parsePostalCode("42420-1234", "United States")).toBe("42420-1234");
  });

  test("recognizes the US by any of its usual names, in any case", () => {
    for (const country of ["USA", "us", "United States of America", "UNITED STATES"]) {
      expect(parsePostalCode("5408", country)).toBe("05408");
    }
  });

  test("keeps other countries' codes as written", () => {
    expect(parsePostalCode("SW1A 1AA", "United Kingdom")).toBe("SW1A 1AA");
    expect(parsePostalCode("5408", "Germany")).toBe("5408");
    expect(parsePostalCode("0800", "Australia")).toBe("0800");
  });

  test("keeps a code as written when the country is unknown", () => {
    expect(parsePostalCode("5408", null)).toBe("5408");
  });

  test("rejects what cannot be a US ZIP code", () => {
    for (const value of ["ABCDE", "12", "123456", "1234-5678", "42420-12", "4242O", "42420 1234"]) {
      expect(parsePostalCode(value, "United States")).toBeUndefined();
    }
  });
});

describe("cleanRow", () => {
  test("cleans a Kaggle row into orders columns", () => {
    expect(cleanRow(sourceRow(), mapHeader(SUPERSTORE_HEADER))).toEqual({
      ok: true,
      row: { values: CLEAN_VALUES, rowId: 1, extra: null, warnings: null },
    });
  });

  test("trims every value before reading it", () => {
    const result = cleanRow(
      sourceRow({ "Order ID": "  CA-2016-152156 ", "Order Date": " 11/8/2016\t", Quantity: " 2 ", Country: " United States " }),
      mapHeader(SUPERSTORE_HEADER),
    );
    expect(result).toEqual({ ok: true, row: { values: CLEAN_VALUES, rowId: 1, extra: null, warnings: null } });
  });

  test("turns an empty optional field into null", () => {
    const result = cleanRow(sourceRow({ "Ship Date": "", Discount: "   ", "Postal Code": "" }), mapHeader(SUPERSTORE_HEADER));
    expect(result).toEqual({
      ok: true,
      row: { values: { ...CLEAN_VALUES, ship_date: null, discount: null, postal_code: null }, rowId: 1, extra: null, warnings: null },
    });
  });

  test("rejects an empty required field, naming it", () => {
    expect(reasonOf(sourceRow({ "Customer ID": " " }))).toBe("Customer ID: empty");
  });

  test("rejects a missing required column, naming the field", () => {
    const columns = SUPERSTORE_HEADER.filter((c) => c !== "Product ID");
    const source = sourceRow();
    delete source["Product ID"];
    expect(reasonOf(source, columns)).toBe("Product ID: no such column");
  });

  test("names the field as the file spells it", () => {
    const columns = ["order_id", "ORDER DATE", "customer-id", "product_id", "SALES", "quantity"];
    const source = {
      order_id: "",
      "ORDER DATE": "2/30/2016",
      "customer-id": "C1",
      product_id: "P1",
      SALES: "$5",
      quantity: "1",
    };
    expect(reasonOf(source, columns)).toBe(
      'order_id: empty; ORDER DATE: "2/30/2016" is not a date (YYYY-MM-DD, M/D/YYYY or D-M-YYYY); ' +
        'SALES: "$5" is not a decimal number such as 261.96 or -0.5',
    );
  });

  test("lists every problem of a row in one reason", () => {
    const source = sourceRow({ "Order Date": "31-04-2016", "Postal Code": "ABCDE", Sales: "1,234.5", Quantity: "2.5" });
    expect(reasonOf(source)).toBe(
      [
        'Order Date: "31-04-2016" is not a date (YYYY-MM-DD, M/D/YYYY or D-M-YYYY)',
        'Postal Code: "ABCDE" is not a US ZIP code (5 digits, or 3-4 digits that lost leading zeros)',
        'Sales: "1,234.5" is not a decimal number such as 261.96 or -0.5',
        'Quantity: "2.5" is not a whole number',
      ].join("; "),
    );
  });

  test("shortens a long bad value in the reason", () => {
    const reason = reasonOf(sourceRow({ Sales: "x".repeat(100) }));
    expect(reason).toBe(`Sales: "${"x".repeat(57)}..." is not a decimal number such as 261.96 or -0.5`);
  });

  test("rejects text longer than its column allows, and accepts it at the limit", () => {
    expect(reasonOf(sourceRow({ "Order ID": "O".repeat(31) }))).toBe("Order ID: 31 characters, more than the 30 allowed");
    expect(reasonOf(sourceRow({ "Customer ID": "C".repeat(21) }))).toBe(
      "Customer ID: 21 characters, more than the 20 allowed",
    );
    const atLimit = cleanRow(sourceRow({ "Order ID": "O".repeat(30) }), mapHeader(SUPERSTORE_HEADER));
    expect(atLimit.ok).toBe(true);
  });

  test("applies the postal code limit to codes from other countries", () => {
    const source = sourceRow({ Country: "France", "Postal Code": "7".repeat(21) });
    expect(reasonOf(source)).toBe("Postal Code: 21 characters, more than the 20 allowed");
  });

  test("does not limit free-text columns", () => {
    const name = "N".repeat(500);
    const result = cleanRow(sourceRow({ "Product Name": name }), mapHeader(SUPERSTORE_HEADER));
    expect(result).toEqual({
      ok: true,
      row: { values: { ...CLEAN_VALUES, product_name: name }, rowId: 1, extra: null, warnings: null },
    });
  });

  test("reads the postal code according to the trimmed country", () => {
    const result = cleanRow(sourceRow({ Country: "Canada", "Postal Code": "K1A 0B1" }), mapHeader(SUPERSTORE_HEADER));
    expect(result).toEqual({
      ok: true,
      row: { values: { ...CLEAN_VALUES, country: "Canada", postal_code: "K1A 0B1" }, rowId: 1, extra: null, warnings: null },
    });
  });

  test("keeps extra columns, trimmed, and leaves out empty ones", () => {
    const columns = [...SUPERSTORE_HEADER, "Loyalty Tier", "Coupon"];
    const result = cleanRow({ ...sourceRow(), "Loyalty Tier": " Gold ", Coupon: "  " }, mapHeader(columns));
    expect(result).toEqual({ ok: true, row: { values: CLEAN_VALUES, rowId: 1, extra: { "Loyalty Tier": "Gold" }, warnings: null } });
  });

  test("keeps the value of an extra column named Constructor", () => {
    const result = cleanRow({ ...sourceRow(), Constructor: "Acme" }, mapHeader([...SUPERSTORE_HEADER, "Constructor"]));
    expect(result).toEqual({ ok: true, row: { values: CLEAN_VALUES, rowId: 1, extra: { Constructor: "Acme" }, warnings: null } });
  });

  test("reads the Row ID as a whole number", () => {
    const result = cleanRow(sourceRow({ "Row ID": " 9994 " }), mapHeader(SUPERSTORE_HEADER));
    expect(result).toEqual({ ok: true, row: { values: CLEAN_VALUES, rowId: 9994, extra: null, warnings: null } });
  });

  test("rejects a Row ID that is empty, zero, negative or not a number", () => {
    expect(reasonOf(sourceRow({ "Row ID": "" }))).toBe("Row ID: empty");
    expect(reasonOf(sourceRow({ "Row ID": "0" }))).toBe('Row ID: "0" is not a positive whole number');
    expect(reasonOf(sourceRow({ "Row ID": "-4" }))).toBe('Row ID: "-4" is not a positive whole number');
    expect(reasonOf(sourceRow({ "Row ID": "1a" }))).toBe('Row ID: "1a" is not a positive whole number');
  });

  test("has no Row ID when the file has no such column", () => {
    const columns = SUPERSTORE_HEADER.filter((c) => c !== "Row ID");
    const result = cleanRow(sourceRow(), mapHeader(columns));
    expect(result).toEqual({ ok: true, row: { values: CLEAN_VALUES, rowId: undefined, extra: null, warnings: null } });
  });

  test("reads a Global Superstore row with its extra fields", () => {
    const columns = [
      "Order ID",
      "Order Date",
      "Order Priority",
      "Customer ID",
      "Market",
      "Country",
      "Postal Code",
      "Product ID",
      "Sales",
      "Quantity",
      "Shipping Cost",
    ];
    const source = {
      "Order ID": "IN-2014-1",
      "Order Date": "31-07-2014",
      "Order Priority": "Critical",
      "Customer ID": "JR-16210",
      Market: "APAC",
      Country: "Australia",
      "Postal Code": "",
      "Product ID": "TEC-PH-1",
      Sales: "2309.65",
      Quantity: "7",
      "Shipping Cost": "933.57",
    };
    const result = cleanRow(source, mapHeader(columns));
    expect(result.ok && result.row.values).toEqual({
      order_id: "IN-2014-1",
      order_date: "2014-07-31",
      ship_date: null,
      ship_mode: null,
      order_priority: "Critical",
      customer_id: "JR-16210",
      customer_name: null,
      segment: null,
      country: "Australia",
      city: null,
      state: null,
      postal_code: null,
      region: null,
      market: "APAC",
      product_id: "TEC-PH-1",
      category: null,
      sub_category: null,
      product_name: null,
      sales: "2309.65",
      quantity: 7,
      discount: null,
      profit: null,
      shipping_cost: "933.57",
    });
  });
});

describe("findRowIdColumn", () => {
  test("finds the Row ID column however it is spelled", () => {
    expect(findRowIdColumn(SUPERSTORE_HEADER)).toBe(0);
    expect(findRowIdColumn(["Order ID", "row_id"])).toBe(1);
  });

  test("returns -1 when there is none", () => {
    expect(findRowIdColumn(["Order ID", "Sales"])).toBe(-1);
  });
});

describe("what PostgreSQL would refuse, checked before COPY", () => {
  test("counts length in characters as PostgreSQL does: an emoji is one, not two UTF-16 units", () => {
    expect(characterCount("😀".repeat(20))).toBe(20);
    const fits = cleanRow(sourceRow({ "Customer ID": "😀".repeat(20) }), mapHeader(SUPERSTORE_HEADER));
    expect(fits.ok).toBe(true);
    expect(reasonOf(sourceRow({ "Customer ID": "😀".repeat(21) }))).toBe("Customer ID: 21 characters, more than the 20 allowed");
  });

  test("rejects numbers with more digits than numeric holds, after or before the point", () => {
    expect(reasonOf(sourceRow({ Profit: `1.${"1".repeat(16_384)}` }))).toBe(
      "Profit: 16384 digits after the point, more than the 16383 PostgreSQL takes",
    );
    expect(reasonOf(sourceRow({ Sales: "9".repeat(131_073) }))).toBe(
      "Sales: 131073 digits before the point, more than the 131072 PostgreSQL takes",
    );
    expect(cleanRow(sourceRow({ Profit: `1.${"1".repeat(16_383)}` }), mapHeader(SUPERSTORE_HEADER)).ok).toBe(true);
  });

  test("rejects a whole number outside PostgreSQL's integer range", () => {
    expect(reasonOf(sourceRow({ Quantity: "2147483648" }))).toBe('Quantity: "2147483648" is not a whole number');
  });

  test("rejects text with a lone UTF-16 surrogate, which has no UTF-8 form, and stores it escaped", () => {
    expect(reasonOf(sourceRow({ "Customer Name": "bad \uD800 name" }))).toBe(
      "Customer Name: contains a broken character (a lone UTF-16 surrogate), which has no UTF-8 form",
    );
    expect(storable("bad \uD800 name \u0000")).toBe("bad \\ud800 name \\u0000");
    expect(storable("fine 😀")).toBe("fine 😀");
  });

  test("rejects an extra column whose name or value cannot be stored", () => {
    const header = mapHeader([...SUPERSTORE_HEADER, "Note"]);
    expect(cleanRow({ ...sourceRow(), Note: "x\u0000" }, header)).toEqual({
      ok: false,
      reason: '"Note": contains a NUL character (byte 0), which PostgreSQL cannot store',
    });
  });
});

describe("plausibility", () => {
  test("rejects a quantity of zero or less", () => {
    expect(reasonOf(sourceRow({ Quantity: "0" }))).toBe("Quantity: 0 is not a positive count of items");
    expect(reasonOf(sourceRow({ Quantity: "-2" }))).toBe("Quantity: -2 is not a positive count of items");
  });

  test("rejects a discount outside 0..1, exactly (no floating point)", () => {
    expect(reasonOf(sourceRow({ Discount: "20" }))).toBe("Discount: 20 is outside 0..1 (a fraction of the price: 0.2 for 20%)");
    expect(reasonOf(sourceRow({ Discount: "1.0000000000000000001" }))).toContain("is outside 0..1");
    expect(reasonOf(sourceRow({ Discount: "-0.1" }))).toContain("is outside 0..1");
    expect(cleanRow(sourceRow({ Discount: "1.000" }), mapHeader(SUPERSTORE_HEADER)).ok).toBe(true);
  });

  test("loads a ship date before the order date, non-positive sales and profit above sales, with warnings", () => {
    const result = cleanRow(sourceRow({ "Ship Date": "11/1/2016", Sales: "-5", Profit: "3" }), mapHeader(SUPERSTORE_HEADER));
    expect(result.ok && result.row.warnings).toEqual([
      "Ship Date: 2016-11-01 is before the order date 2016-11-08",
      "Sales: -5 is not a positive amount",
      "Profit: 3 is more than the sales of -5",
    ]);
  });

  test("does not judge plausibility of a row that is rejected anyway", () => {
    expect(reasonOf(sourceRow({ Sales: "x", Quantity: "0" }))).toBe('Sales: "x" is not a decimal number such as 261.96 or -0.5');
  });
});

describe("compareDecimal", () => {
  test("compares exact decimals of any length and sign", () => {
    const cases: [string, string, number][] = [
      ["1", "1.000", 0],
      ["0.1", "0.10000000000000000001", -1],
      ["-2", "1", -1],
      ["-0", "0", 0],
      ["10", "9.999", 1],
      ["-10", "-9.5", -1],
      [".5", "0.5", 0],
      ["+3", "3", 0],
    ];
    for (const [a, b, expected] of cases) expect([a, b, compareDecimal(a, b)]).toEqual([a, b, expected]);
  });
  test("agrees with exact integer arithmetic on random decimals, short ones (compared as doubles) and long ones", () => {
    const exact = (a: string, b: string) => {
      const parts = (v: string) => {
        const negative = v.startsWith("-");
        const [whole = "", fraction = ""] = v.replace(/^[+-]/, "").split(".");
        return { negative, whole, fraction };
      };
      const x = parts(a);
      const y = parts(b);
      const scale = Math.max(x.fraction.length, y.fraction.length);
      const big = (p: ReturnType<typeof parts>) => BigInt(`${p.negative ? "-" : ""}${p.whole || "0"}${p.fraction.padEnd(scale, "0")}`);
      const d = big(x) - big(y);
      return d < 0n ? -1 : d > 0n ? 1 : 0;
    };
    const digits = (n: number) => Array.from({ length: n }, () => "0123456789"[Math.floor(Math.random() * 10)]).join("");
    const decimal = () => {
      const sign = ["", "-", "+"][Math.floor(Math.random() * 3)]!;
      const whole = digits(Math.floor(Math.random() * 10));
      const fraction = Math.random() < 0.7 ? `.${digits(Math.floor(Math.random() * 10))}` : "";
      return `${sign}${whole || (fraction.length > 1 ? "" : "0")}${fraction}`;
    };
    for (let i = 0; i < 20_000; i++) {
      const a = decimal();
      // Near neighbours too: the same digits with one changed in the last place.
      const b = Math.random() < 0.5 ? decimal() : `${a.slice(0, -1)}${digits(1)}`;
      if (!/\d/.test(b)) continue;
      expect([a, b, compareDecimal(a, b)]).toEqual([a, b, exact(a, b)]);
    }
  });
});

describe("headerProblem", () => {
  test("accepts the Kaggle header and loose spellings of it", () => {
    expect(headerProblem(SUPERSTORE_HEADER)).toBeUndefined();
    expect(headerProblem(SUPERSTORE_HEADER.map((c) => c.toLowerCase().replace(/ /g, "_")))).toBeUndefined();
  });

  test("names two columns that spell one field two ways", () => {
    expect(headerProblem([...SUPERSTORE_HEADER, "Sub Category"])).toBe('columns 16 ("Sub-Category") and 22 ("Sub Category") both mean Sub-Category');
  });

  test("says a file without the required columns is not a Superstore export", () => {
    expect(headerProblem(["id", "name", "price"])).toBe(
      'not a Superstore export: no column for Order ID, Order Date, Customer ID, Product ID, Sales, Quantity (the header has "id", "name", "price")',
    );
  });
});
