-- The schema of the original project, as it was: one row per customer, one per product, one per order line.
-- Later migrations extend it where the data demands; they never edit this file.

create table users (
  customer_id varchar(20) primary key,
  segment varchar(50),
  region varchar(50),
  state varchar(50),
  city varchar(50)
);

create table products (
  product_id varchar(30) primary key,
  category varchar(50),
  sub_category varchar(50)
);

create table orders (
  row_id serial primary key,
  order_id varchar(30) not null,
  order_date date not null,
  ship_date date,
  ship_mode varchar(50),
  order_priority varchar(30),
  customer_id varchar(20) references users (customer_id),
  product_id varchar(30) references products (product_id),
  sales numeric(10, 2),
  quantity integer,
  discount numeric(5, 2),
  profit numeric(10, 4)
);
