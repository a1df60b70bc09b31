-- Facts about this installation that must never silently change, such as
-- the server name every stored ID is built from.
CREATE TABLE weft_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
